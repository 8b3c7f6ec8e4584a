"""Self-checks of the NumPy reference forward (reference_forward.py) and of the tiny family fixtures
(tiny_models.write_family_model). Pure NumPy + gguf; no engine needed."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from reference_forward import (ReferenceModel, alibi_bias, alibi_slopes, attention_set, gelu_erf,  # noqa: E402
                               gelu_tanh, layer_attention_set)
from reference_llama import ReferenceLlama  # noqa: E402
from tiny_models import (FAMILIES, FAMILY_FEATURES, PAPER_FAMILIES, family_config,  # noqa: E402
                         hf_fused_qkv_rows, write_family_model)

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
    assert set(FAMILIES) | set(PAPER_FAMILIES) == set(FAMILY_FEATURES)
    assert not set(FAMILIES) & set(PAPER_FAMILIES)     # the engine does not run the paper's families yet
    assert len(FAMILIES) == len(set(FAMILIES)) and len(PAPER_FAMILIES) == len(set(PAPER_FAMILIES))
    assert all(FAMILY_FEATURES[f] for f in FAMILY_FEATURES)
    with pytest.raises(TypeError):
        family_config("llama", no_such_setting=1)
    with pytest.raises(ValueError):
        family_config("gpt7")


# What llama.cpp expects of each family, written out independently of tiny_models' defaults:
# dims, which per-layer tensors exist, and metadata (key -> value, None = must be absent).
ARCH = {"llama": "llama", "llama3": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
        "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3", "smollm3": "smollm3", "granite": "granite",
        "gptoss": "gpt-oss"}
DIMS = {  # n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff
    "llama": (2, 64, 4, 2, 16, 96), "llama3": (2, 64, 4, 2, 16, 96), "mistral": (2, 64, 4, 2, 16, 96),
    "qwen2": (2, 64, 4, 2, 16, 96), "qwen3": (2, 64, 4, 2, 24, 96), "gemma2": (3, 64, 4, 2, 32, 128),
    "gemma3": (6, 64, 4, 2, 32, 128), "phi3": (2, 64, 4, 2, 16, 96), "smollm3": (4, 64, 4, 2, 16, 96),
    "granite": (2, 64, 4, 2, 16, 96), "gptoss": (2, 64, 4, 2, 16, 32),
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
    "gptoss": {"gpt-oss.expert_count": 4, "gpt-oss.expert_used_count": 2,
               "gpt-oss.expert_feed_forward_length": 32, "gpt-oss.attention.sliding_window": 5,
               "gpt-oss.rope.scaling.type": "yarn", "gpt-oss.rope.scaling.factor": 4.0,
               "gpt-oss.rope.scaling.original_context_length": 64, "gpt-oss.context_length": 256},
    "granite": {"granite.embedding_scale": 2.0, "granite.residual_scale": 0.5,
                "granite.attention.scale": 0.2, "granite.logit_scale": 4.0},
}


def expected_tensors(family):
    n_layer, n_embd, n_head, n_head_kv, hd, n_ff = DIMS[family]
    q, kv = n_head * hd, n_head_kv * hd
    t = {"token_embd.weight": (N_VOCAB, n_embd), "output_norm.weight": (n_embd,)}
    if family in ("qwen2", "phi3", "gptoss"):
        t["output.weight"] = (N_VOCAB, n_embd)
    if family == "gptoss":   # llama.cpp's gpt-oss tensors (gguf-py MODEL_TENSORS[GPT_OSS])
        for l in range(n_layer):
            p = f"blk.{l}."
            t[p + "attn_norm.weight"] = t[p + "post_attention_norm.weight"] = (n_embd,)
            t[p + "attn_q.weight"], t[p + "attn_k.weight"], t[p + "attn_v.weight"] = (q, n_embd), (kv, n_embd), (kv, n_embd)
            t[p + "attn_q.bias"], t[p + "attn_k.bias"], t[p + "attn_v.bias"] = (q,), (kv,), (kv,)
            t[p + "attn_output.weight"], t[p + "attn_output.bias"] = (n_embd, q), (n_embd,)
            t[p + "attn_sinks.weight"] = (n_head,)
            t[p + "ffn_gate_inp.weight"], t[p + "ffn_gate_inp.bias"] = (4, n_embd), (4,)
            t[p + "ffn_gate_exps.weight"] = t[p + "ffn_up_exps.weight"] = (4, n_ff, n_embd)
            t[p + "ffn_gate_exps.bias"] = t[p + "ffn_up_exps.bias"] = (4, n_ff)
            t[p + "ffn_down_exps.weight"], t[p + "ffn_down_exps.bias"] = (4, n_embd, n_ff), (4, n_embd)
        return t
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
    assert_metadata(r, want)
    assert len(field_value(r.fields["tokenizer.ggml.tokens"])) == N_VOCAB
    mxfp4 = {n for n in expected_tensors(family) if n.endswith("_exps.weight")}   # gpt-oss's experts
    assert_f32_tensors(r, expected_tensors(family), other_types={n: "MXFP4" for n in mxfp4})


def assert_metadata(reader, want):
    """Each key holds its value (floats to float32 precision); a key wanted as None is absent."""
    for key, value in want.items():
        if value is None:
            assert key not in reader.fields, key
        elif isinstance(value, float):
            assert field_value(reader.fields[key]) == pytest.approx(value, rel=1e-6), key
        else:
            assert field_value(reader.fields[key]) == value, key


def assert_f32_tensors(reader, want_tensors, other_types=None):
    """The file holds exactly these tensors, of these numpy-order shapes, all float32 but those
    other_types names (name -> type name)."""
    got = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    assert set(got) == set(want_tensors)
    for name, shape in want_tensors.items():
        assert got[name] == shape, name
    types = other_types or {}
    assert all(t.tensor_type.name == types.get(t.name, "F32") for t in reader.tensors)


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


def assert_runs_and_depends_on_order(ref):
    """Finite logits of the right shape; swapping two recent tokens changes the last logits; the
    half-precision cache stays close."""
    logits = ref.logits(TOKENS)
    assert logits.shape == (len(TOKENS), N_VOCAB) and np.isfinite(logits).all()
    swapped = list(TOKENS)
    swapped[-2], swapped[-3] = swapped[-3], swapped[-2]
    assert np.abs(ref.logits(swapped)[-1] - logits[-1]).max() > 1e-2
    half = ref.logits(TOKENS, kv_half=True)
    assert np.abs(half - logits).max() < 0.05 * np.abs(logits).max()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs_and_depends_on_order(family, models):
    """Finite logits of the right shape, and the fixtures are position-sensitive: swapping two
    recent tokens changes the last logits (the fixtures are not bags of words)."""
    ref = models(family)
    assert_runs_and_depends_on_order(ref)


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


# ------------------------------------------------------------------------------ the paper's families
# GPT-NeoX (Pythia), Falcon, MPT, Bloom, StableLM, Phi-2 (issue 13). The engine does not run them yet:
# these check the fixtures against llama.cpp's conventions and the reference against the published
# definitions.

# case -> (family, overrides)
PAPER_CASES = {
    "gptneox": ("gptneox", {}),
    "gptneox_sequential": ("gptneox", dict(parallel_residual=False)),
    "falcon": ("falcon", {}),
    "falcon40b": ("falcon", dict(falcon_new_decoder=True)),
    "mpt": ("mpt", {}),
    "mpt_clamp": ("mpt", dict(clamp_kqv=3.0)),
    "bloom": ("bloom", {}),
    "stablelm": ("stablelm", {}),
    "stablelm_bias": ("stablelm", dict(biases=True)),
    "stablelm2_12b": ("stablelm", dict(qk_norm=True, parallel_residual=True)),
    "phi2": ("phi2", {}),
    "phi2_fused": ("phi2", dict(fused=True)),
}
PAPER_DIMS = {  # n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff
    "gptneox": (2, 64, 4, 4, 16, 128), "falcon": (2, 64, 4, 1, 16, 128), "falcon40b": (2, 64, 4, 2, 16, 128),
    "mpt": (2, 48, 6, 6, 8, 192), "bloom": (2, 48, 6, 6, 8, 192), "stablelm": (2, 64, 4, 2, 16, 96),
    "phi2": (2, 64, 4, 4, 16, 128),
}
PAPER_KEYS = {  # key -> value (None: must be absent), as llama.cpp's converter writes them
    "gptneox": {"gptneox.rope.dimension_count": 4, "gptneox.use_parallel_residual": True,
                "gptneox.attention.head_count_kv": None, "gptneox.rope.freq_base": None},
    "gptneox_sequential": {"gptneox.use_parallel_residual": False},
    "falcon": {"falcon.attention.head_count_kv": 1, "falcon.rope.dimension_count": None,
               "falcon.tensor_data_layout": "jploski"},
    "falcon40b": {"falcon.attention.head_count_kv": 2},
    "mpt": {"mpt.attention.max_alibi_bias": 8.0, "mpt.attention.clamp_kqv": None,
            "mpt.attention.head_count_kv": None, "mpt.rope.dimension_count": None},
    "mpt_clamp": {"mpt.attention.clamp_kqv": 3.0, "mpt.attention.max_alibi_bias": 8.0},
    "bloom": {"bloom.attention.head_count_kv": 6, "bloom.attention.max_alibi_bias": None,
              "bloom.rope.dimension_count": None},
    "stablelm": {"stablelm.rope.dimension_count": 4, "stablelm.attention.head_count_kv": 2,
                 "stablelm.use_parallel_residual": False},
    "stablelm_bias": {"stablelm.use_parallel_residual": False},
    "stablelm2_12b": {"stablelm.use_parallel_residual": True},
    "phi2": {"phi2.rope.dimension_count": 8, "phi2.attention.head_count_kv": 4},
    "phi2_fused": {"phi2.rope.dimension_count": 8},
}


def paper_dims(case):
    return PAPER_DIMS.get(case, PAPER_DIMS[PAPER_CASES[case][0]])


def expected_paper_tensors(case):
    """llama.cpp's load_arch_tensors of each architecture, written out (required and present optional ones)."""
    family, _ = PAPER_CASES[case]
    n_layer, e, nh, nkv, hd, ff = paper_dims(case)
    q, kv = nh * hd, nkv * hd
    with_bias = family in ("gptneox", "bloom", "phi2")          # every linear layer has a bias
    t = {"token_embd.weight": (N_VOCAB, e), "output_norm.weight": (e,)}
    if family != "mpt":
        t["output_norm.bias"] = (e,)
    if family in ("gptneox", "stablelm", "phi2"):
        t["output.weight"] = (N_VOCAB, e)
    if family == "phi2":
        t["output.bias"] = (N_VOCAB,)
    if family == "bloom":
        t["token_embd_norm.weight"] = t["token_embd_norm.bias"] = (e,)
    for l in range(n_layer):
        p = f"blk.{l}."
        t[p + "attn_norm.weight"] = (e,)
        if family != "mpt":
            t[p + "attn_norm.bias"] = (e,)
        if case == "falcon40b":
            t[p + "attn_norm_2.weight"] = t[p + "attn_norm_2.bias"] = (e,)
        if family in ("gptneox", "falcon", "mpt", "bloom") or case == "phi2_fused":
            t[p + "attn_qkv.weight"] = (q + 2 * kv, e)
            if with_bias:
                t[p + "attn_qkv.bias"] = (q + 2 * kv,)
        else:
            t[p + "attn_q.weight"], t[p + "attn_k.weight"], t[p + "attn_v.weight"] = (q, e), (kv, e), (kv, e)
            if with_bias or case == "stablelm_bias":
                t[p + "attn_q.bias"], t[p + "attn_k.bias"], t[p + "attn_v.bias"] = (q,), (kv,), (kv,)
        t[p + "attn_output.weight"] = (e, q)
        if case == "stablelm2_12b":
            t[p + "attn_q_norm.weight"], t[p + "attn_k_norm.weight"] = (nh, hd), (nkv, hd)
        if family in ("gptneox", "bloom", "mpt") or (family == "stablelm" and case != "stablelm2_12b"):
            t[p + "ffn_norm.weight"] = (e,)
            if family != "mpt":
                t[p + "ffn_norm.bias"] = (e,)
        if family == "stablelm":
            t[p + "ffn_gate.weight"] = (ff, e)
        t[p + "ffn_up.weight"], t[p + "ffn_down.weight"] = (ff, e), (e, ff)
        if with_bias:
            t[p + "attn_output.bias"], t[p + "ffn_up.bias"], t[p + "ffn_down.bias"] = (e,), (ff,), (e,)
    return t


