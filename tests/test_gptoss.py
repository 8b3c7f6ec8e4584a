"""gpt-oss beyond the invariants every family passes (test_family_streaming runs those on the gpt-oss
fixture too): each of its features really matters in the comparisons, the experts' memory, the
attention paths with learned sinks deep in a stream, and bad files refused with a named ModelError.

The fixture (tests/tiny_models.py _write_gptoss) has MXFP4 experts; tests/reference_forward.py
rounds the experts' inputs to 8-bit blocks as the engine does. transformers' own forward is the
second reference (tests/test_transformers_refs.py, exported/gptoss: transformers' GGUF loader does
not load llama.cpp's gpt-oss layout, so the model is built in GptOssForCausalLM and exported).
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

import sinkstream
from reference_forward import ReferenceModel
from tiny_models import rewrite_gguf, write_family_model

TOKENS = np.random.default_rng(5).integers(0, 256, size=24).tolist()


@pytest.fixture(scope="module")
def fixture_path(tmp_path_factory):
    return write_family_model(tmp_path_factory.mktemp("gptoss") / "gptoss.gguf", "gptoss", seed=11)


def engine_logits(path, tokens, **session):
    model = sinkstream.Model(str(path), n_threads=2)
    options = dict(mode="dense", window=64, kv_type="f32")
    options.update(session)
    return np.asarray(model.session(**options).eval(tokens, logits="all"))


def test_configuration(fixture_path):
    model = sinkstream.Model(str(fixture_path), n_threads=1)
    assert [layer["sliding_window"] for layer in model.layers] == [5, 0]   # layer 0 slides, layer 1 is full
    for layer in model.layers:
        assert layer["learned_sinks"] and layer["experts"] == (2, 4) and layer["activation"] == "swiglu_oai"
        assert layer["rope"]["layout"] == "neox" and layer["rope"]["yarn_factor"] == 4.0
        assert layer["rope"]["attention_factor"] == pytest.approx(0.1 * np.log(4.0) + 1.0)
    assert "gpt-oss" in sinkstream.supported_architectures()


@pytest.mark.parametrize("feature", ["sinks", "yarn", "experts", "clamp"])
def test_each_feature_moves_the_logits(fixture_path, feature):
    """The NumPy reference without one of gpt-oss's features misses the engine by far: the fixture
    comparisons (test_family_streaming, exported/gptoss) would catch an engine that ignored it."""
    ref = ReferenceModel(str(fixture_path))
    engine = engine_logits(fixture_path, TOKENS)
    assert np.abs(ref.logits(TOKENS) - engine).max() < 1e-3 * np.abs(engine).max()
    if feature == "sinks":
        for l in range(ref.n_layer):
            del ref.w[f"blk.{l}.attn_sinks.weight"]
    elif feature == "yarn":
        ref.yarn_factor = 0.0
    elif feature == "experts":
        ref.n_expert_used = 1
    else:
        ref.experts = _unclamped_experts(ref)
    assert np.abs(ref.logits(TOKENS) - engine).max() > 1e-2


@pytest.mark.parametrize("mode, options", [("streaming", dict(n_sink=2, window=6)), ("window", dict(window=8))])
def test_half_precision_cache_with_learned_sinks(tmp_path, mode, options):
    """The default f16 cache: keys, values, queries and attention weights in half precision, the sink
    logits' column included in the float32 softmax; against the reference's kv_half. Float32
    experts: with MXFP4 ones a half-precision flip can move an 8-bit activation step or a router
    choice (seen: 2.7% of the largest logit), which says nothing about the cache. A float32 engine
    and a float64 reference both rounding to half differ by up to ~0.7% here, as on other
    families (qwen2 0.6%)."""
    path = write_family_model(tmp_path / "f32_experts.gguf", "gptoss", seed=11, expert_type="F32")
    ref = ReferenceModel(str(path))
    want = ref.logits(TOKENS, mode=mode, kv_half=True, **options)
    got = engine_logits(path, TOKENS, mode=mode, kv_type="f16", **options)
    assert np.abs(got - want).max() < 2e-2 * np.abs(want).max()
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() > 0.9


def _unclamped_experts(ref):
    original = ref.experts
    scale = 40.0   # gate and up well past the clamp of 7

    def experts(layer, h):
        return original(layer, h * scale)
    return experts


def test_unchosen_experts_are_never_read(tmp_path):
    """An expert the router never picks (bias -1e9) holds NaN weights: only the chosen experts'
    blocks are read (mmap'ed, no copy at load), so the logits stay finite and equal the reference's
    with that expert gone."""
    path = write_family_model(tmp_path / "a.gguf", "gptoss", seed=3, expert_type="F32")
    reader = gguf.GGUFReader(str(path))
    arrays = {t.name: np.asarray(t.data).copy() for t in reader.tensors}
    replaced = {}
    for l in range(2):
        p = f"blk.{l}."
        bias = arrays[p + "ffn_gate_inp.bias"]
        bias[3] = -1e9
        replaced[p + "ffn_gate_inp.bias"] = bias
        for name in ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"):
            w = arrays[p + name]
            w[3] = np.nan
            replaced[p + name] = w
    poisoned = rewrite_gguf(path, tmp_path / "poisoned.gguf", tensors=replaced)
    got = engine_logits(poisoned, TOKENS)
    assert np.isfinite(got).all()
    ref = ReferenceModel(str(poisoned))
    assert np.abs(ref.logits(TOKENS) - got).max() < 1e-3 * np.abs(got).max()


@pytest.mark.filterwarnings("ignore:n_sink \\+ window = .* exceeds the training context")
def test_deep_decode_with_sinks_equals_chunked(fixture_path):
    """Past 256 cache rows a decode step spreads one token's attention over the threads in pieces
    (CpuBackend::attend_across_threads): with learned sinks it gives the bits of the chunked path.
    (Beyond the fixture's training context of 256: only the attention paths matter here.)"""
    model = sinkstream.Model(str(fixture_path), n_threads=2)
    tokens = np.random.default_rng(9).integers(0, 256, size=300).tolist()
    beyond = dict(allow_beyond_training_context=True)
    for mode, options in (("dense", dict(window=512, **beyond)), ("streaming", dict(n_sink=4, window=280, **beyond))):
        chunked = model.session(mode=mode, kv_type="f32", batch_size=64, **options)
        stepped = model.session(mode=mode, kv_type="f32", batch_size=64, **options)
        chunked.eval(tokens[:-1])
        for i in range(0, len(tokens) - 1, 60):
            stepped.eval(tokens[i:min(i + 60, len(tokens) - 1)])
        a = np.asarray(chunked.eval(tokens[-1:], logits="last"))
        b = np.asarray(stepped.eval(tokens[-1:], logits="last"))
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-4, err_msg=mode)
    one = model.session(mode="dense", kv_type="f32", window=512, **beyond)
    many = model.session(mode="dense", kv_type="f32", window=512, batch_size=64, **beyond)
    one_logits = np.concatenate([one.eval([t], logits="all") for t in tokens[:270]])
    many_logits = np.concatenate([many.eval(tokens[i:min(i + 64, 270)], logits="all") for i in range(0, 270, 64)])
    np.testing.assert_allclose(one_logits, many_logits, rtol=0, atol=2e-4)


# Bad files: a ModelError naming the file and what is wrong --------------------------------------------
U32 = gguf.GGUFValueType.UINT32


@pytest.mark.parametrize("case, match", [
    ("expert_used_count", r"expert_used_count' = 5 must be in 1..expert_count \(4\) and at most 64"),
    ("no_used_count", r"missing metadata key 'gpt-oss.expert_used_count'"),
    ("no_experts", r"gpt-oss needs metadata 'gpt-oss.expert_count' > 0"),
    ("missing_sinks", r"missing tensor 'blk.1.attn_sinks.weight'"),
    ("sinks_shape", r"tensor 'blk.0.attn_sinks.weight' has shape \(3\), expected \(4\)"),
    ("experts_shape", r"tensor 'blk.0.ffn_up_exps.weight' has shape \(64, 32, 3\), expected \(64, 32, 4\)"),
    ("expert_bias_shape", r"tensor 'blk.1.ffn_down_exps.bias' has shape \(32, 4\), expected \(64, 4\)"),
    ("router_shape", r"tensor 'blk.0.ffn_gate_inp.weight' has shape \(64, 5\), expected \(64, 4\)"),
    ("missing_experts", r"missing tensor 'blk.0.ffn_gate_exps.weight'"),
])
def test_bad_files_are_refused_by_name(tmp_path, case, match):
    path = write_family_model(tmp_path / "good.gguf", "gptoss", seed=1, expert_type="F32")
    reader = gguf.GGUFReader(str(path))
    arrays = {t.name: np.asarray(t.data) for t in reader.tensors}
    edits = {
        "expert_used_count": dict(keys={"gpt-oss.expert_used_count": (5, U32)}),
        "no_used_count": dict(keys={"gpt-oss.expert_used_count": None}),
        "no_experts": dict(keys={"gpt-oss.expert_count": (0, U32)}),
        "missing_sinks": dict(drop=("blk.1.attn_sinks.weight",)),
        "sinks_shape": dict(tensors={"blk.0.attn_sinks.weight": arrays["blk.0.attn_sinks.weight"][:3]}),
        "experts_shape": dict(tensors={"blk.0.ffn_up_exps.weight": arrays["blk.0.ffn_up_exps.weight"][:3]}),
        "expert_bias_shape": dict(tensors={"blk.1.ffn_down_exps.bias": np.zeros((4, 32))}),
        "router_shape": dict(tensors={"blk.0.ffn_gate_inp.weight": np.zeros((5, 64))}),
        "missing_experts": dict(drop=("blk.0.ffn_gate_exps.weight",)),
    }[case]
    bad = rewrite_gguf(path, tmp_path / f"{case}.gguf", **edits)
    with pytest.raises(sinkstream.ModelError, match=match) as info:
        sinkstream.Model(str(bad))
    assert str(bad) in str(info.value)


# The paper's comparison through `sinkstream ppl` ----------------------------------------------------
def test_ppl_compares_window_and_streaming_on_a_learned_sink_model(fixture_path, tmp_path, capsys):
    """`sinkstream ppl --mode window,streaming` on the learned-sink fixture: window attention (no token
    sinks, cache C) against StreamingLLM (token sinks + window, same C), each mode's per-token NLL
    equal to the NumPy reference's (which materializes A_l(t) with the learned sink logits).
    A random tiny model says nothing about the paper's prediction; this checks the machinery that
    measures it on real weights (README: what was run on real weights)."""
    from sinkstream import cli

    tokens = np.random.default_rng(4).integers(0, 256, size=40)
    np.save(tmp_path / "tokens.npy", tokens)
    n_sink, window = 2, 6
    prefix = tmp_path / "out" / "ppl"
    assert cli.main(["ppl", str(fixture_path), "--tokens", str(tmp_path / "tokens.npy"), "--mode", "window,streaming",
                     "--n-sink", str(n_sink), "--window", str(window), "--kv-type", "f32", "--out", str(prefix),
                     "--quiet", "--threads", "2"]) == 0
    table = {line.split()[0]: line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]}
    assert table["streaming"][1] == f"{n_sink}+{window}" and table["window"][1] == str(n_sink + window)
    ref = ReferenceModel(str(fixture_path))
    for mode, options in (("window", dict(window=n_sink + window)), ("streaming", dict(n_sink=n_sink, window=window))):
        logits = ref.logits(tokens.tolist(), mode=mode, **options)[:-1]
        z = logits - logits.max(axis=1, keepdims=True)
        want = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), tokens[1:]]
        got = np.load(f"{prefix}.{mode}.npy")
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3, err_msg=mode)
    assert np.abs(np.load(f"{prefix}.window.npy") - np.load(f"{prefix}.streaming.npy")).max() > 1e-3
