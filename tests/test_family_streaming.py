"""streaming.md's invariants on every family, "Models whose layers differ" included.

Each family's tiny random fixture (tests/tiny_models.py) runs through the engine and through the
float64 NumPy reference (tests/reference_forward.py), which is written from each model's published
definition and materializes A_l(t) per layer with positions = ranks in A(t). Two geometries: the
fixtures' sliding windows (5) sit between them, so a local layer's window is once narrower than the
session's window and once wider (then sinks leave a local layer before they would leave A(t)).
"""
from __future__ import annotations

import numpy as np
import pytest

import sinkstream
from sinkstream import _core
from family_cases import ALL, CASES, GEOMETRIES, feed, geometry, reference_logits
from reference_forward import ReferenceModel, layer_attention_set
from tiny_models import FAMILIES, PAPER_FAMILIES, family_config, rewrite_gguf, write_family_model

N = 40


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """case name -> (engine model, reference), built once per case on first use."""
    root = tmp_path_factory.mktemp("families")
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            family, overrides = CASES[name]
            path = write_family_model(root / f"{name}.gguf", family, seed=11, **overrides)
            cache[name] = (sinkstream.Model(path, n_threads=2), ReferenceModel(str(path)))
        return cache[name]
    return get


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(5).integers(0, 256, size=N).tolist()


def test_every_family_is_supported():
    supported = set(sinkstream.supported_architectures())
    for family in FAMILIES + PAPER_FAMILIES:
        assert family_config(family)["arch"] in supported


def test_layer_configuration_read_from_the_file(fixtures):
    """The engine's per-layer view agrees with the reference's reading of the same file."""
    for name in ALL:
        model, reference = fixtures(name)
        layers = model.layers
        assert [layer["sliding_window"] for layer in layers] == list(reference.layer_windows), name
        assert [layer["rope"] is not None for layer in layers] == list(reference.layer_uses_rope), name


# Invariant 5: the engine equals the definition, per layer ------------------------------------------
# Dense mode has no session geometry (it attends to everything): one case of it, not one per geometry.
MODE_GEOMETRIES = [(mode, name) for mode in ("streaming", "window", "dense", "recompute") for name in sorted(GEOMETRIES)
                   if not (mode == "dense" and name == "narrow")]


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("mode, geometry_name", MODE_GEOMETRIES)
def test_matches_reference(fixtures, tokens, family, mode, geometry_name):
    n_sink, window = GEOMETRIES[geometry_name]
    model, reference = fixtures(family)
    stream = tokens[:24] if mode == "recompute" else tokens
    expected = reference_logits(reference, stream, mode, n_sink, window)
    got = feed(model.session(**geometry(mode, n_sink, window), kv_type="f32"), stream, 7)
    err = np.abs(got - expected).max()
    print(f"{family} {mode} {geometry_name}: max |engine - reference| = {err:.2e}")
    assert err < 1e-3 * max(1.0, np.abs(expected).max())
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() > 0.95


@pytest.mark.parametrize("family", ["gemma3", "gemma2", "mistral", "gptoss"])
def test_local_window_really_matters(fixtures, tokens, family):
    """The reference with every layer global differs from the per-layer one past the local window:
    the comparison above could fail if the engine ignored the sliding windows."""
    _, reference = fixtures(family)
    per_layer = reference.logits(tokens[:20], mode="dense")
    saved = list(reference.layer_windows)
    try:
        reference.layer_windows = [0] * reference.n_layer
        all_global = reference.logits(tokens[:20], mode="dense")
    finally:
        reference.layer_windows = saved
    window = max(saved)
    assert np.allclose(per_layer[:window], all_global[:window], atol=1e-9)
    assert np.abs(per_layer[window:] - all_global[window:]).max() > 1e-2


# Invariant 1: chunked prefill equals token by token -------------------------------------------------
@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("mode", ["streaming", "window", "dense", "recompute"])
def test_chunked_equals_one_by_one(fixtures, tokens, family, mode):
    model, _ = fixtures(family)
    g = geometry(mode, *GEOMETRIES["wide"])
    one_by_one = feed(model.session(**g, kv_type="f32", batch_size=4), tokens, 1)
    for chunk, batch_size in ((3, 4), (N, 4), (N, 256), (9, 3)):
        chunked = feed(model.session(**g, kv_type="f32", batch_size=batch_size), tokens, chunk)
        np.testing.assert_allclose(chunked, one_by_one, rtol=0, atol=2e-4,
                                   err_msg=f"{family} {mode} chunk {chunk} batch {batch_size}")