@pytest.mark.parametrize("case", PAPER_CASES)
def test_paper_fixture_reads_back(case, tmp_path):
    family, overrides = PAPER_CASES[case]
    path = write_family_model(tmp_path / f"{case}.gguf", family, seed=3, **overrides)
    r = gguf.GGUFReader(str(path))
    arch = family
    assert field_value(r.fields["general.architecture"]) == arch
    n_layer, n_embd, n_head, _, _, n_ff = paper_dims(case)
    want = {f"{arch}.block_count": n_layer, f"{arch}.embedding_length": n_embd,
            f"{arch}.attention.head_count": n_head, f"{arch}.feed_forward_length": n_ff,
            f"{arch}.attention.layer_norm_epsilon": 1e-5, f"{arch}.attention.layer_norm_rms_epsilon": None,
            **PAPER_KEYS.get(family, {}), **PAPER_KEYS[case]}
    assert_metadata(r, want)
    assert_f32_tensors(r, expected_paper_tensors(case))


def test_paper_fixture_refusals_and_quantization(tmp_path):
    with pytest.raises(ValueError):
        write_family_model(tmp_path / "a.gguf", "falcon", biases=True)     # Falcon has no linear biases
    with pytest.raises(ValueError):
        write_family_model(tmp_path / "b.gguf", "bloom", max_alibi_bias=4.0)   # fixed at 8 by llama.cpp
    with pytest.raises(ValueError):
        write_family_model(tmp_path / "c.gguf", "gptneox", clamp_kqv=1.0)
    assert family_config("falcon", falcon_new_decoder=True)["n_head_kv"] == 2
    assert family_config("falcon", falcon_new_decoder=True, n_head_kv=4)["n_head_kv"] == 4
    assert family_config("gptneox", n_embd=128)["rope_dim"] == 8          # 25% of a 32-wide head
    # 6 heads and 32-element quant blocks meet at n_embd 96
    q = write_family_model(tmp_path / "q.gguf", "bloom", weight_type="Q8_0", n_embd=96)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(q)).tensors}
    assert types["blk.0.attn_qkv.weight"] == "Q8_0" and types["blk.0.attn_qkv.bias"] == "F32"
    assert types["token_embd_norm.weight"] == "F32"


