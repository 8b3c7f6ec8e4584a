"""Speed check of the quantized matmul on the default model's shapes (SmolLM2-135M: Q4_1 + Q8_0).

Runs the matmuls of one forward pass over a full model's worth of distinct random weights (30 layers
of attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down, then the tied 49152 x 576 Q8_0
output), so the weights stream from DRAM as in real decoding (96 MB > the L3 cache). Prints ms per
call of each shape, GB/s of weights read, and the total per pass: at n = 1 that is the matmul time
per decoded token; at n = 64 the time per 64-token prefill chunk.

    python benchmarks/bench_matmul.py [--isa avx512|avx2|scalar] [--threads 1,2] [--n 1,64] [--iterations 20]
"""
from __future__ import annotations

import argparse

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

from sinkstream import _core

N_LAYERS = 30
# (name, type, rows, cols) of one layer, then the output; n_embd 576, n_ff 1536, 3 KV heads x 64.
LAYER = [
    ("attn_q 576x576", T.Q4_1, 576, 576),
    ("attn_k 192x576", T.Q4_1, 192, 576),
    ("attn_v 192x576", T.Q4_1, 192, 576),
    ("attn_output 576x576", T.Q4_1, 576, 576),
    ("ffn_gate 1536x576", T.Q4_1, 1536, 576),
    ("ffn_up 1536x576", T.Q4_1, 1536, 576),
    ("ffn_down 576x1536", T.Q4_1, 576, 1536),
]
OUTPUT = ("output 49152x576 Q8_0", T.Q8_0, 49152, 576)
SCALE_OFFSETS = {T.Q4_1: [0, 2], T.Q8_0: [0]}  # half scales inside a block: keep them sane


def random_weight(qtype: T, rows: int, cols: int, rng: np.random.Generator) -> bytes:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        scales = rng.uniform(0.001, 0.02, n_blocks).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", default=_core.cpu_features()["active_isa"])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--n", default="1,64")
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shapes = [s for _ in range(N_LAYERS) for s in LAYER] + [OUTPUT]
    weights = [(int(qt), random_weight(qt, rows, cols, rng), rows, cols) for _, qt, rows, cols in shapes]
    total_bytes = sum(len(w[1]) for w in weights)
    print(f"isa={args.isa} (kernels: Q4_1 from {_core.matmul_kernel_isa(int(T.Q4_1), args.isa)}, Q8_0 from "
          f"{_core.matmul_kernel_isa(int(T.Q8_0), args.isa)}); {len(weights)} matrices, {total_bytes / 1e6:.0f} MB")
    for n in (int(v) for v in args.n.split(",")):
        for n_threads in (int(v) for v in args.threads.split(",")):
            iterations = args.iterations if n == 1 else max(2, args.iterations // 10)
            # Best of three runs: the machine may be shared.
            runs = [_core.matmul_bench_sequence(weights, n, args.isa, n_threads, iterations) for _ in range(3)]
            seconds = min(runs, key=sum)
            print(f"\n n={n} threads={n_threads}")
            for name, qt, rows, cols in LAYER + [OUTPUT]:
                idx = [k for k, s in enumerate(shapes) if s[0] == name]
                s = float(np.mean([seconds[k] for k in idx]))
                nbytes = len(weights[idx[0]][1])
                print(f"  {name:24s} {s * 1e3:8.3f} ms/call  {nbytes / s / 1e9:6.1f} GB/s  "
                      f"{n * rows * cols / s / 1e9:6.1f} GMAC/s")
            total = sum(seconds)
            what = "per token" if n == 1 else f"per {n}-token chunk ({total * 1e3 / n:.3f} ms/token)"
            print(f"  all {len(weights)} matmuls {what}: {total * 1e3:.2f} ms, {total_bytes / total / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
