"""Benchmark: aggregate decode throughput of N concurrent streams through a BatchScheduler, against
one stream alone, on the default model (or MODEL).

    python benchmarks/bench_batching.py [--streams 1,8] [--threads 2] [--tokens 128] [--repeats 3] [MODEL]

Each stream is a session in its own thread that reads a short chat prompt and then generates
--tokens tokens (greedy, no early stop): the figure is all streams' generated tokens divided by
the wall time from the first prompt to the last token, the median of --repeats runs (the machine
is noisy). Also printed: the scheduler's mean sessions per step and the time inside passes.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import sinkstream


def run_streams(model: sinkstream.Model, n_streams: int, n_threads: int, n_tokens: int) -> tuple[float, float]:
    """(aggregate generated tok/s, mean sessions per step) of one run."""
    with sinkstream.BatchScheduler(model, n_threads) as scheduler:
        sessions = [scheduler.session(window=1020) for _ in range(n_streams)]
        ban_end = {model.eos_id: float("-inf")} if model.eos_id >= 0 else None
        start = threading.Barrier(n_streams + 1)
        counts = [0] * n_streams

        def stream(i: int) -> None:
            start.wait()
            for _ in sessions[i].stream(f"Tell me story number {i} about a lighthouse.", max_tokens=n_tokens,
                                        temperature=0, logit_bias=ban_end):
                pass
            counts[i] = sessions[i].last_stats.generated_tokens

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(n_streams)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        return sum(counts) / seconds, scheduler.stats.mean_sessions_per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--streams", default="1,8", help="comma-separated stream counts (default 1,8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per stream")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = sinkstream.Model(args.model, n_threads=args.threads)
    counts = [int(n) for n in args.streams.split(",")]
    run_streams(model, 1, args.threads, 8)  # warm-up: page in the weights
    figures = {}
    print(f"{'streams':>7} {'aggregate tok/s':>16} {'per stream':>11} {'sessions/step':>14}")
    for n in counts:
        runs = [run_streams(model, n, args.threads, args.tokens) for _ in range(args.repeats)]
        tok_s = statistics.median(r[0] for r in runs)
        figures[n] = tok_s
        print(f"{n:>7} {tok_s:>16.1f} {tok_s / n:>11.1f} {statistics.median(r[1] for r in runs):>14.2f}")
    if 1 in figures:
        for n in counts:
            if n != 1:
                print(f"{n} streams / 1 stream: {figures[n] / figures[1]:.2f}x aggregate decode throughput")


if __name__ == "__main__":
    main()
