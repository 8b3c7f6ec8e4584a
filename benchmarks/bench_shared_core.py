"""Benchmark: decode speed on a shared machine, where another process keeps cores busy.

    python benchmarks/bench_shared_core.py [--threads 2] [--busy 1] [--tokens 128] [--repeats 3] [MODEL]

Decode tok/s of one stream (greedy, after a 64-token prompt) first on a quiet machine, then while
--busy processes spin (`yes > /dev/null`, as another service would), each figure the median of
--repeats runs, and the ratio. An edge box shares its cores; the thread pool (cpp/core/thread_pool.h)
stops waiting for workers the OS has descheduled. With llama-cpp-python installed, llama.cpp's
figures under the same load are printed too.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import numpy as np

import sinkstream
from sinkstream.bench import bench_llama_cpp


def decode_tok_s(model: sinkstream.Model, threads: int, n_tokens: int) -> float:
    session = model.session(window=1020, n_threads=threads)
    logits = session.eval(np.arange(100, 164, dtype=np.int32))
    known = model.n_tokenizer_vocab
    start = time.perf_counter()
    for _ in range(n_tokens):
        logits = session.eval([int(np.argmax(logits[:known]))])
    return n_tokens / (time.perf_counter() - start)


def measure(model: sinkstream.Model, args: argparse.Namespace) -> tuple[float, float | None]:
    ours = statistics.median(decode_tok_s(model, args.threads, args.tokens) for _ in range(args.repeats))
    peer = bench_llama_cpp(model.path, args.threads, 64, args.tokens, 128, args.repeats)
    return ours, None if peer is None else peer.decode_tok_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--busy", type=int, default=1, help="processes kept spinning during the second figure")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = sinkstream.Model(args.model)
    decode_tok_s(model, args.threads, 8)  # warm-up: page in the weights
    quiet = measure(model, args)
    spinners = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.busy)]
    try:
        time.sleep(0.5)
        busy = measure(model, args)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    print(f"decode tok/s, {args.threads} threads, median of {args.repeats}")
    print(f"{'engine':<11} {'quiet':>8} {f'{args.busy} busy':>8} {'busy/quiet':>11}")
    print(f"{'sinkstream':<11} {quiet[0]:>8.1f} {busy[0]:>8.1f} {busy[0] / quiet[0]:>10.0%}")
    if quiet[1] is not None and busy[1] is not None:
        print(f"{'llama.cpp':<11} {quiet[1]:>8.1f} {busy[1]:>8.1f} {busy[1] / quiet[1]:>10.0%}")


if __name__ == "__main__":
    main()
