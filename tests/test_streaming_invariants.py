"""streaming.md, "What must hold": one test (at least) per invariant, on tiny random models.

Tiny geometry: n_sink S = 2, window W = 6, so capacity C = 8 and streams of 40 tokens pass the cache
five times over. Every wrong implementation named in the issue fails one of these: positions from
the text instead of the cache (reference), sinks evicted (reference), off-by-one window (reference),
chunk boundary leaks (chunked vs one-by-one, with several batch sizes).
"""
from __future__ import annotations

import numpy as np
import pytest

import sinkstream
from sinkstream import _core
from reference_llama import ReferenceLlama
from tiny_models import write_tiny_model

S, W = 2, 6
C = S + W
N = 40
GEOMETRY = {
    "streaming": dict(mode="streaming", n_sink=S, window=W),
    "window": dict(mode="window", window=C),
    "dense": dict(mode="dense", window=64),
    "recompute": dict(mode="recompute", window=C),
}


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", arch="llama", seed=7)


@pytest.fixture(scope="module")
def model(tiny_path):
    return sinkstream.Model(tiny_path, n_threads=2)


@pytest.fixture(scope="module")
def reference(tiny_path):
    return ReferenceLlama(str(tiny_path))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(3).integers(0, 256, size=N).tolist()


def feed(session, tokens, chunk):
    return np.concatenate([session.eval(tokens[i:i + chunk], logits="all") for i in range(0, len(tokens), chunk)])


def recompute_reference(reference, tokens, capacity):
    """The paper's sliding window with re-computation, by definition: dense over the last C tokens."""
    return np.stack([reference.logits(tokens[max(0, t - capacity + 1):t + 1], mode="dense")[-1]
                     for t in range(len(tokens))])


# Invariant 1 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(GEOMETRY))
@pytest.mark.parametrize("batch_size", [1, 4, 256])
def test_chunked_prefill_equals_one_by_one(model, tokens, mode, batch_size):
    one_by_one = feed(model.session(**GEOMETRY[mode], kv_type="f32", batch_size=batch_size), tokens, 1)
    for chunk in (3, 7, N):
        chunked = feed(model.session(**GEOMETRY[mode], kv_type="f32", batch_size=batch_size), tokens, chunk)
        np.testing.assert_allclose(chunked, one_by_one, rtol=0, atol=2e-4, err_msg=f"{mode} chunk {chunk}")


def test_prompt_longer_than_cache_is_not_dense(model, tokens):
    """A prompt of 5 C tokens fed at once must still attend only to A(t) (no dense fallback)."""
    streaming = model.session(**GEOMETRY["streaming"], kv_type="f32").eval(tokens, logits="all")
    dense = model.session(**GEOMETRY["dense"], kv_type="f32").eval(tokens, logits="all")
    assert np.allclose(streaming[:C], dense[:C], atol=2e-4)           # identical while t < C
    assert np.abs(streaming[C:] - dense[C:]).max() > 1e-2             # and different after


# Invariant 2 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["streaming", "window", "recompute"])
def test_constant_memory(model, mode):
    session = model.session(**GEOMETRY[mode], batch_size=4)
    kv_bytes = session.kv_bytes
    rng = np.random.default_rng(0)
    session.eval(rng.integers(0, 256, size=2 * C).tolist(), logits=None)   # warm up past C
    session.eval([1], logits="last")
    heap_before = _core.heap_bytes_in_use()
    for _ in range(300):
        session.eval(rng.integers(0, 256, size=int(rng.integers(1, 9))).tolist(), logits=None)
        session.eval([5], logits="last")
    heap_after = _core.heap_bytes_in_use()
    assert session.kv_bytes == kv_bytes
    assert session.n_cached == C
    if heap_before >= 0:
        # 300 steps of several tokens: a cache growing by even one f16 K/V row per token would add
        # 2 layers * 2 * 16 values * 2 bytes * ~1500 tokens = 192 KB.
        assert heap_after - heap_before < 48 * 1024, f"heap grew by {heap_after - heap_before} bytes"


def test_dense_mode_refuses_past_capacity(model):
    session = model.session(mode="dense", window=10)
    session.eval(list(range(10)), logits=None)
    with pytest.raises(ValueError, match="dense mode holds at most 10 tokens"):
        session.eval([1], logits="last")


