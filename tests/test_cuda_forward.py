"""The whole forward on the GPU (device='cuda' sessions, cpp/ops/cuda/cuda_backend.cu) against the
CPU on every family fixture and the default model, and streaming.md's invariants on the device.

These need a CUDA build and a usable GPU and skip cleanly (with the reason) elsewhere; the CPU-side
parts of the backend are tested in every build by tests/test_cuda.py. NOTE: as of this writing these
tests have never run on a GPU (README.md, "GPU").

Tolerances: the GPU sums in other orders than the CPU (warp trees, an online softmax normaliser,
no bit-for-bit SIMD twin), and both round K, V, q and the attention weights to half with the f16
cache, so logits agree to ~1e-3 relative on the tiny fixtures, and the top-1 token is the same.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import sinkstream
from sinkstream import _core
from sinkstream.device import cuda_unavailable_reason
from tiny_models import FAMILIES, PAPER_FAMILIES, write_family_model

REASON = cuda_unavailable_reason()
needs_gpu = pytest.mark.skipif(REASON is not None, reason=REASON or "")

CASES = {family: (family, {}) for family in FAMILIES + PAPER_FAMILIES}
CASES["falcon-40b"] = ("falcon", {"falcon_new_decoder": True})
CASES["mpt-clip"] = ("mpt", {"clamp_kqv": 0.5})
CASES["stablelm-parallel"] = ("stablelm", {"parallel_residual": True})
WEIGHT_TYPES = ("F32", "F16", "Q8_0")
N = 40
RTOL, ATOL = 2e-3, 2e-3


def _model(tmp_path_factory, name: str, weight_type: str = "F32") -> sinkstream.Model:
    family, overrides = CASES[name]
    if weight_type != "F32":  # 32-element blocks need rows of a multiple of 32
        from tiny_models import family_config
        overrides = {"n_embd": 64, "n_ff": 128, "head_dim": 64 // family_config(family)["n_head"], **overrides}
    path = tmp_path_factory.mktemp("cuda") / f"{name}-{weight_type}.gguf"
    write_family_model(path, family, seed=11, weight_type=weight_type, **overrides)
    return sinkstream.Model(path, n_threads=2)


def _tokens(n: int = N, vocab: int = 256, seed: int = 5) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, size=n).tolist()


def _logits(session, tokens, chunk):
    return np.concatenate([session.eval(tokens[i:i + chunk], logits="all") for i in range(0, len(tokens), chunk)])


def assert_close(cpu: np.ndarray, gpu: np.ndarray, what: str) -> None:
    assert gpu.shape == cpu.shape and np.isfinite(gpu).all(), what
    np.testing.assert_array_equal(gpu.argmax(-1), cpu.argmax(-1), err_msg=f"{what}: top-1 differs")
    np.testing.assert_allclose(gpu, cpu, rtol=RTOL, atol=ATOL, err_msg=what)
    print(f"{what}: max |diff| {np.abs(gpu - cpu).max():.3g}")


@needs_gpu
@pytest.mark.parametrize("mode", ["streaming", "window", "dense", "recompute"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_cpu(tmp_path_factory, name, mode):
    model = _model(tmp_path_factory, name)
    geometry = {"streaming": dict(n_sink=2, window=6), "window": dict(window=8), "dense": dict(window=64),
                "recompute": dict(window=8)}[mode]
    tokens = _tokens()
    for chunk in (1, 7):
        cpu = _logits(model.session(mode, batch_size=8, **geometry), tokens, chunk)
        gpu = _logits(model.session(mode, batch_size=8, device="cuda", **geometry), tokens, chunk)
        assert_close(cpu, gpu, f"{name} {mode} chunk {chunk}")


@needs_gpu
@pytest.mark.parametrize("weight_type", WEIGHT_TYPES[1:])
@pytest.mark.parametrize("name", ["llama", "gemma3", "phi3", "gptneox", "bloom"])
def test_forward_matches_cpu_quantized(tmp_path_factory, name, weight_type):
    model = _model(tmp_path_factory, name, weight_type)
    tokens = _tokens()
    cpu = _logits(model.session(n_sink=2, window=6, batch_size=8), tokens, 5)
    gpu = _logits(model.session(n_sink=2, window=6, batch_size=8, device="cuda"), tokens, 5)
    assert_close(cpu, gpu, f"{name} {weight_type}")


@needs_gpu
def test_default_model_matches_cpu():
    from sinkstream.default_model import default_model_path
    try:
        path = default_model_path()
    except Exception as e:  # noqa: BLE001 - offline, no cached copy
        pytest.skip(f"the default model is not available here: {e}")
    model = sinkstream.Model(path)
    tokens = model.tokenize("The quick brown fox jumps over the lazy dog. " * 20)
    cpu = _logits(model.session(n_sink=4, window=60, batch_size=64), tokens, 64)
    gpu = _logits(model.session(n_sink=4, window=60, batch_size=64, device="cuda"), tokens, 64)
    np.testing.assert_array_equal(gpu.argmax(-1), cpu.argmax(-1))
    np.testing.assert_allclose(gpu, cpu, rtol=2e-2, atol=2e-2)
    print(f"default model: max |diff| {np.abs(gpu - cpu).max():.3g}")


# ---- streaming.md's invariants, on the device -----------------------------------------------------

@needs_gpu
@pytest.mark.parametrize("name", ["llama", "gemma3", "mpt", "phi3"])
def test_chunking_does_not_change_logits(tmp_path_factory, name):
    # Invariant 1: any chunking gives the same logits (close here: other sums in other orders).
    model = _model(tmp_path_factory, name)
    tokens = _tokens()
    one = _logits(model.session(n_sink=2, window=6, batch_size=8, device="cuda"), tokens, 1)
    eight = _logits(model.session(n_sink=2, window=6, batch_size=8, device="cuda"), tokens, 8)
    np.testing.assert_allclose(one, eight, rtol=1e-4, atol=1e-4)


@needs_gpu
@pytest.mark.parametrize("name", ["llama", "gemma3", "mpt"])
def test_constant_memory_and_work_per_token(tmp_path_factory, name):
    # Invariants 2 and 3: the cache never grows; once the window is full every token attends to the
    # same number of entries, and each key is rotated once per layer.
    model = _model(tmp_path_factory, name)
    s = model.session(n_sink=2, window=6, batch_size=8, device="cuda")
    kv = s.kv_bytes
    attended = []
    for t in _tokens(60):
        before = s.entries_attended
        s.eval([t])
        attended.append(s.entries_attended - before)
        assert s.kv_bytes == kv
    assert len(set(attended[20:])) == 1, attended
    cpu = model.session(n_sink=2, window=6, batch_size=8)
    for t in _tokens(60):
        cpu.eval([t])
    assert cpu.entries_attended == s.entries_attended and cpu.keys_rotated == s.keys_rotated


@needs_gpu
@pytest.mark.parametrize("name", ["llama", "phi3", "bloom"])
def test_no_drift_at_huge_positions(tmp_path_factory, name):
    # Invariant 4: a stream that starts at 2^40 gives the logits of one that starts at 0.
    model = _model(tmp_path_factory, name)
    tokens = _tokens()
    near = _logits(model.session(n_sink=2, window=6, batch_size=8, device="cuda"), tokens, 4)
    far = _logits(model.session(n_sink=2, window=6, batch_size=8, device="cuda", position_offset=2**40), tokens, 4)
    np.testing.assert_allclose(near, far, rtol=1e-3, atol=1e-3)


@needs_gpu
def test_device_sessions_refuse_what_they_cannot_do_yet(tmp_path_factory):
    model = _model(tmp_path_factory, "llama")
    s = model.session(device="cuda", n_sink=2, window=6)
    assert s.device == "cuda" and s._core.device == "cuda"
    s.eval(_tokens(3))
    with pytest.raises(ValueError, match="not supported for device='cuda'"):
        s.save()


@needs_gpu
def test_model_device_default(tmp_path_factory):
    family, _ = CASES["llama"]
    path = tmp_path_factory.mktemp("cuda") / "llama-default.gguf"
    write_family_model(path, family, seed=11)
    model = sinkstream.Model(path, device="cuda")
    assert model.session().device == "cuda" and model.session(device="cpu").device == "cpu"
    text = model.generate("ab", max_tokens=4, temperature=0.0)
    assert text == sinkstream.Model(path).generate("ab", max_tokens=4, temperature=0.0)
    assert _core.cuda_resident_weight_bytes(model._core) > 0


def test_reason_is_given_without_a_gpu():
    # The skip reason above is a real message, not an empty string, wherever CUDA cannot run.
    if REASON is not None:
        assert "device='cuda'" in REASON
        if not _core.cuda_built():
            assert "built without CUDA" in REASON
    assert os.environ.get("SINKSTREAM_REQUIRE_GPU") != "1" or REASON is None, REASON
