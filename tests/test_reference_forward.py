"""Self-checks of the NumPy reference forward (reference_forward.py) and of the tiny family fixtures
(tiny_models.write_family_model). Pure NumPy + gguf; no engine needed."""
from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from reference_forward import ReferenceModel, attention_set, layer_attention_set  # noqa: E402
from reference_llama import ReferenceLlama  # noqa: E402
from tiny_models import FAMILIES, FAMILY_FEATURES, family_config, write_family_model  # noqa: E402

N_VOCAB = 256 + 3 + 2
TOKENS = np.random.default_rng(0).integers(0, 256, size=16).tolist()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models(family, **overrides) -> ReferenceModel of a freshly written (cached) fixture."""
    root = tmp_path_factory.mktemp("families")
    cache = {}

    def make(family, **kw):
        key = (family, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in cache:
            path = write_family_model(root / f"m{len(cache)}.gguf", family, **kw)
            cache[key] = path
        return ReferenceModel(str(cache[key]))
    return make


def close(a, b, tol=1e-9):
    return np.abs(a - b).max() <= tol * max(1.0, np.abs(a).max())


# ------------------------------------------------------------------------------------- fixtures

def test_family_tables():
    assert set(FAMILIES) == set(FAMILY_FEATURES)
    assert len(FAMILIES) == len(set(FAMILIES))
    assert all(FAMILY_FEATURES[f] for f in FAMILIES)
    with pytest.raises(TypeError):
        family_config("llama", no_such_setting=1)
    with pytest.raises(ValueError):
        family_config("gpt7")


# What llama.cpp expects of each family, written out independently of tiny_models' defaults:
# dims, which per-layer tensors exist, and metadata (key -> value, None = must be absent).
ARCH = {"llama": "llama", "llama3": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
        "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3", "smollm3": "smollm3", "granite": "granite"}
DIMS = {  # n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff
    "llama": (2, 64, 4, 2, 16, 96), "llama3": (2, 64, 4, 2, 16, 96), "mistral": (2, 64, 4, 2, 16, 96),
    "qwen2": (2, 64, 4, 2, 16, 96), "qwen3": (2, 64, 4, 2, 24, 96), "gemma2": (3, 64, 4, 2, 32, 128),
    "gemma3": (6, 64, 4, 2, 32, 128), "phi3": (2, 64, 4, 2, 16, 96), "smollm3": (4, 64, 4, 2, 16, 96),
    "granite": (2, 64, 4, 2, 16, 96),
}
KEYS = {
    "llama": {"llama.rope.dimension_count": 16, "llama.attention.sliding_window": None},
    "llama3": {"llama.attention.sliding_window": None},
    "mistral": {"llama.attention.sliding_window": 5},
    "qwen2": {"qwen2.attention.sliding_window": None},
    "qwen3": {"qwen3.attention.key_length": 24, "qwen3.attention.value_length": 24},
    "gemma2": {"gemma2.attention.sliding_window": 5, "gemma2.attn_logit_softcapping": 5.0,
               "gemma2.final_logit_softcapping": 3.0, "gemma2.attention.key_length": 32},
    "gemma3": {"gemma3.attention.sliding_window": 5, "gemma3.rope.freq_base": 1e6,
               "gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": 8.0,
               "gemma3.attention.key_length": 32, "gemma3.attn_logit_softcapping": None,
               "gemma3.final_logit_softcapping": None},
    "phi3": {"phi3.attention.sliding_window": 5, "phi3.rope.dimension_count": 12, "phi3.context_length": 128,
             "phi3.rope.scaling.original_context_length": 32,
             "phi3.rope.scaling.attn_factor": float(np.sqrt(1 + np.log(4) / np.log(32))),
             "phi3.rope.scaling.type": None},
    "smollm3": {"smollm3.rope.dimension_count": 16},
    "granite": {"granite.embedding_scale": 2.0, "granite.residual_scale": 0.5,
                "granite.attention.scale": 0.2, "granite.logit_scale": 4.0},
}


def expected_tensors(family):
    n_layer, n_embd, n_head, n_head_kv, hd, n_ff = DIMS[family]
    q, kv = n_head * hd, n_head_kv * hd
    t = {"token_embd.weight": (N_VOCAB, n_embd), "output_norm.weight": (n_embd,)}
    if family in ("qwen2", "phi3"):
        t["output.weight"] = (N_VOCAB, n_embd)
    if family == "llama3":
        t["rope_freqs.weight"] = (8,)
    if family == "phi3":
        t["rope_factors_long.weight"] = t["rope_factors_short.weight"] = (6,)
    for l in range(n_layer):
        p = f"blk.{l}."
        t[p + "attn_norm.weight"] = t[p + "ffn_norm.weight"] = (n_embd,)
        if family == "phi3":
            t[p + "attn_qkv.weight"] = (q + 2 * kv, n_embd)
            t[p + "ffn_up.weight"] = (2 * n_ff, n_embd)
        else:
            t[p + "attn_q.weight"], t[p + "attn_k.weight"], t[p + "attn_v.weight"] = (q, n_embd), (kv, n_embd), (kv, n_embd)
            t[p + "ffn_gate.weight"] = t[p + "ffn_up.weight"] = (n_ff, n_embd)
        t[p + "attn_output.weight"] = (n_embd, q)
        t[p + "ffn_down.weight"] = (n_embd, n_ff)
        if family == "qwen2":
            t[p + "attn_q.bias"], t[p + "attn_k.bias"], t[p + "attn_v.bias"] = (q,), (kv,), (kv,)
        if family in ("qwen3", "gemma3"):
            t[p + "attn_q_norm.weight"] = t[p + "attn_k_norm.weight"] = (hd,)
        if family in ("gemma2", "gemma3"):
            t[p + "post_attention_norm.weight"] = t[p + "post_ffw_norm.weight"] = (n_embd,)
    return t


def field_value(field):
    value = field.contents()
    return value


@pytest.mark.parametrize("family", FAMILIES)
def test_fixture_reads_back(family, tmp_path):
    path = write_family_model(tmp_path / f"{family}.gguf", family, seed=3)
    r = gguf.GGUFReader(str(path))
    arch = ARCH[family]
    assert field_value(r.fields["general.architecture"]) == arch
    n_layer, n_embd, n_head, n_head_kv, hd, n_ff = DIMS[family]
    want = {f"{arch}.block_count": n_layer, f"{arch}.embedding_length": n_embd,
            f"{arch}.attention.head_count": n_head, f"{arch}.attention.head_count_kv": n_head_kv,
            f"{arch}.feed_forward_length": n_ff, **KEYS[family]}
    for key, value in want.items():
        if value is None:
            assert key not in r.fields, key
        elif isinstance(value, float):
            assert field_value(r.fields[key]) == pytest.approx(value, rel=1e-6), key
        else:
            assert field_value(r.fields[key]) == value, key
    assert len(field_value(r.fields["tokenizer.ggml.tokens"])) == N_VOCAB
    got = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in r.tensors}
    want_tensors = expected_tensors(family)
    assert set(got) == set(want_tensors)
    for name, shape in want_tensors.items():
        assert got[name] == shape, name
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)


def test_fixtures_are_deterministic_and_quantizable(tmp_path):
    a = write_family_model(tmp_path / "a.gguf", "gemma3", seed=5)
    b = write_family_model(tmp_path / "b.gguf", "gemma3", seed=5)
    c = write_family_model(tmp_path / "c.gguf", "gemma3", seed=6)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    q = write_family_model(tmp_path / "q.gguf", "phi3", weight_type="Q8_0")
    r = gguf.GGUFReader(str(q))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_qkv.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["rope_factors_long.weight"] == "F32"


# ------------------------------------------------------------------------------ reference basics

@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs_and_depends_on_order(family, models):
    """Finite logits of the right shape, and the fixtures are position-sensitive: swapping two
    recent tokens changes the last logits (the fixtures are not bags of words)."""
    ref = models(family)
    logits = ref.logits(TOKENS)
    assert logits.shape == (len(TOKENS), N_VOCAB) and np.isfinite(logits).all()
    swapped = list(TOKENS)
    swapped[-2], swapped[-3] = swapped[-3], swapped[-2]
    assert np.abs(ref.logits(swapped)[-1] - logits[-1]).max() > 1e-2
    half = ref.logits(TOKENS, kv_half=True)
    assert np.abs(half - logits).max() < 0.05 * np.abs(logits).max()


def test_quantized_family_uses_8bit_input_rounding(models):
    ref = models("qwen3", weight_type="Q8_0")
    assert "blk.0.attn_q.weight" in ref.quantized_input and "blk.0.attn_q_norm.weight" not in ref.quantized_input
    exact = models("qwen3")
    got, want = ref.logits(TOKENS[:8]), exact.logits(TOKENS[:8])
    assert 0 < np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_reference_llama_shim_is_the_new_class():
    assert ReferenceLlama is ReferenceModel


def test_layer_patterns(models):
    assert models("llama").layer_windows == [0, 0]
    assert models("mistral").layer_windows == [5, 5]
    assert models("phi3").layer_windows == [5, 5]
    assert models("gemma2").layer_windows == [5, 0, 5]
    g3 = models("gemma3", n_layer=13)
    assert g3.layer_windows == [5] * 5 + [0] + [5] * 5 + [0] + [5]
    assert g3.layer_rope_base == [1e4] * 5 + [1e6] + [1e4] * 5 + [1e6] + [1e4]
    assert g3.layer_rope_linear == [1.0] * 5 + [8.0] + [1.0] * 5 + [8.0] + [1.0]
    assert models("gemma3", sliding_window_pattern=3, freq_base_swa=500.0).layer_windows == [5, 5, 0, 5, 5, 0]
    assert models("gemma3", sliding_window_pattern=3, freq_base_swa=500.0).layer_rope_base[:3] == [500.0, 500.0, 1e6]
    assert models("gemma3", sliding_window=None).layer_windows == [0] * 6      # no key: all global
    assert models("smollm3", n_layer=8).layer_uses_rope == [True, True, True, False] * 2
    assert models("llama").layer_uses_rope == [True, True]
    assert models("phi3").neox and models("qwen3").neox and models("gemma2").neox
    assert not models("llama").neox and not models("smollm3").neox and not models("granite").neox


def test_layer_attention_sets():
    # streaming S=2, W=6 at t=10: A = [0, 1, 5..10], ranks 0..7; a layer with w=3 keeps 8, 9, 10
    assert attention_set(10, "streaming", 2, 6) == [0, 1, 5, 6, 7, 8, 9, 10]
    assert layer_attention_set(10, "streaming", 2, 6, 3) == [(8, 5), (9, 6), (10, 7)]
    assert layer_attention_set(10, "streaming", 2, 6, 0) == list(zip([0, 1, 5, 6, 7, 8, 9, 10], range(8)))
    # a window at least as long as the sequence so far is a global layer
    for t in range(12):
        for mode in ("dense", "streaming", "window"):
            assert layer_attention_set(t, mode, 2, 6, t + 1) == layer_attention_set(t, mode, 2, 6, 0)
    # sinks drop out of a local layer once they are w behind
    assert [j for j, _ in layer_attention_set(4, "streaming", 2, 6, 3)] == [2, 3, 4]


# ------------------------------------------------------------------------------ sliding windows

def test_window_wider_than_sequence_is_global(models):
    llama = models("llama", seed=3).logits(TOKENS)
    wide = models("mistral", seed=3, sliding_window=len(TOKENS)).logits(TOKENS)
    assert close(wide, llama, 1e-12)
    narrow = models("mistral", seed=3, sliding_window=5).logits(TOKENS)
    assert close(narrow[:5], llama[:5], 1e-12)           # rows whose history fits the window
    assert np.abs(narrow[5:] - llama[5:]).max(axis=1).min() > 1e-3
    g2 = models("gemma2")
    local = g2.logits(TOKENS)
    g2.layer_windows = [len(TOKENS)] * g2.n_layer
    wide = g2.logits(TOKENS)
    g2.layer_windows = [0] * g2.n_layer
    assert close(g2.logits(TOKENS), wide, 1e-12) and not close(local, wide, 1e-3)


def test_local_layers_see_the_same_in_every_mode(models):
    """A layer with w <= W sees the same tokens at the same distances in streaming and window
    mode (sinks drop out of it): an all-local model gives identical logits, a global one doesn't."""
    tokens = TOKENS + TOKENS[:6]
    mistral = models("mistral", seed=2)
    assert close(mistral.logits(tokens, mode="streaming", n_sink=2, window=6),
                 mistral.logits(tokens, mode="window", window=6))
    llama = models("llama", seed=2)
    assert not close(llama.logits(tokens, mode="streaming", n_sink=2, window=6),
                     llama.logits(tokens, mode="window", window=6), 1e-3)