# Invariant 2: bounded memory; sliding-window layers keep only their own window ------------------
def expected_kv_bytes(model, n_sink, window, batch_size, evicts, element_bytes=2):
    global_ring = window + (batch_size - 1 if evicts else 0)
    total = 0
    for layer in model.layers:
        w = layer["sliding_window"]
        ring = global_ring if w == 0 else min(global_ring, w + batch_size - 1)
        total += 2 * model._core.n_head_kv * (n_sink + ring) * model._core.head_dim * element_bytes
    return total


@pytest.mark.parametrize("family", ALL)
def test_bounded_memory(fixtures, family):
    model, _ = fixtures(family)
    n_sink, window, batch = 2, 30, 4
    session = model.session(mode="streaming", n_sink=n_sink, window=window, batch_size=batch)
    assert session.kv_bytes == expected_kv_bytes(model, n_sink, window, batch, evicts=True)
    rng = np.random.default_rng(0)
    session.eval(rng.integers(0, 256, size=2 * (n_sink + window)).tolist(), logits=None)
    session.eval([1], logits="last")
    kv_bytes, heap_before = session.kv_bytes, _core.heap_bytes_in_use()
    for _ in range(150):
        session.eval(rng.integers(0, 256, size=int(rng.integers(1, 9))).tolist(), logits=None)
        session.eval([5], logits="last")
    assert session.kv_bytes == kv_bytes
    if heap_before >= 0:
        grew = _core.heap_bytes_in_use() - heap_before
        assert grew < 48 * 1024, f"heap grew by {grew} bytes"


def test_local_layers_store_less(fixtures):
    """Gemma 3's local layers hold min(w, window) + chunk slack entries, not the capacity."""
    model, _ = fixtures("gemma3")
    local = [layer["sliding_window"] for layer in model.layers if layer["sliding_window"]]
    assert local and len(local) < len(model.layers)
    session = model.session(mode="streaming", n_sink=4, window=200, batch_size=8)
    all_global = 2 * len(model.layers) * model._core.n_head_kv * (4 + 200 + 7) * model._core.head_dim * 2
    assert session.kv_bytes == expected_kv_bytes(model, 4, 200, 8, evicts=True) < all_global / 3


# Invariant 3: constant work per token, counted where attention reads -----------------------------
@pytest.mark.parametrize("family", ALL)
def test_constant_work_per_token(fixtures, family):
    model, reference = fixtures(family)
    n_sink, window = GEOMETRIES["wide"]
    session = model.session(mode="streaming", n_sink=n_sink, window=window)
    session.eval(list(range(3 * (n_sink + window))), logits=None)
    n_head = model._core.n_head
    rotating_layers = sum(layer["rope"] is not None for layer in model.layers)
    for step in range(20):
        t = session.n_past
        read = sum(len(layer_attention_set(t, "streaming", n_sink, window, w)) for w in reference.layer_windows)
        rotated, attended = session._core.keys_rotated, session._core.entries_attended
        session.eval([step % 256], logits="last")
        assert session._core.keys_rotated - rotated == rotating_layers
        assert session._core.entries_attended - attended == n_head * read


# Invariant 4: no drift at huge stream positions ---------------------------------------------------
@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("mode", ["streaming", "dense"])
def test_no_drift_at_huge_positions(fixtures, tokens, family, mode):
    model, _ = fixtures(family)
    g = geometry(mode, *GEOMETRIES["wide"])
    at_zero = model.session(**g, kv_type="f32").eval(tokens, logits="all")
    for offset in (2**40 + 12345, 2**52 + 1):
        got = feed(model.session(**g, kv_type="f32", position_offset=offset), tokens, 5)
        np.testing.assert_allclose(got, at_zero, rtol=0, atol=5e-4, err_msg=f"{family} offset {offset}")


# Saved state: each layer's own rows --------------------------------------------------------------
@pytest.mark.parametrize("family", ["gemma3", "gemma2", "phi3", "llama", "mpt", "phi2", "falcon-40b"])
@pytest.mark.parametrize("mode", ["streaming", "dense", "recompute"])
@pytest.mark.parametrize("split", [3, 9, 29])
def test_save_load_continues_exactly(fixtures, tokens, family, mode, split):
    model, _ = fixtures(family)
    g = geometry(mode, *GEOMETRIES["wide"])
    whole = model.session(**g, kv_type="f32").eval(tokens, logits="all")
    first = model.session(**g, kv_type="f32", batch_size=4)
    first.eval(tokens[:split], logits=None)
    resumed = model.session(**g, kv_type="f32", batch_size=16)  # another ring layout on purpose
    resumed.load(first.save())
    np.testing.assert_allclose(resumed.eval(tokens[split:], logits="all"), whole[split:], rtol=0, atol=2e-4)


