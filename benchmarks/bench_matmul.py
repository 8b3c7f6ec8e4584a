"""Quick speed check of the quantized matmul on the default model's shapes (SmolLM2-135M, Q4_1 + Q8_0).

Prints ms per call and the weight bytes streamed per second, at n = 1 (decode: one token, bound by
reading the weights) and n = 64 (a prefill chunk: bound by arithmetic), 1 and 2 threads, and an
estimate of the matmul time per decoded token for the whole model (30 layers + the tied LM head).

    python benchmarks/bench_matmul.py [--isa avx512|avx2|scalar] [--threads 1,2] [--n 1,64] [--quick]
"""
from __future__ import annotations

import argparse

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

from sinkstream import _core

# (name, type, rows, cols, uses per token): SmolLM2-135M, n_embd 576, n_ff 1536, 3 KV heads x 64,
# 30 layers, vocabulary 49152 (output tied to token_embd, Q8_0).
SHAPES = [
    ("attn_q/attn_output 576x576", T.Q4_1, 576, 576, 60),
    ("attn_k/attn_v 192x576", T.Q4_1, 192, 576, 60),
    ("ffn_gate/ffn_up 1536x576", T.Q4_1, 1536, 576, 60),
    ("ffn_down 576x1536", T.Q4_1, 576, 1536, 30),
    ("output 49152x576 (Q8_0)", T.Q8_0, 49152, 576, 1),
]

# Offsets of the half scales in the blocks, so random blocks hold sane finite scales.
SCALE_OFFSETS = {T.Q4_1: [0, 2], T.Q8_0: [0]}


def random_weight(qtype: T, rows: int, cols: int, rng: np.random.Generator) -> bytes:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        scales = (rng.uniform(0.001, 0.02, n_blocks)).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", default=_core.cpu_features()["active_isa"])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--n", default="1,64")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    ns = [int(n) for n in args.n.split(",")]
    rng = np.random.default_rng(0)
    weights = {name: random_weight(qt, rows, cols, rng) for name, qt, rows, cols, _ in SHAPES}

    print(f"isa={args.isa} (kernels: Q4_1 from {_core.matmul_kernel_isa(int(T.Q4_1), args.isa)}, "
          f"Q8_0 from {_core.matmul_kernel_isa(int(T.Q8_0), args.isa)})")
    for n in ns:
        for n_threads in threads:
            total_s, total_bytes = 0.0, 0
            print(f"\n n={n} threads={n_threads}")
            for name, qt, rows, cols, uses in SHAPES:
                w = weights[name]
                budget_s = 0.05 if args.quick else 0.25
                first = _core.matmul_bench(int(qt), w, rows, cols, n, args.isa, n_threads, 3)
                iters = max(3, min(2000, int(budget_s / max(first, 1e-7))))
                s = _core.matmul_bench(int(qt), w, rows, cols, n, args.isa, n_threads, iters)
                gbps = len(w) / s / 1e9
                gmacs = n * rows * cols / s / 1e9
                print(f"  {name:30s} {s * 1e3:8.3f} ms  {gbps:6.1f} GB/s  {gmacs:7.1f} GMAC/s")
                total_s += s * uses
                total_bytes += len(w) * uses
            per = "token" if n == 1 else f"chunk of {n} tokens"
            print(f"  whole model per {per}: {total_s * 1e3:.2f} ms ({total_bytes / 1e6:.0f} MB of weights, "
                  f"{total_bytes / total_s / 1e9:.1f} GB/s" + (f", {total_s * 1e3 / n:.3f} ms/token)" if n > 1 else ")"))


if __name__ == "__main__":
    main()