def test_gemma3_local_layers_ignore_old_tokens(models):
    ref = models("gemma3", sliding_window=3)          # layers 0-4 local (w=3), layer 5 global
    assert ref.layer_windows == [3, 3, 3, 3, 3, 0]
    perturbed = list(TOKENS)
    perturbed[0] = (perturbed[0] + 1) % 256
    n = len(TOKENS)
    a_layers, b_layers = [], []
    a, b = ref.logits(TOKENS, layers_out=a_layers), ref.logits(perturbed, layers_out=b_layers)
    # token 0 reaches at most 2 positions further per local layer: after 5 of them, up to t = 10
    for l in range(1, 6):
        reach = 2 * l
        assert np.array_equal(a_layers[l][reach + 1:], b_layers[l][reach + 1:]), l
        assert np.abs(a_layers[l][reach] - b_layers[l][reach]).max() > 0, l
    # ... so the last token's change comes only through the global layer
    assert np.abs(a_layers[6][-1] - b_layers[6][-1]).max() > 1e-3
    assert np.abs(a[-1] - b[-1]).max() > 1e-3
    # every layer local: the last logits ignore token 0 (6 layers * 2 < 15)
    ref.layer_windows = [3] * 6
    assert np.array_equal(ref.logits(TOKENS)[n - 1], ref.logits(perturbed)[n - 1])