@pytest.mark.parametrize("case", PAPER_CASES)
def test_paper_families_run_and_depend_on_order(case, models):
    family, overrides = PAPER_CASES[case]
    ref = models(family, **overrides)
    assert_runs_and_depends_on_order(ref)


def test_paper_reference_reads_the_files(models):
    neox = models("gptneox")
    assert neox.neox and neox.n_rot == 4 and neox.head_dim == 16 and neox.n_head_kv == 4
    assert neox.layer_norm and neox.parallel_residual == [True, True] and neox.gelu_kind == "erf"
    assert models("gptneox", parallel_residual=False).parallel_residual == [False, False]
    falcon = models("falcon")
    assert falcon.neox and falcon.n_rot == 16 and falcon.n_head_kv == 1 and falcon.parallel_residual == [True] * 2
    assert models("falcon", falcon_new_decoder=True).n_head_kv == 2
    mpt = models("mpt")
    assert mpt.layer_uses_rope == [False, False] and mpt.alibi_max_bias == 8.0 and mpt.clamp_kqv == 0.0
    assert mpt.parallel_residual == [False, False] and mpt.gelu_kind == "erf"
    assert models("mpt", clamp_kqv=3.0).clamp_kqv == 3.0
    bloom = models("bloom")
    assert bloom.layer_uses_rope == [False, False] and bloom.alibi_max_bias == 8.0 and bloom.gelu_kind == "tanh"
    x = np.random.default_rng(0).standard_normal((6, 8))
    assert np.array_equal(bloom.rope(x, 9), x)
    stablelm = models("stablelm")
    assert stablelm.n_rot == 4 and stablelm.n_head_kv == 2 and stablelm.gelu_kind is None
    assert stablelm.parallel_residual == [False, False]
    assert models("stablelm", qk_norm=True, parallel_residual=True).parallel_residual == [True, True]
    phi2 = models("phi2")
    assert phi2.n_rot == 8 and phi2.parallel_residual == [True, True] and phi2.gelu_kind == "tanh"
    for ref in (neox, falcon, mpt, bloom, stablelm, phi2):
        assert ref.layer_windows == [0, 0] and ref.eps == pytest.approx(1e-5)
        assert ref.alibi_slopes is None or ref.arch in ("mpt", "bloom")
    assert models("mpt", eps=1e-3).eps == pytest.approx(1e-3)     # attention.layer_norm_epsilon


