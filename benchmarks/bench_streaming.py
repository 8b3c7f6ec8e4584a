#!/usr/bin/env python3
"""Constant time and memory per token, measured (streaming.md invariants 2 and 3).

For each stream position P (default ~2K, ~20K, ~200K) the session is prefilled up to P (large
chunks, no logits), then `--steps` single-token decode steps (logits="last") are timed, `--repeats`
times; the table shows the median ms/token and the process RSS (VmRSS) at each position. A
streaming session should be flat in both, within noise, however far the stream has gone.

--compare-recompute measures, at one position past the cache, streaming decode against the paper's
"sliding window with re-computation" baseline with the same cache size (recompute re-encodes the
last C tokens per token). The paper reports 22.2x for Llama-2-13B with a 4096 cache.

Token ids are drawn at random: the cost of a step does not depend on which tokens they are.

  python benchmarks/bench_streaming.py                         # default model, 2K/20K/200K
  python benchmarks/bench_streaming.py --positions 2000,20000 --steps 32 --repeats 3
  python benchmarks/bench_streaming.py --compare-recompute --recompute-position 2000
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import sinkstream
from sinkstream.bench import process_memory_mib

PREFILL_CHUNK = 1024   # tokens per eval() call while prefilling (the session chunks by batch_size)


def prefill_to(session: sinkstream.Session, position: int, rng: np.random.Generator, n_vocab: int,
               report: bool = True) -> float:
    """Feeds random tokens without logits until session.n_past == position; returns the seconds taken."""
    started = time.perf_counter()
    last_report, start_past = started, session.n_past
    while session.n_past < position:
        n = min(PREFILL_CHUNK, position - session.n_past)
        session.eval(rng.integers(0, n_vocab, size=n), logits=None)
        now = time.perf_counter()
        if report and now - last_report > 5:
            rate = (session.n_past - start_past) / max(now - started, 1e-9)
            print(f"  prefill {session.n_past}/{position} tokens ({rate:.0f} tok/s)", file=sys.stderr, flush=True)
            last_report = now
    return time.perf_counter() - started


def time_decode(session: sinkstream.Session, steps: int, repeats: int, rng: np.random.Generator,
                n_vocab: int) -> list[float]:
    """ms/token of single-token decode steps with logits, once per repeat."""
    per_repeat = []
    for _ in range(repeats):
        ids = rng.integers(0, n_vocab, size=steps)
        started = time.perf_counter()
        for token in ids:
            session.eval([int(token)], logits="last")
        per_repeat.append(1000 * (time.perf_counter() - started) / steps)
    return per_repeat


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def positions_bench(model: sinkstream.Model, args: argparse.Namespace) -> bool:
    """ms/token and RSS at each position; returns True if flat within --tolerance."""
    rng = np.random.default_rng(args.seed)
    session = model.session(args.mode, n_sink=args.n_sink if args.mode == "streaming" else None,
                            window=args.window, batch_size=args.batch_size)
    print(f"{args.mode}: n_sink {session.n_sink}, window {session.window}, capacity {session.capacity}, "
          f"batch {args.batch_size}, {model.n_threads} threads; {args.steps} steps x {args.repeats} repeats",
          flush=True)
    if args.positions[0] < session.capacity:
        print(f"note: positions below the capacity {session.capacity} are still filling the cache: "
              "their cost grows with the cache, flatness starts past it", flush=True)
    rows, medians, rss = [], [], []
    for position in args.positions:
        if position < session.n_past:
            raise ValueError(f"--positions must increase: {position} comes after {session.n_past} tokens were fed")
        seconds = prefill_to(session, position, rng, model.n_vocab)
        cached = session.n_cached
        times = time_decode(session, args.steps, args.repeats, rng, model.n_vocab)
        medians.append(statistics.median(times))
        rss.append(int(process_memory_mib("VmRSS") * 2**20))
        rows.append((f"{position}", f"{medians[-1]:.3f}", f"{min(times):.3f}", f"{max(times):.3f}",
                     f"{rss[-1] / 2**20:.1f}", f"{session.kv_bytes / 2**20:.2f}", f"{cached}",
                     f"{seconds:.1f}"))
    print_table(("position", "ms/token", "min", "max", "RSS MiB", "KV MiB", "cached", "prefill s"), rows)
    time_ratio = max(medians) / min(medians)
    rss_growth = (rss[-1] - rss[0]) / 2**20
    print(f"ms/token max/min across positions: {time_ratio:.3f}; RSS change {args.positions[0]} -> "
          f"{args.positions[-1]}: {rss_growth:+.1f} MiB")
    flat = time_ratio <= 1 + args.tolerance and abs(rss_growth) <= args.rss_tolerance_mib
    print(f"flat within tolerance ({args.tolerance:.0%} time, {args.rss_tolerance_mib} MiB RSS): "
          f"{'yes' if flat else 'NO'}")
    return flat


def recompute_bench(model: sinkstream.Model, args: argparse.Namespace) -> None:
    """Streaming vs recompute decode at one position past the cache, same cache size C."""
    capacity = args.n_sink + args.window
    position = args.recompute_position
    if position <= capacity:
        raise ValueError(f"--recompute-position must be past the cache (> n_sink + window = {capacity}), got {position}")
    rows, medians = [], {}
    for mode, geometry in (("streaming", dict(n_sink=args.n_sink, window=args.window)),
                           ("recompute", dict(window=capacity))):
        rng = np.random.default_rng(args.seed)
        session = model.session(mode, **geometry, batch_size=args.batch_size)
        # A recompute session encodes its first C tokens once; later tokens fed without logits are
        # only remembered (nothing to re-encode until logits are asked for), so reaching P is cheap.
        prefill_to(session, position, rng, model.n_vocab)
        steps = args.recompute_steps if mode == "recompute" else args.steps
        times = time_decode(session, steps, args.repeats, rng, model.n_vocab)
        medians[mode] = statistics.median(times)
        rows.append((mode, str(capacity), str(position), str(steps), f"{medians[mode]:.3f}",
                     f"{min(times):.3f}", f"{max(times):.3f}"))
    print_table(("mode", "cache", "position", "steps", "ms/token", "min", "max"), rows)
    print(f"streaming is {medians['recompute'] / medians['streaming']:.1f}x faster per token than recompute "
          f"(cache {capacity}; paper: 22.2x for Llama-2-13B with cache 4096)")


def parse_positions(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got {text!r}") from None
    if not values or min(values) < 1 or values != sorted(values):
        raise argparse.ArgumentTypeError(f"positions must be increasing positive token counts, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="GGUF file (default: the default model)")
    p.add_argument("--positions", type=parse_positions, default=parse_positions("2000,20000,200000"),
                   help="stream positions to measure at, increasing (default 2000,20000,200000)")
    p.add_argument("--steps", type=int, default=64, help="decode steps timed per repeat (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="repeats per position; the median is reported (default 5)")
    p.add_argument("--mode", choices=("streaming", "window"), default="streaming")
    p.add_argument("--n-sink", type=int, default=4)
    p.add_argument("--window", type=int, default=1020)
    p.add_argument("--batch-size", type=int, default=256, help="prefill chunk of the session (default 256)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.15, help="allowed max/min - 1 of ms/token (default 0.15)")
    p.add_argument("--rss-tolerance-mib", type=float, default=8.0, help="allowed RSS change in MiB (default 8)")
    p.add_argument("--check", action="store_true", help="exit with status 1 when not flat within tolerance")
    p.add_argument("--compare-recompute", action="store_true",
                   help="also compare streaming and recompute ms/token at --recompute-position")
    p.add_argument("--recompute-only", action="store_true", help="only the streaming vs recompute comparison")
    p.add_argument("--recompute-position", type=int, default=2000)
    p.add_argument("--recompute-steps", type=int, default=4, help="recompute decode steps per repeat (default 4)")
    args = p.parse_args(argv)
    for name in ("steps", "repeats", "window", "batch_size", "recompute_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.n_sink < 0:
        p.error("--n-sink must be >= 0")

    model = sinkstream.Model(args.model, n_threads=args.threads)
    print(f"model: {model.path}", flush=True)
    flat = True
    if not args.recompute_only:
        flat = positions_bench(model, args)
    if args.compare_recompute or args.recompute_only:
        recompute_bench(model, args)
    return 1 if args.check and not flat else 0


if __name__ == "__main__":
    sys.exit(main())