# Invariant 3 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["streaming", "window"])
def test_constant_work_per_token(model, mode):
    """Each key is rotated exactly once per layer, and each decode step reads |A(t)| = C entries
    per head and layer, however long the stream (no re-rotation, no growing attention)."""
    session = model.session(**GEOMETRY[mode])
    n_layer, n_head = 2, 4
    session.eval(list(range(3 * C)), logits=None)
    for step in range(50):
        rotated, attended = session._core.keys_rotated, session._core.entries_attended
        session.eval([step % 256], logits="last")
        assert session._core.keys_rotated - rotated == n_layer
        assert session._core.entries_attended - attended == n_layer * n_head * C


# Invariant 4 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["streaming", "window", "dense"])
def test_no_drift_at_huge_positions(model, tokens, mode):
    at_zero = model.session(**GEOMETRY[mode], kv_type="f32").eval(tokens, logits="all")
    for offset in (2**40 - 3, 2**40 + 12345, 2**52 + 1):
        far = model.session(**GEOMETRY[mode], kv_type="f32", position_offset=offset)
        got = feed(far, tokens, 5)
        np.testing.assert_allclose(got, at_zero, rtol=0, atol=5e-4, err_msg=f"offset {offset}")


def test_stream_counter_is_64_bit(model):
    session = model.session(**GEOMETRY["streaming"], position_offset=2**62)
    session.eval(list(range(3 * C)), logits="last")
    assert session.n_past == 3 * C


# Invariant 5 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["streaming", "window", "dense"])
def test_matches_reference_attention_sets(model, reference, tokens, mode):
    g = GEOMETRY[mode]
    expected = reference.logits(tokens, mode=mode, n_sink=g.get("n_sink", 0), window=g["window"])
    got = feed(model.session(**g, kv_type="f32"), tokens, 7)
    err = np.abs(got - expected).max()
    print(f"{mode}: max |engine - reference| = {err:.2e}")
    assert err < 1e-3 * max(1.0, np.abs(expected).max())


def test_recompute_matches_its_definition(model, reference, tokens):
    expected = recompute_reference(reference, tokens[:20], C)
    got = feed(model.session(**GEOMETRY["recompute"], kv_type="f32"), tokens[:20], 3)
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())


def test_sinks_matter(model, reference, tokens):
    """The reference itself distinguishes the modes: dropping the sinks changes the logits."""
    streaming = reference.logits(tokens[:20], mode="streaming", n_sink=S, window=W)
    window = reference.logits(tokens[:20], mode="window", window=W)
    assert np.abs(streaming[C:] - window[C:]).max() > 1e-2


# Park and resume ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(GEOMETRY))
@pytest.mark.parametrize("split", [1, C - 1, 3 * C + 1])
def test_save_load_continues_exactly(model, tokens, mode, split, tmp_path):
    whole = model.session(**GEOMETRY[mode], kv_type="f32").eval(tokens, logits="all")
    first = model.session(**GEOMETRY[mode], kv_type="f32", batch_size=4)
    first.eval(tokens[:split], logits=None)
    blob = first.save()
    first.save(tmp_path / "state.bin")
    for state in (blob, tmp_path / "state.bin"):
        # A different batch size (ring layout) on purpose: the state is stored by token, not by slot.
        resumed = model.session(**GEOMETRY[mode], kv_type="f32", batch_size=16)
        resumed.load(state)
        assert resumed.n_past == split
        got = resumed.eval(tokens[split:], logits="all")
        np.testing.assert_allclose(got, whole[split:], rtol=0, atol=2e-4)


def test_load_rejects_other_settings_and_garbage(model, tokens):
    s = model.session(**GEOMETRY["streaming"])
    s.eval(tokens[:10], logits=None)
    blob = s.save()
    with pytest.raises(ValueError, match="other settings"):
        model.session(mode="streaming", n_sink=S, window=W + 1).load(blob)
    with pytest.raises(ValueError, match="not a sinkstream session state"):
        model.session(**GEOMETRY["streaming"]).load(b"garbage" * 10)
    with pytest.raises(ValueError):
        model.session(**GEOMETRY["streaming"]).load(blob[:-5])
