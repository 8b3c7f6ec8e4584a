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
    _print_session_memory(str(g.path))
    return _print_runs(str(g.path))


def _print_session_memory(path: str) -> None:
    """What a default session costs (Model.session_memory), for a model this build runs."""
    from ..model import Model

    try:
        model = Model(path)
    except Exception as e:  # noqa: BLE001 - inspect describes files the engine cannot run too
        print(f"session memory: - (the engine cannot load this model: {str(e).splitlines()[0]})")
        return
    m = model.session_memory()
    print(f"session memory: {m['total']} bytes ({m['total'] / 2**20:.1f} MiB) for a default streaming session: "
          f"K/V cache {m['kv_cache']}, scratch {m['scratch']}, attention {m['attention']}; "
          f"limit {_limit()} bytes (max_bytes; default: this machine's memory)")


def _limit() -> int:
    from .. import _core

    return _core.physical_memory_bytes()


def _describe_layers(layers: list[dict]) -> list[str]:
    """Runs of identical layers, e.g. '0-4, 6-10: sliding window 512, RoPE base 10000 (neox), QK-norm'."""
    def describe(layer: dict) -> str:
        parts = [f"sliding window {layer['sliding_window']}" if layer["sliding_window"] else "global"]
        rope = layer["rope"]
        if rope is None:
            parts.append("no RoPE (NoPE)")
        else:
            text = f"RoPE base {rope['freq_base']:g} over {rope['n_rot']} dims ({rope['layout']})"
            if rope["linear_scale"] != 1.0:
                text += f", linear x{rope['linear_scale']:g}"
            if rope["freq_factors"]:
                text += ", frequency factors"
            if rope["long_freq_factors"]:
                text += ", LongRoPE"
            if rope.get("yarn_factor"):
                text += f", YaRN x{rope['yarn_factor']:g}"
            parts.append(text)
        if layer.get("learned_sinks"):
            parts.append("learned sinks")
        if layer["qk_norm"]:
            parts.append("QK-norm")
        if layer["post_norms"]:
            parts.append("post-norms")
        parts.append(layer["activation"])
        if layer.get("experts"):
            parts.append("{} of {} experts".format(*layer["experts"]))
        if layer["attention_softcap"]:
            parts.append(f"soft-cap {layer['attention_softcap']:g}")
        return ", ".join(parts)

    groups: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        groups.setdefault(describe(layer), []).append(i)
    lines = []
    for text, indices in groups.items():
        spans, start = [], indices[0]
        for a, b in zip(indices, indices[1:] + [None]):
            if b != a + 1:
                spans.append(f"{start}" if start == a else f"{start}-{a}")
                start = b
        lines.append(f"  layers {', '.join(spans)}: {text}")
    return lines


def _print_runs(path: str) -> int:
    """Whether sinkstream runs this file, and if not, why (the loader's own error)."""
    from .. import _core

    try:
        model = _core.Model.load(path)
    except (ValueError, OSError) as e:
        print(f"runs:          no: {e}")
        return 1
    features = dict(_core.supported_architectures())
    print(f"runs:          yes ({model.architecture}: {features[model.architecture]})")
    for line in _describe_layers(model.layers):
        print(line)
    return 0