# ------------------------------------------------------------------------------ soft-capping

def test_softcap(models):
    huge = models("gemma2", attn_softcap=1e9, final_softcap=1e9)
    capped_huge = huge.logits(TOKENS)
    huge.attn_softcap = huge.final_softcap = None
    assert close(capped_huge, huge.logits(TOKENS), 1e-9)
    g2 = models("gemma2")
    assert (g2.attn_softcap, g2.final_softcap) == (5.0, 3.0)
    capped = g2.logits(TOKENS)
    assert np.abs(capped).max() <= 3.0
    g2.final_softcap = None
    only_attn = g2.logits(TOKENS)
    assert np.abs(only_attn).max() > 4.0
    g2.attn_softcap = None
    assert np.abs(only_attn - g2.logits(TOKENS)).max() > 0.5      # the attention cap matters too
    # llama.cpp's defaults when the keys are absent
    default = models("gemma2", attn_softcap=None, final_softcap=None)
    assert (default.attn_softcap, default.final_softcap) == (50.0, 30.0)


# ------------------------------------------------------------------------------ fused tensors

@pytest.mark.parametrize("weight_type", ["F32", "Q8_0"])
def test_phi3_fused_equals_split(models, weight_type):
    fused = models("phi3", seed=4, weight_type=weight_type)
    split = models("phi3", seed=4, weight_type=weight_type, fused=False)
    assert "blk.0.attn_qkv.weight" in fused.w and "blk.0.ffn_gate.weight" not in fused.w
    assert "blk.0.attn_q.weight" in split.w and "blk.0.ffn_gate.weight" in split.w
    assert close(fused.logits(TOKENS), split.logits(TOKENS), 1e-12)