def test_unsupported_architecture_names_what_is_missing(tmp_path):
    import gguf

    path = tmp_path / "hybrid.gguf"
    w = gguf.GGUFWriter(str(path), "lfm2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(sinkstream.ModelError, match="'lfm2' is not supported: it is a hybrid.*supported: llama"):
        sinkstream.Model(path)


def test_mixture_of_experts_is_refused_by_name(tmp_path):
    """expert_count on a family without experts (only gpt-oss runs them) is refused by name."""
    import gguf

    path = write_family_model(tmp_path / "moe.gguf", "llama")
    rewrite_gguf(path, tmp_path / "moe2.gguf", keys={"llama.expert_count": (8, gguf.GGUFValueType.UINT32)})
    with pytest.raises(sinkstream.ModelError, match="mixture of experts.*expert_count = 8"):
        sinkstream.Model(tmp_path / "moe2.gguf")


# The paper's experiment runs on every family ------------------------------------------------------
def log_softmax_nll(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(targets)), targets]


@pytest.mark.parametrize("family", ALL)
def test_perplexity_in_every_mode(fixtures, tokens, family):
    """sinkstream.perplexity's four modes on each family equal the NLL of the reference's logits."""
    model, reference = fixtures(family)
    n_sink, window = GEOMETRIES["wide"]
    for mode in ("streaming", "window", "dense", "recompute"):
        stream = tokens[:24] if mode == "recompute" else tokens
        g = geometry(mode, n_sink, window)
        nll = sinkstream.perplexity(model, stream, mode=mode, n_sink=g.get("n_sink"), window=g["window"],
                                    kv_type="f32", chunk=5)
        expected = log_softmax_nll(reference_logits(reference, stream, mode, n_sink, window)[:-1], stream[1:])
        assert nll.shape == (len(stream) - 1,) and np.isfinite(nll).all(), (family, mode)
        np.testing.assert_allclose(nll, expected, rtol=2e-5, atol=2e-4, err_msg=f"{family} {mode}")


# ALiBi under streaming: distances within the cache -------------------------------------------------
@pytest.mark.parametrize("family", ["mpt", "bloom"])
def test_alibi_uses_distances_within_the_cache(fixtures, tokens, family):
    """Five caches' worth past the cache, the engine equals the reference that biases each member of
    A(t) by -slope * (p(t) - p(j)), its distance within the cache; a reference that used distances in
    the text (t - j, a bias that jumps once the sinks are far behind) is far from both."""
    model, reference = fixtures(family)
    n_sink, window = GEOMETRIES["wide"]
    got = model.session(mode="streaming", n_sink=n_sink, window=window, kv_type="f32").eval(tokens, logits="all")
    expected = reference.logits(tokens, mode="streaming", n_sink=n_sink, window=window)
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    # The same members, biased by their distance in the text instead.
    slopes = reference.alibi_slopes
    assert len(slopes) == model._core.n_head and len(set(np.round(slopes, 9))) == len(slopes)
    text_distance = text_distance_alibi_logits(reference, tokens, n_sink, window)
    assert np.abs(text_distance[n_sink + window + 4:] - expected[n_sink + window + 4:]).max() > 1e-2
    assert np.allclose(text_distance[:n_sink + window], expected[:n_sink + window], atol=1e-9)


def text_distance_alibi_logits(reference, tokens, n_sink, window):
    """The reference with each sink biased by its distance in the text, t - s, instead of within the
    cache, p(t) - s (window members are t - j behind either way): what a cache that kept absolute
    positions for ALiBi would compute. The reference calls alibi_bias once per query, t = 0, 1, ...
    in every layer, so a counter tells t."""
    import reference_forward

    original = reference_forward.alibi_bias
    calls = [0]

    def text_distance(slopes, key_positions, query_position):
        t = calls[0] % len(tokens)
        calls[0] += 1
        positions = np.asarray(key_positions, dtype=np.float64)
        absolute = np.where(positions < n_sink, positions - (t - query_position), positions)
        return original(slopes, absolute, query_position)

    reference_forward.alibi_bias = text_distance
    try:
        return reference.logits(tokens, mode="streaming", n_sink=n_sink, window=window)
    finally:
        reference_forward.alibi_bias = original