# ---------------------------------------------------------------------------------------- ALiBi

def bloom_slopes(n_head):
    """HF transformers' build_alibi_tensor (Bloom), transcribed."""
    closest = 2 ** math.floor(math.log2(n_head))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** p for p in range(1, 1 + closest)]
    if closest != n_head:
        extra_base = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        n_remaining = min(closest, n_head - closest)
        slopes += [extra_base ** p for p in range(1, 1 + 2 * n_remaining, 2)]
    return np.array(slopes)


def mpt_slopes(n_head, alibi_bias_max=8.0):
    """MPT's gen_slopes (and HF's build_mpt_alibi_tensor), transcribed."""
    n = 2 ** math.ceil(math.log2(n_head))
    m = np.arange(1, n + 1, dtype=np.float64) * (alibi_bias_max / n)
    slopes = 1.0 / np.power(2.0, m)
    if n != n_head:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:n_head]
    return slopes


def ggml_slopes(n_head, max_bias):
    """ggml's soft_max with max_bias (ggml_compute_forward_soft_max_f32), transcribed."""
    n_head_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_head_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_head_log2)
    return np.array([m0 ** (h + 1) if h < n_head_log2 else m1 ** (2 * (h - n_head_log2) + 1) for h in range(n_head)])


def test_alibi_slopes():
    assert np.array_equal(alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    assert np.array_equal(alibi_slopes(6), 2.0 ** -np.array([2, 4, 6, 8, 1, 3]))
    assert np.array_equal(alibi_slopes(1), [2.0 ** -8])
    for n_head in range(1, 41):
        assert np.allclose(alibi_slopes(n_head), bloom_slopes(n_head), rtol=1e-12, atol=0), n_head
        for max_bias in (8.0, 4.0, 12.5):
            assert np.allclose(alibi_slopes(n_head, max_bias), mpt_slopes(n_head, max_bias), rtol=1e-12, atol=0)
            assert np.allclose(alibi_slopes(n_head, max_bias), ggml_slopes(n_head, max_bias), rtol=1e-12, atol=0)
    assert not np.allclose(alibi_slopes(6), 2.0 ** -np.arange(1, 7) * 8 / 6)   # not a naive 6-head formula


def test_alibi_from_the_files(models):
    assert np.array_equal(models("mpt").alibi_slopes, alibi_slopes(6, 8.0))
    assert np.array_equal(models("mpt", max_alibi_bias=4.0).alibi_slopes, alibi_slopes(6, 4.0))
    assert np.array_equal(models("bloom").alibi_slopes, alibi_slopes(6, 8.0))
    assert models("mpt", max_alibi_bias=0.0).alibi_slopes is None      # llama.cpp: 0 turns ALiBi off
    assert models("mpt", max_alibi_bias=None).alibi_slopes is None     # and so does a missing key


def test_alibi_is_the_only_position_signal(models):
    """MPT without ALiBi (no RoPE either) sees a bag of words in one layer; with ALiBi it sees order."""
    shuffled = TOKENS[:-1][::-1] + TOKENS[-1:]
    flat = models("mpt", n_layer=1, max_alibi_bias=None)
    assert close(flat.logits(TOKENS)[-1], flat.logits(shuffled)[-1], 1e-12)
    alibi = models("mpt", n_layer=1)
    assert not close(alibi.logits(TOKENS)[-1], alibi.logits(shuffled)[-1], 1e-3)


def layer_norm(x, w, b=0.0, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def hf_alibi_forward(ref, tokens, style):
    """Dense logits of a Bloom / MPT file, written the way transformers' BloomForCausalLM /
    MptForCausalLM compute them: Bloom adds slope_h * j (the key's position) to the scores, MPT
    slope_h * (j - (n - 1)); both then mask the future and softmax. The fused rows are [Q; K; V]
    (llama.cpp's layout), so q, k, v are read from them directly."""
    erf = np.vectorize(math.erf)
    gelu = {"bloom": lambda x: x * 0.5 * (1.0 + np.tanh(0.79788456 * x * (1 + 0.044715 * x * x))),
            "mpt": lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))}[style]
    w = ref.w
    n, hn, hd = len(tokens), ref.n_head, ref.head_dim
    slopes = mpt_slopes(hn, ref.alibi_max_bias) if style == "mpt" else bloom_slopes(hn)
    j = np.arange(n, dtype=np.float64)
    alibi = slopes[:, None, None] * (j[None, None, :] - (n - 1 if style == "mpt" else 0))
    causal = np.where(j[None, :] > j[:, None], -np.inf, 0.0)
    x = w["token_embd.weight"][tokens]
    if style == "bloom":
        x = layer_norm(x, w["token_embd_norm.weight"], w["token_embd_norm.bias"])
    for l in range(ref.n_layer):
        p = f"blk.{l}."
        h = layer_norm(x, w[p + "attn_norm.weight"], w.get(p + "attn_norm.bias", 0.0))
        qkv = h @ w[p + "attn_qkv.weight"].T + w.get(p + "attn_qkv.bias", 0.0)
        if ref.clamp_kqv:
            qkv = np.clip(qkv, -ref.clamp_kqv, ref.clamp_kqv)
        q, k, v = (a.reshape(n, hn, hd).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=1))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + alibi + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, hn * hd)
        x = x + ctx @ w[p + "attn_output.weight"].T + w.get(p + "attn_output.bias", 0.0)
        h = layer_norm(x, w[p + "ffn_norm.weight"], w.get(p + "ffn_norm.bias", 0.0))
        up = h @ w[p + "ffn_up.weight"].T + w.get(p + "ffn_up.bias", 0.0)
        x = x + gelu(up) @ w[p + "ffn_down.weight"].T + w.get(p + "ffn_down.bias", 0.0)
    h = layer_norm(x, w["output_norm.weight"], w.get("output_norm.bias", 0.0))
    return h @ w["token_embd.weight"].T


