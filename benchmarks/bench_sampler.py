"""Sampling cost per token for large vocabularies (prints ms per call; no pass/fail).

python benchmarks/bench_sampler.py [--vocab 151936] [--calls 50]

A sampler call copies the logits, applies penalties/bias and selects (top-k/top-p/min-p) in O(n):
it should stay far below a model's decode time (SmolLM2: ~4 ms per token on 2 cores).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from sinkstream._core import Sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    logits = (np.random.default_rng(7).standard_normal(args.vocab) * 2.0).astype(np.float32)
    for opts in (dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
                 dict(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0),
                 dict(temperature=0.0)):
        sampler = Sampler(len(logits), seed=3, **opts)
        sampler.sample(logits)  # the first call may touch fresh buffers
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            sampler.sample(logits)
            times.append(time.perf_counter() - start)
        print(f"vocab {args.vocab:>7} {opts}: median {statistics.median(times) * 1e3:.3f} ms per call")


if __name__ == "__main__":
    main()