# ------------------------------------------------------------------------------ RoPE variants

def test_nope_layer_ignores_positions(models):
    ref = models("smollm3", n_layer=1)
    assert ref.layer_uses_rope == [True]
    shuffled = TOKENS[:-1][::-1] + TOKENS[-1:]
    ref.layer_uses_rope = [False]   # one NoPE layer: the last token sees a set, not a sequence
    assert close(ref.logits(TOKENS)[-1], ref.logits(shuffled)[-1], 1e-12)
    ref.layer_uses_rope = [True]
    assert not close(ref.logits(TOKENS)[-1], ref.logits(shuffled)[-1], 1e-3)
    # apart from its NoPE layers, smollm3 is llama (adjacent-pair RoPE)
    smol, llama = models("smollm3", seed=5), models("llama", seed=5, n_layer=4)
    assert not close(smol.logits(TOKENS), llama.logits(TOKENS), 1e-3)
    smol.layer_uses_rope = [True] * 4
    assert close(smol.logits(TOKENS), llama.logits(TOKENS), 1e-12)


def test_rope_layouts_and_partial_rotary(models):
    phi = models("phi3")                  # NeoX, 12 of 16 dims rotate, LongRoPE attn_factor
    x = np.random.default_rng(1).standard_normal((2, 16))
    y = phi.rope(x, 7, 0, capacity=8)
    assert np.array_equal(y[:, 12:], x[:, 12:])
    assert np.allclose(np.linalg.norm(y[:, :12], axis=1), phi.rope_attn_factor * np.linalg.norm(x[:, :12], axis=1))
    e = np.zeros((1, 16))
    e[0, 2] = 1.0                         # NeoX pair (2, 2 + 6)
    assert set(np.flatnonzero(np.abs(phi.rope(e, 3, 0, 8)) > 1e-12)) == {2, 8}
    llama = models("llama")               # adjacent pairs (2i, 2i+1)
    e = np.zeros((1, 16))
    e[0, 4] = 1.0
    assert set(np.flatnonzero(np.abs(llama.rope(e, 3)) > 1e-12)) == {4, 5}
    assert np.array_equal(llama.rope(e, 0), e)


