"""`sinkstream inspect FILE`: architecture, hyper-parameters, tokenizer and tensor-type summary."""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="describe a GGUF file")
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..default_model import default_model_path
    from ..gguf_file import GGUFFile

    g = GGUFFile(args.model or default_model_path())
    md = g.metadata
    arch = md.get("general.architecture", "?")
    print(f"file:          {g.path}")
    print(f"GGUF version:  {g.version}")
    print(f"architecture:  {arch}")
    print(f"name:          {md.get('general.name', '?')}")
    print("hyper-parameters:")
    for key, value in md.items():
        if key.startswith(f"{arch}.") and not isinstance(value, list):
            if isinstance(value, float):  # GGUF floats are mostly float32: print the shortest repr
                value = str(np.float32(value)) if float(np.float32(value)) == value else repr(value)
            print(f"  {key[len(arch) + 1:]:<34} {value}")
    tokens = md.get("tokenizer.ggml.tokens")
    print(f"tokenizer:     {md.get('tokenizer.ggml.model', '?')} (pre: {md.get('tokenizer.ggml.pre', '-')}), "
          f"{len(tokens) if tokens else 0} tokens")
    print(f"chat template: {'yes' if 'tokenizer.chat_template' in md else 'no'}")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in g.tensors:
        counts[t.dtype][0] += 1
        counts[t.dtype][1] += t.nbytes
    total_bytes = sum(nbytes for _, nbytes in counts.values())
    print(f"tensors:       {len(g.tensors)} ({total_bytes} bytes)")
    for dtype, (n, nbytes) in sorted(counts.items(), key=lambda kv: -kv[1][1]):
        print(f"  {dtype:<8} {n:>5} tensors {nbytes:>14} bytes ({nbytes / 1e6:.2f} MB)")
    return 0
