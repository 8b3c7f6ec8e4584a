"""Benchmark: aggregate decode throughput of N concurrent streams through a BatchScheduler, against
one stream alone, on the default model (or MODEL).

    python benchmarks/bench_batching.py [--streams 1,8] [--threads 2] [--tokens 128] [--repeats 3] [MODEL]

Each stream is a session in its own thread that reads a short prompt and then generates --tokens
tokens (greedy, no early stop). Two figures, each the median of --repeats runs (the machine is
noisy):
- decode tok/s: the steady state with all N streams decoding, from the moment the last stream has
  its first token to the moment the first stream has its last one: the tokens all streams generated
  in between, divided by its length (prompts are not in it);
- end to end tok/s: all generated tokens divided by the wall time from the first prompt to the last
  token (the N prompts' prefill included).
Also printed: the scheduler's mean sessions per step.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import NamedTuple

import sinkstream


class RunFigures(NamedTuple):
    decode_tok_s: float      # all streams decoding (see the module docstring)
    end_to_end_tok_s: float  # prompts included
    sessions_per_step: float


def run_streams(model: sinkstream.Model, n_streams: int, n_threads: int, n_tokens: int) -> RunFigures:
    with sinkstream.BatchScheduler(model, n_threads) as scheduler:
        sessions = [scheduler.session(window=1020) for _ in range(n_streams)]
        ban_end = {model.eos_id: float("-inf")} if model.eos_id >= 0 else None
        start = threading.Barrier(n_streams + 1)
        # Per stream: (time, tokens generated so far) at each text piece it yields.
        marks: list[list[tuple[float, int]]] = [[] for _ in range(n_streams)]

        def stream(i: int) -> None:
            start.wait()
            for _ in sessions[i].stream(f"Tell me story number {i} about a lighthouse.", max_tokens=n_tokens,
                                        temperature=0, logit_bias=ban_end):
                marks[i].append((time.perf_counter(), sessions[i].last_stats.generated_tokens))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(n_streams)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        generated = sum(s.last_stats.generated_tokens for s in sessions)
        return RunFigures(steady_decode_tok_s(marks), generated / seconds, scheduler.stats.mean_sessions_per_step)


def steady_decode_tok_s(marks: list[list[tuple[float, int]]]) -> float:
    """Tokens per second over the span where every stream was decoding (see the module docstring)."""
    begin = max(m[0][0] for m in marks)
    end = min(m[-1][0] for m in marks)
    if end <= begin:
        return float("nan")

    def generated_by(m: list[tuple[float, int]], when: float) -> int:
        return max((count for t, count in m if t <= when), default=0)

    tokens = sum(generated_by(m, end) - generated_by(m, begin) for m in marks)
    return tokens / (end - begin)


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
    print(f"{'streams':>7} {'decode tok/s':>13} {'per stream':>11} {'end to end tok/s':>17} {'sessions/step':>14}")
    # Rounds of every stream count in turn: the machine's speed drifts, and the ratio should
    # compare runs made at about the same time.
    runs_of: dict[int, list[RunFigures]] = {n: [] for n in counts}
    for _ in range(args.repeats):
        for n in counts:
            runs_of[n].append(run_streams(model, n, args.threads, args.tokens))
    for n in counts:
        runs = runs_of[n]
        decode = statistics.median(r.decode_tok_s for r in runs)
        end_to_end = statistics.median(r.end_to_end_tok_s for r in runs)
        figures[n] = (decode, end_to_end)
        print(f"{n:>7} {decode:>13.1f} {decode / n:>11.1f} {end_to_end:>17.1f} "
              f"{statistics.median(r.sessions_per_step for r in runs):>14.2f}")
    if 1 in figures:
        for n in counts:
            if n != 1:
                print(f"{n} streams / 1 stream: {figures[n][0] / figures[1][0]:.2f}x aggregate decode throughput "
                      f"({figures[n][1] / figures[1][1]:.2f}x end to end)")


if __name__ == "__main__":
    main()