def test_longrope_factor_choice(models):
    phi = models("phi3")
    assert phi.longrope and phi.original_context_length == 32
    assert np.array_equal(phi.rope_factors(0, 32), phi.rope_factors_short)
    assert np.array_equal(phi.rope_factors(0, 33), phi.rope_factors_long)
    assert not np.allclose(phi.rope_factors_short, phi.rope_factors_long)
    phi.layer_windows = [0, 0]            # let positions up to 15 reach the last token
    short, long_ = phi.logits(TOKENS, capacity=32), phi.logits(TOKENS, capacity=33)
    assert not close(short, long_, 1e-4)
    assert close(long_, phi.logits(TOKENS, capacity=4096), 0)
    assert close(short, phi.logits(TOKENS), 0)           # default capacity: the sequence length (16)
    assert close(long_, phi.logits(TOKENS, mode="streaming", n_sink=4, window=30), 0)   # 4 + 30 > 32
    # neutral LongRoPE (short factors 1, attn_factor 1) is plain partial NeoX RoPE
    neutral = models("phi3", seed=2, rope_factors_short=[1.0] * 6, attn_factor=1.0)
    plain = models("phi3", seed=2, longrope=False)
    assert not plain.longrope
    assert close(neutral.logits(TOKENS, capacity=16), plain.logits(TOKENS), 1e-12)
    assert not close(models("phi3", seed=2).logits(TOKENS, capacity=16), plain.logits(TOKENS), 1e-4)


def test_llama3_rope_freqs(models):
    ref = models("llama3", seed=7)
    divisors = ref.freq_factors
    assert divisors.shape == (8,) and divisors[0] == 1.0 and divisors[-1] == 8.0
    assert np.all(np.diff(divisors) >= 0)
    assert np.any((divisors > 1.01) & (divisors < 7.99))
    assert np.array_equal(ref.rope_factors(0), divisors)
    llama = models("llama", seed=7)
    assert not close(ref.logits(TOKENS), llama.logits(TOKENS), 1e-4)
    assert close(models("llama3", seed=7, llama3_factor=1.0).logits(TOKENS), llama.logits(TOKENS), 1e-12)


