"""GPU benchmark of the CUDA backend: decode tok/s at stream positions 1K and 100K, prefill tok/s,
and GPU memory, for a device='cuda' session (with the CPU beside it for reference, --cpu).

    python benchmarks/bench_cuda.py [MODEL] [--window 2044] [--positions 1024,102400]
                                    [--decode 64] [--batch-size 512] [--long-window] [--cpu]

For each position P the session is prefilled with P random tokens in --batch-size chunks (prefill
tok/s), then decodes --decode tokens one at a time (decode tok/s at position P). --window is the
session's window (streaming mode, 4 sinks); --long-window sets it to P instead, so the decode at
P attends over a P-entry cache (the long-cache attention path). GPU memory: the weights this
model's CUDA sessions hold (0 on an integrated GPU, where the file is mapped), the session's K/V
cache, and nvidia-smi's used memory when nvidia-smi is present.

Refuses with exit status 2 and the reason when CUDA cannot run here (no CUDA build, no GPU).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

import numpy as np


def gpu_memory_used_mib() -> int | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return int(out.splitlines()[0].strip())
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def run(model, device: str, position: int, window: int, batch_size: int, n_decode: int, seed: int) -> dict:
    from sinkstream import _core

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, model.n_vocab, size=position + n_decode).astype(np.int32)
    session = model.session("streaming", n_sink=4, window=window, batch_size=batch_size, device=device)
    session.eval(tokens[:min(batch_size, position)], logits=None)  # warm-up: first-use uploads, allocations
    session.reset()
    start = time.perf_counter()
    for i in range(0, position, batch_size):
        session.eval(tokens[i:min(position, i + batch_size)], logits=None)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for t in tokens[position:]:
        session.eval([int(t)])  # logits of the token come back, as in generation
    decode_s = time.perf_counter() - start
    return {
        "device": device, "position": position, "window": window, "batch_size": batch_size,
        "prefill_tok_s": position / prefill_s, "decode_tok_s": n_decode / decode_s,
        "kv_cache_bytes": session.kv_bytes,
        "weight_bytes_on_gpu": _core.cuda_resident_weight_bytes(model._core) if device == "cuda" else 0,
        "gpu_memory_used_mib": gpu_memory_used_mib() if device == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    p.add_argument("--window", type=int, default=2044)
    p.add_argument("--positions", default="1024,102400", help="stream positions to decode at (comma-separated)")
    p.add_argument("--decode", type=int, default=64, help="tokens decoded at each position")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--long-window", action="store_true", help="window = the position (attention over it all)")
    p.add_argument("--cpu", action="store_true", help="also run the CPU backend, for reference")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = p.parse_args(argv)

    from sinkstream import Model, _core
    from sinkstream.device import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is not None:
        print(f"bench_cuda: cannot run: {reason}", file=sys.stderr)
        return 2
    devices = _core.cuda_devices()
    print(f"# GPU: {devices[0]['name']} (sm_{devices[0]['compute_capability'][0]}{devices[0]['compute_capability'][1]}, "
          f"{devices[0]['total_memory'] / 2**30:.1f} GiB)", file=sys.stderr)
    model = Model(args.model)
    rows = []
    for position in (int(x) for x in args.positions.split(",")):
        window = position if args.long_window else args.window
        for device in (["cuda", "cpu"] if args.cpu else ["cuda"]):
            r = run(model, device, position, window, args.batch_size, args.decode, seed=position)
            rows.append(r)
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"{device:4} position {position:>7} window {window:>7}: prefill {r['prefill_tok_s']:9.1f} tok/s, "
                      f"decode {r['decode_tok_s']:8.1f} tok/s, K/V {r['kv_cache_bytes'] / 2**20:8.1f} MiB, "
                      f"weights on GPU {r['weight_bytes_on_gpu'] / 2**20:8.1f} MiB, "
                      f"GPU used {r['gpu_memory_used_mib']} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