@pytest.mark.parametrize("family,overrides", [("bloom", {}), ("mpt", {}), ("mpt", dict(clamp_kqv=1.5)),
                                              ("mpt", dict(max_alibi_bias=3.0))])
def test_alibi_dense_equals_the_published_formula(family, overrides, models):
    """Dense, the cache-distance bias -slope * (t - j) equals HF's slope * j (Bloom) and
    slope * (j - n + 1) (MPT): they differ by a per-row constant, which softmax ignores."""
    ref = models(family, **overrides)
    tokens = TOKENS + TOKENS[:4]
    want = hf_alibi_forward(ref, tokens, family)
    assert close(ref.logits(tokens), want, 1e-7)     # Bloom's GELU constant 0.79788456 is sqrt(2/pi) to 1e-9
    ref.alibi_slopes = ref.alibi_slopes * 1.5        # the bias matters: other slopes, other logits
    assert not close(ref.logits(tokens), want, 1e-3)


def test_alibi_bias_values():
    slopes = np.array([0.5, 0.25])
    bias = alibi_bias(slopes, [0, 1, 2, 3, 4, 5, 6], 6)
    assert np.array_equal(bias[0], [-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0])
    assert np.array_equal(bias[1], bias[0] / 2)
    # streaming.md's example, S = 4, W = 3: token 100 attends to 0 1 2 3 98 99 100 at positions 0..6;
    # the sink 0 is 6 positions away from the query, not 100
    pairs = layer_attention_set(100, "streaming", 4, 3)
    assert [j for j, _ in pairs] == [0, 1, 2, 3, 98, 99, 100]
    bias = alibi_bias(slopes, [pos for _, pos in pairs], len(pairs) - 1)
    assert bias[0, 0] == -0.5 * 6 and bias[0, 4] == -0.5 * 2


@pytest.mark.parametrize("family", ["mpt", "bloom", "gptneox", "phi2", "stablelm"])
def test_one_layer_stream_equals_dense_over_the_cache(family, models):
    """With one layer a token's K and V depend on the token alone, so streaming token t equals dense
    attention over the tokens of A(t) laid out contiguously: the ALiBi (and RoPE) distances are the
    distances within the cache, which do not jump when the window slides past the sinks."""
    ref = models(family, n_layer=1, seed=6)
    tokens = TOKENS + TOKENS[::-1] + TOKENS[:8]          # 40 tokens, capacity 2 + 5 = 7
    stream = ref.logits(tokens, mode="streaming", n_sink=2, window=5)
    for t in (3, 8, 20, len(tokens) - 1):
        members = attention_set(t, "streaming", 2, 5)
        dense = ref.logits([tokens[j] for j in members])[-1]
        assert close(stream[t], dense, 1e-10), t
    # the sinks matter (a stream without them differs), so the check above is not vacuous
    window = ref.logits(tokens, mode="window", window=7)
    assert not close(stream[-1], window[-1], 1e-3)


