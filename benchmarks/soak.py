"""Soak: stream a million tokens through one streaming session and watch memory and speed.

Alternates prefill chunks and decode steps (the way a long-lived edge service feeds a stream),
recording every --every tokens: resident memory (VmRSS), ms/token of the decode steps in that
stretch, ms/token of prefill, and whether any logits were NaN/inf. Both columns must stay flat.

    python benchmarks/soak.py --tokens 1000000 --every 10000 [--model PATH] [--csv soak.csv]
"""
from __future__ import annotations

import argparse
import csv
import sys
import time

import numpy as np

import sinkstream
from sinkstream.bench import soak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=512, help="prefill chunk size")
    ap.add_argument("--decode", type=int, default=32, help="decode steps timed per stretch")
    ap.add_argument("--window", type=int, default=1020)
    ap.add_argument("--n-sink", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--csv", default=None, help="write the table here")
    args = ap.parse_args()
    model = sinkstream.Model(args.model, n_threads=args.threads)
    start = time.perf_counter()
    rows = soak(model, args.tokens, args.every, args.chunk, args.decode, window=args.window, n_sink=args.n_sink,
                out=sys.stdout)
    elapsed = time.perf_counter() - start
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    warm = rows[len(rows) // 10:] or rows
    rss = [r["rss_mib"] for r in warm]
    dec = [r["decode_ms_per_token"] for r in warm]
    print(f"\n{rows[-1]['tokens']} tokens in {elapsed:.0f} s; after warm-up: RSS {min(rss):.1f}..{max(rss):.1f} MiB, "
          f"decode ms/token median {np.median(dec):.2f} (min {min(dec):.2f}, max {max(dec):.2f}); "
          f"all logits finite: {all(r['finite'] for r in rows)}")
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
