"""The engine's llama-family forward pass against the NumPy reference (reference_llama.py)."""
from __future__ import annotations

import numpy as np
import pytest

import sinkstream
from reference_llama import ReferenceLlama
from tiny_models import write_tiny_model

CASES = {
    # GQA 4/2, adjacent-pair RoPE (llama GGUF layout), tied head, float32 weights
    "llama-f32": dict(arch="llama"),
    # NeoX RoPE with Q/K/V biases (qwen2), separate output head
    "qwen2-biases": dict(arch="qwen2", biases=True, tied=False, seed=1),
    # RoPE on only part of each head, MHA, quantized weights the reference dequantizes with gguf
    # (the reference rounds the inputs of these matmuls to 8-bit blocks exactly as the engine and
    # llama.cpp define it: reference_llama.round_input_to_8bit_blocks)
    "llama-partial-rope-q8": dict(arch="llama", n_head=4, n_head_kv=4, rope_dim=4, n_ff=64, weight_type="Q8_0", seed=2),
    "qwen2-q4_1-partial": dict(arch="qwen2", biases=True, rope_dim=6, weight_type="Q4_1", n_embd=64, n_ff=96, seed=3),
    "llama-f16-gqa4": dict(arch="llama", n_head=8, n_head_kv=2, n_embd=64, weight_type="F16", seed=4),
    # RoPE frequency scaling from metadata: linear (positions / factor) and llama3-style factors
    "llama-linear-scaling": dict(arch="llama", rope_linear_factor=4.0, freq_base=500.0, seed=5),
    "llama3-freq-factors": dict(arch="llama", rope_freq_factors=[1.0, 2.0, 8.0, 32.0], freq_base=100.0, seed=6),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny(request, tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("tiny") / f"{request.param}.gguf", **CASES[request.param])
    return sinkstream.Model(path, n_threads=2), ReferenceLlama(str(path))


def test_dense_logits_match_reference(tiny):
    model, ref = tiny
    tokens = np.random.default_rng(0).integers(0, 256, size=13).tolist()
    expected = ref.logits(tokens, mode="dense")
    got = model.session(mode="dense", window=64, kv_type="f32").eval(tokens, logits="all")
    err = np.abs(got - expected).max()
    print(f"max |engine - reference| = {err:.2e} (logit scale {np.abs(expected).max():.1f})")
    assert err < 1e-3 * max(1.0, np.abs(expected).max())
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_f16_cache_matches_reference(tiny):
    """A half-precision cache (the default): keys, values, queries and attention weights rounded to
    half precision, as the reference defines it."""
    model, ref = tiny
    tokens = np.random.default_rng(1).integers(0, 256, size=9).tolist()
    expected = ref.logits(tokens, mode="dense", kv_half=True)
    got = model.session(mode="dense", window=64, kv_type="f16").eval(tokens, logits="all")
    err = np.abs(got - expected).max()
    print(f"f16 cache: max |engine - reference| = {err:.2e}")
    assert err < 1e-3 * max(1.0, np.abs(expected).max())
