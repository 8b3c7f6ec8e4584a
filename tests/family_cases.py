"""The family fixtures that the CPU (test_family_streaming.py) and GPU (test_cuda_forward.py) forward
tests share: the cases, the session geometries, feeding a stream in chunks, and the float64
reference's logits for a mode (tests/reference_forward.py)."""
from __future__ import annotations

import numpy as np

from tiny_models import FAMILIES, PAPER_FAMILIES

# Every fixture the invariants run on: each family, plus the layouts a family has more than one of.
CASES = {family: (family, {}) for family in FAMILIES + PAPER_FAMILIES}
CASES["falcon-40b"] = ("falcon", {"falcon_new_decoder": True})   # two LayerNorms, GQA
CASES["mpt-clip"] = ("mpt", {"clamp_kqv": 0.5})                  # clip_qkv that really clips
CASES["stablelm-parallel"] = ("stablelm", {"parallel_residual": True})  # no ffn_norm: one norm, parallel
ALL = tuple(CASES)
# name -> (n_sink, window): capacity 8 with window 6 > the fixtures' local window 5, and capacity
# 5 with window 3 < 5.
GEOMETRIES = {"wide": (2, 6), "narrow": (2, 3)}


def geometry(mode: str, n_sink: int, window: int) -> dict:
    capacity = n_sink + window
    return {
        "streaming": dict(mode="streaming", n_sink=n_sink, window=window),
        "window": dict(mode="window", window=capacity),
        "dense": dict(mode="dense", window=64),
        "recompute": dict(mode="recompute", window=capacity),
    }[mode]


def feed(session, tokens, chunk):
    return np.concatenate([session.eval(tokens[i:i + chunk], logits="all") for i in range(0, len(tokens), chunk)])


def reference_logits(reference, tokens, mode, n_sink, window):
    g = geometry(mode, n_sink, window)
    if mode == "recompute":  # the paper's baseline by definition: dense over the last C tokens
        capacity = g["window"]
        return np.stack([reference.logits(tokens[max(0, t - capacity + 1):t + 1], mode="dense",
                                          capacity=capacity)[-1] for t in range(len(tokens))])
    return reference.logits(tokens, mode=mode, n_sink=g.get("n_sink", 0), window=g["window"])