def test_alibi_window_mode_is_position_shift_free(models):
    """Window mode with ALiBi: token t sees its last W tokens at distances 0..W-1 whatever t is, so
    two streams with the same last W tokens give the same last logits in one layer."""
    ref = models("bloom", n_layer=1)
    a = TOKENS + TOKENS[:6]
    b = TOKENS[::-1][:12] + TOKENS[:6]
    la, lb = ref.logits(a, mode="window", window=6), ref.logits(b, mode="window", window=6)
    assert close(la[-1], lb[-1], 1e-12)
    assert not close(ref.logits(a)[-1], ref.logits(b)[-1], 1e-3)


# ------------------------------------------------------------------------------ fused QKV, layouts

@pytest.mark.parametrize("family,overrides,fused_default", [
    ("gptneox", {}, True), ("falcon", {}, True), ("falcon", dict(falcon_new_decoder=True), True),
    ("mpt", dict(clamp_kqv=1.0), True), ("bloom", {}, True),
    ("phi2", {}, False), ("stablelm", dict(biases=True), False),
])
def test_paper_fused_equals_split(family, overrides, fused_default, models):
    fused = models(family, seed=4, fused=True, **overrides)
    split = models(family, seed=4, fused=False, **overrides)
    assert "blk.0.attn_qkv.weight" in fused.w and "blk.0.attn_q.weight" not in fused.w
    assert "blk.0.attn_q.weight" in split.w and "blk.0.attn_qkv.weight" not in split.w
    assert family_config(family, **overrides)["fused"] == fused_default
    assert close(fused.logits(TOKENS), split.logits(TOKENS), 1e-12)


@pytest.mark.parametrize("family,overrides", [("gptneox", {}), ("bloom", {}), ("falcon", {}),
                                              ("falcon", dict(falcon_new_decoder=True)),
                                              ("falcon", dict(falcon_new_decoder=True, n_head_kv=1))])
