"""Where a CUDA session's time goes: decode steps and prefill chunks under torch.profiler, whose
CUPTI tracing sees every kernel of the process (sinkstream's own, statically linked CUDA runtime
included), with the host's launch calls beside them.

    python benchmarks/profile_cuda.py [MODEL] [--window 2044]

Needs PyTorch with CUDA (only for its profiler) and a CUDA build of sinkstream. Prints decode
ms/token (with and without the logits coming back), then two tables: 32 decode steps at position
~1,100, and four 512-token prefill chunks with the window full. This is how the GPU section of
README.md found its bottlenecks (an H200: kernel time against launch count, per kernel).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    p.add_argument("--window", type=int, default=2044)
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    import sinkstream

    torch.zeros(1, device="cuda")  # the profiler's CUDA context first
    model = sinkstream.Model(args.model, device="cuda")
    tokens = np.random.default_rng(0).integers(0, model.n_vocab, 8192).tolist()
    session = model.session(n_sink=4, window=args.window, batch_size=512)
    for i in range(0, 1024, 512):
        session.eval(tokens[i:i + 512], logits=None)
    for t in tokens[1024:1040]:  # warm-up
        session.eval([t])
    for logits in ("last", None):
        start = time.perf_counter()
        for t in tokens[1040:1104]:
            session.eval([t], logits=logits)
        torch.cuda.synchronize()
        print(f"decode logits={logits}: {(time.perf_counter() - start) / 64 * 1e3:.3f} ms/token")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for t in tokens[1104:1136]:
            session.eval([t])
        torch.cuda.synchronize()
    print("== decode, 32 tokens at position ~1100")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=70))

    prefill = model.session(n_sink=4, window=args.window, batch_size=512)
    for i in range(0, 4096, 512):
        prefill.eval(tokens[i:i + 512], logits=None)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(4096, 6144, 512):
            prefill.eval(tokens[i:i + 512], logits=None)
        torch.cuda.synchronize()
    print("== prefill, 4 chunks of 512 at positions 4096..6144 (window full)")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=70))


if __name__ == "__main__":
    main()
