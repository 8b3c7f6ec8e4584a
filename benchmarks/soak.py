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


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(model: sinkstream.Model, n_tokens: int, every: int, chunk: int, decode_per_stretch: int,
         seed: int = 0, window: int = 1020, n_sink: int = 4, out=None) -> list[dict]:
    rng = np.random.default_rng(seed)
    session = model.session(mode="streaming", n_sink=n_sink, window=window)
    rows = []
    fed = 0
    while fed < n_tokens:
        target = min(n_tokens, fed + every)
        decode_times, prefill_time, prefill_tokens, finite = [], 0.0, 0, True
        while fed < target:
            if target - fed > decode_per_stretch:
                n = min(chunk, target - fed - decode_per_stretch)
                tokens = rng.integers(0, model.n_vocab, size=n).astype(np.int32)
                t0 = time.perf_counter()
                logits = session.eval(tokens, logits="last")
                prefill_time += time.perf_counter() - t0
                prefill_tokens += n
            else:
                token = int(rng.integers(0, model.n_vocab))
                t0 = time.perf_counter()
                logits = session.eval([token], logits="last")
                decode_times.append(time.perf_counter() - t0)
                n = 1
            finite = finite and bool(np.isfinite(logits).all())
            fed += n
        row = {
            "tokens": session.n_past,
            "rss_mib": round(rss_mib(), 1),
            "decode_ms_per_token": round(1000 * float(np.median(decode_times)), 3) if decode_times else float("nan"),
            "prefill_ms_per_token": round(1000 * prefill_time / prefill_tokens, 3) if prefill_tokens else float("nan"),
            "n_cached": session.n_cached,
            "kv_mib": round(session.kv_bytes / 2**20, 2),
            "finite": finite,
        }
        rows.append(row)
        if out is not None:
            print("  ".join(f"{k}={v}" for k, v in row.items()), file=out, flush=True)
    return rows


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