def test_converter_regrouping_of_checkpoint_qkv(family, overrides, models):
    """The checkpoints' own fused layouts, rebuilt from a fixture's [Q; K; V] rows with the inverse of
    llama.cpp's regrouping and split the way transformers splits them, give the fixture's q, k, v."""
    ref = models(family, **overrides)
    n_head, n_kv, hd = ref.n_head, ref.n_head_kv, ref.head_dim
    rows = hf_fused_qkv_rows(family, n_head, n_kv, hd)
    assert sorted(rows) == list(range(n_head * hd + 2 * n_kv * hd))
    w_hf = ref.w["blk.0.attn_qkv.weight"][rows]
    b_hf = ref.w.get("blk.0.attn_qkv.bias", np.zeros(len(rows)))
    b_hf = b_hf[rows] if np.ndim(b_hf) else b_hf
    h = np.random.default_rng(1).standard_normal((3, ref.n_embd))
    fused = h @ w_hf.T + b_hf
    if family in ("gptneox", "bloom"):      # view(n, n_head, 3 * head_dim) / view(n, n_head, 3, head_dim)
        per_head = fused.reshape(3, n_head, 3, hd)
        q, k, v = per_head[:, :, 0], per_head[:, :, 1], per_head[:, :, 2]
    else:                                   # Falcon: view(n, n_kv, n_head / n_kv + 2, head_dim)
        grouped = fused.reshape(3, n_kv, n_head // n_kv + 2, hd)
        q = grouped[:, :, :-2].reshape(3, n_head, hd)
        k, v = grouped[:, :, -2], grouped[:, :, -1]
    rq, rk, rv = ref.qkv(0, h)
    assert close(q, rq, 1e-12) and close(k, rk, 1e-12) and close(v, rv, 1e-12)
    if family != "falcon" or n_kv > 1:      # the regrouping is not the identity
        assert not np.array_equal(rows, np.arange(len(rows)))


# ------------------------------------------------------------------------------ residuals and norms

def layer_output(ref, tokens, scale):
    """The first layer's output with the attention branch's output projection scaled by `scale`."""
    saved = {k: ref.w[k].copy() for k in ("blk.0.attn_output.weight", "blk.0.attn_output.bias") if k in ref.w}
    for k in saved:
        ref.w[k] = saved[k] * scale
    out = []
    ref.logits(tokens, layers_out=out)
    ref.w.update(saved)
    return out[1]


@pytest.mark.parametrize("family,overrides,parallel", [
    ("gptneox", {}, True), ("gptneox", dict(parallel_residual=False), False), ("falcon", {}, True),
    ("falcon", dict(falcon_new_decoder=True), True), ("phi2", {}, True), ("bloom", {}, False), ("mpt", {}, False),
    ("stablelm", {}, False), ("stablelm", dict(parallel_residual=True), True),
])
def test_parallel_residual_is_linear_in_the_attention_branch(family, overrides, parallel, models):
    """Parallel: x + attn(ln_a(x)) + mlp(ln_m(x)), so the layer output is affine in the attention
    branch's scale; sequential: the MLP reads x + attn(...), so it is not."""
    ref = models(family, **overrides)
    tokens = TOKENS[:10]
    o0, o1, o2 = (layer_output(ref, tokens, s) for s in (0.0, 1.0, 2.0))
    second_difference = np.abs(o2 - 2 * o1 + o0).max()
    assert (second_difference < 1e-9 * np.abs(o1).max()) == parallel, second_difference
    assert np.abs(o1 - o0).max() > 1e-2


def test_parallel_and_sequential_differ(models):
    par, seq = models("gptneox", seed=2), models("gptneox", seed=2, parallel_residual=False)
    for name in par.w:   # same seed, same draws: the files differ only in the key
        assert np.array_equal(par.w[name], seq.w[name])
    assert not close(par.logits(TOKENS), seq.logits(TOKENS), 1e-3)


def test_falcon_norms_feed_their_branches(models):
    """Falcon 40B: attention reads attn_norm_2 (ln_attn), the MLP attn_norm (ln_mlp); 7B: attn_norm
    feeds both."""
    ref = models("falcon", n_layer=1, falcon_new_decoder=True)
    base = ref.logits(TOKENS)
    bump = np.random.default_rng(3).standard_normal(ref.n_embd) * 0.3
    for name, feeds_attention in (("blk.0.attn_norm_2", True), ("blk.0.attn_norm", False)):
        saved_w, saved_o = ref.w[name + ".weight"].copy(), ref.w["blk.0.attn_output.weight"].copy()
        ref.w[name + ".weight"] = saved_w + bump
        changed = not close(ref.logits(TOKENS), base, 1e-6)
        ref.w["blk.0.attn_output.weight"] = saved_o * 0.0       # attention silenced
        silenced = ref.logits(TOKENS)
        ref.w[name + ".weight"] = saved_w
        silenced_base = ref.logits(TOKENS)
        ref.w["blk.0.attn_output.weight"] = saved_o
        assert changed
        assert close(silenced, silenced_base, 1e-12) == feeds_attention, name
    # 40B with attn_norm_2 equal to attn_norm is the 7B layout
    for suffix in (".weight", ".bias"):
        ref.w["blk.0.attn_norm_2" + suffix] = ref.w["blk.0.attn_norm" + suffix].copy()
    shared = ref.logits(TOKENS)
    for suffix in (".weight", ".bias"):
        del ref.w["blk.0.attn_norm_2" + suffix]
    assert close(ref.logits(TOKENS), shared, 1e-12) and not close(shared, base, 1e-3)


def test_layer_norm(models):
    ref = models("gptneox")
    x = np.random.default_rng(4).standard_normal((5, 64)) * 3 + 2
    y = ref.layer_norm_(x, np.ones(64))
    assert np.allclose(y.mean(-1), 0, atol=1e-12) and np.allclose(y.var(-1), 1, atol=1e-5)
    w, b = ref.w["blk.0.attn_norm.weight"], ref.w["blk.0.attn_norm.bias"]
    assert np.allclose(ref.norm(x, "blk.0.attn_norm"), layer_norm(x, w, b), atol=1e-12)
    mpt = models("mpt")                                    # no bias in the file: none added
    assert "blk.0.attn_norm.bias" not in mpt.w
    x = x[:, :48]
    assert np.allclose(mpt.norm(x, "blk.0.attn_norm"), layer_norm(x, mpt.w["blk.0.attn_norm.weight"]), atol=1e-12)


def test_bloom_embedding_norm(models):
    ref = models("bloom")
    out = []
    base = ref.logits(TOKENS, layers_out=out)
    e = ref.w["token_embd.weight"][TOKENS]
    assert np.allclose(out[0], layer_norm(e, ref.w["token_embd_norm.weight"], ref.w["token_embd_norm.bias"]), atol=1e-12)
    del ref.w["token_embd_norm.weight"], ref.w["token_embd_norm.bias"]
    assert not close(ref.logits(TOKENS), base, 1e-3)


def test_phi2_output_bias(models):
    ref = models("phi2")
    with_bias = ref.logits(TOKENS)
    bias = ref.w.pop("output.bias")
    assert np.abs(bias).max() > 0.1
    assert np.allclose(with_bias - ref.logits(TOKENS), bias[None, :], atol=1e-12)


def test_gelu_kinds(models):
    assert gelu_erf(np.array([1.0]))[0] == pytest.approx(0.8413447460685429, abs=1e-15)   # Phi(1)
    assert gelu_tanh(np.array([1.0]))[0] == pytest.approx(0.8411919906082768, abs=1e-15)
    assert {f: models(f).gelu_kind for f in PAPER_FAMILIES} == {
        "gptneox": "erf", "falcon": "erf", "mpt": "erf", "bloom": "tanh", "stablelm": None, "phi2": "tanh"}
    for family in ("gptneox", "bloom"):
        ref = models(family)
        base = ref.logits(TOKENS)
        ref.gelu_kind = "tanh" if ref.gelu_kind == "erf" else "erf"
        diff = np.abs(ref.logits(TOKENS) - base).max()
        assert 1e-7 < diff < 0.1, (family, diff)      # the approximation is close, not equal


def test_stablelm_qk_norm(models):
    """StableLM 2 12B's per-head LayerNorms of q and k (before RoPE) make q and k scale-free; the
    norms are per head (one weight row per head)."""
    ref = models("stablelm", qk_norm=True, parallel_residual=True)
    assert ref.w["blk.0.attn_q_norm.weight"].shape == (4, 16) and ref.w["blk.0.attn_k_norm.weight"].shape == (2, 16)
    assert "blk.0.ffn_norm.weight" not in ref.w
    base = ref.logits(TOKENS)
    ref.w["blk.0.attn_q.weight"] = ref.w["blk.0.attn_q.weight"] * 7.0
    ref.w["blk.1.attn_k.weight"] = ref.w["blk.1.attn_k.weight"] * 0.2
    assert close(ref.logits(TOKENS), base, 1e-5)
    for l in range(ref.n_layer):
        del ref.w[f"blk.{l}.attn_q_norm.weight"], ref.w[f"blk.{l}.attn_k_norm.weight"]
    assert not close(ref.logits(TOKENS), base, 1e-3)
    ref = models("stablelm", qk_norm=True, parallel_residual=True)
    ref.w["blk.0.attn_q_norm.weight"] = ref.w["blk.0.attn_q_norm.weight"].copy()
    ref.w["blk.0.attn_q_norm.weight"][1] *= 3.0          # one head's weights: another result
    assert not close(ref.logits(TOKENS), base, 1e-3)


def test_clamp_kqv(models):
    ref = models("mpt", clamp_kqv=0.5)
    h = np.random.default_rng(5).standard_normal((4, ref.n_embd))
    q, k, v = ref.qkv(0, h)
    for a in (q, k, v):
        assert np.abs(a).max() == 0.5
    none, huge = models("mpt", seed=9), models("mpt", seed=9, clamp_kqv=1e6)
    assert close(none.logits(TOKENS), huge.logits(TOKENS), 1e-12)
    assert not close(none.logits(TOKENS), models("mpt", seed=9, clamp_kqv=0.5).logits(TOKENS), 1e-3)


def test_partial_rotary_neox(models):
    ref = models("gptneox")            # 4 of 16 dims rotate, NeoX pairs (i, i + 2)
    x = np.random.default_rng(6).standard_normal((4, 16))
    y = ref.rope(x, 5)
    assert np.array_equal(y[:, 4:], x[:, 4:]) and not np.allclose(y[:, :4], x[:, :4])
    e = np.zeros((1, 16))
    e[0, 1] = 1.0
    assert set(np.flatnonzero(np.abs(ref.rope(e, 3)) > 1e-12)) == {1, 3}
    phi2 = models("phi2")              # 8 of 16, pairs (i, i + 4)
    e = np.zeros((1, 16))
    e[0, 2] = 1.0
    assert set(np.flatnonzero(np.abs(phi2.rope(e, 3)) > 1e-12)) == {2, 6}
    assert np.array_equal(phi2.rope(x, 5)[:, 8:], x[:, 8:])


@pytest.mark.parametrize("family,overrides,mlp_norm", [
    ("gptneox", {}, "ffn_norm"), ("falcon", {}, "attn_norm"), ("falcon", dict(falcon_new_decoder=True), "attn_norm"),
    ("phi2", {}, "attn_norm"), ("stablelm", dict(parallel_residual=True), "attn_norm"),
])
def test_parallel_mlp_reads_its_own_norm(family, overrides, mlp_norm, models):
    """With the attention branch silenced, a parallel layer is x + mlp(ln_m(x)): GPT-NeoX's ln_m is
    ffn_norm (post_attention_layernorm applied to x, not to x + attn), Falcon's attn_norm (40B:
    ln_mlp), Phi-2's and StableLM 2 12B's the one attn_norm."""
    ref = models(family, n_layer=1, **overrides)
    for name in ("blk.0.attn_output.weight", "blk.0.attn_output.bias"):
        if name in ref.w:
            ref.w[name] = ref.w[name] * 0.0
    out = []
    ref.logits(TOKENS, layers_out=out)
    w, x = ref.w, out[0]
    h = layer_norm(x, w[f"blk.0.{mlp_norm}.weight"], w[f"blk.0.{mlp_norm}.bias"])
    up = h @ w["blk.0.ffn_up.weight"].T + w.get("blk.0.ffn_up.bias", 0.0)
    if family == "stablelm":
        gate = h @ w["blk.0.ffn_gate.weight"].T
        act = gate / (1.0 + np.exp(-gate)) * up
    else:
        act = gelu_erf(up) if ref.gelu_kind == "erf" else gelu_tanh(up)
    mlp = act @ w["blk.0.ffn_down.weight"].T + w.get("blk.0.ffn_down.bias", 0.0)
    assert close(out[1], x + mlp, 1e-12)