def test_gemma3_local_and_global_rope(models):
    g3 = models("gemma3")
    x = np.random.default_rng(2).standard_normal((1, 32))
    inv_local = 1e4 ** (-2.0 * np.arange(16) / 32)
    inv_global = 1e6 ** (-2.0 * np.arange(16) / 32) / 8.0
    for layer, inv in ((0, inv_local), (5, inv_global)):
        c, s = np.cos(9 * inv), np.sin(9 * inv)
        want = np.concatenate([x[:, :16] * c - x[:, 16:] * s, x[:, :16] * s + x[:, 16:] * c], axis=1)
        assert np.allclose(g3.rope(x, 9, layer), want, atol=1e-12)


# ------------------------------------------------------------------------------ norms and scales

def test_qk_norm_makes_q_and_k_scale_free(models):
    ref = models("qwen3")
    base = ref.logits(TOKENS)
    ref.w["blk.0.attn_q.weight"] = ref.w["blk.0.attn_q.weight"] * 7.0
    ref.w["blk.1.attn_k.weight"] = ref.w["blk.1.attn_k.weight"] * 0.2
    assert close(ref.logits(TOKENS), base, 1e-5)
    for l in range(ref.n_layer):     # without the norms the same scaling matters
        del ref.w[f"blk.{l}.attn_q_norm.weight"], ref.w[f"blk.{l}.attn_k_norm.weight"]
    scaled = ref.logits(TOKENS)
    ref.w["blk.0.attn_q.weight"] = ref.w["blk.0.attn_q.weight"] / 7.0
    ref.w["blk.1.attn_k.weight"] = ref.w["blk.1.attn_k.weight"] / 0.2
    assert not close(scaled, ref.logits(TOKENS), 1e-3)


def test_granite_multipliers(models):
    granite = models("granite", seed=8)
    assert (granite.embd_scale, granite.residual_scale, granite.logit_scale) == (2.0, 0.5, 4.0)
    assert granite.attn_scale == pytest.approx(0.2)   # stored as float32
    unscaled = models("granite", seed=8, logit_scale=1.0)
    assert close(granite.logits(TOKENS) * 4.0, unscaled.logits(TOKENS), 1e-12)   # logits / logit_scale
    neutral = models("granite", seed=8, embedding_scale=1.0, residual_scale=1.0, attention_scale=0.25, logit_scale=1.0)
    llama = models("llama", seed=8)
    assert close(neutral.logits(TOKENS), llama.logits(TOKENS), 1e-12)
    assert not close(unscaled.logits(TOKENS), llama.logits(TOKENS), 1e-3)


def test_gemma_embedding_scale_and_post_norms(models):
    g2 = models("gemma2")
    assert g2.embd_scale == pytest.approx(8.0)
    out = []
    g2.logits(TOKENS[:3], layers_out=out)
    assert np.allclose(out[0], g2.w["token_embd.weight"][TOKENS[:3]] * 8.0)
    # post-norms: scaling a layer's attn_output / ffn_down weights changes nothing (RMS-normed after)
    base = g2.logits(TOKENS)
    g2.w["blk.1.attn_output.weight"] = g2.w["blk.1.attn_output.weight"] * 5.0
    g2.w["blk.2.ffn_down.weight"] = g2.w["blk.2.ffn_down.weight"] * 0.3
    assert close(g2.logits(TOKENS), base, 1e-5)


def test_default_capacity(models):
    ref = models("llama")
    assert ref.default_capacity(20, "dense", 4, 1 << 30) == 20
    assert ref.default_capacity(20, "streaming", 4, 16) == 20
    assert ref.default_capacity(20, "window", 4, 16) == 16
    assert ref.default_capacity(20, "dense", 4, 64) == 64
