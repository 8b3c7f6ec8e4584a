#!/usr/bin/env python3
"""Writes tests/data/transformers_refs/<name>.npz: transformers' own logits on each tiny fixture.

For every family of tests/tiny_models.py whose GGUF architecture transformers can load, this writes
the fixture (fixed seed, F32 weights), loads it with
AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32, attn_implementation="eager"),
runs one dense forward pass over TOKENS (positions 0..n-1, no cache) and stores

    tokens (n,) int32, logits (n, n_vocab) float32,
    family, seed, weight_type, overrides (JSON): the writer's arguments,
    session (JSON): the engine session options the logits are for (mode dense; the window matters
                    only to phi3's LongRoPE, whose factors depend on the session's capacity),
    fixture_digest: tests/test_transformers_refs.py's digest of the fixture (what a GGUF reader sees),
    fixture_sha256: the sha256 of the file's bytes (information only: another gguf version may lay
                    out the same content differently),
    notes (JSON): every place where transformers' GGUF loader did not pick a feature up from the
                  metadata and the config was set by hand to what the metadata says,
    config (JSON), versions (JSON): the transformers config the logits came from; the versions used.

Before anything is stored, the script checks that every GGUF tensor became a parameter equal to it
(after transformers' documented conversions: llama Q/K un-permuted, Gemma norms minus 1) and that no
parameter kept its random initialization, and that the config says what the metadata says.

The paper's families (tests/tiny_models.py PAPER_FAMILIES): falcon (Falcon-7B's layout, and
falcon_new: Falcon-40B's), bloom and stablelm (3B-4E1T's layout; stablelm_2: StableLM 2 1.6B's q/k/v
biases) are made the same way. Transformers' GGUF loader does not read
gptneox, mpt or phi2, so for those (EXPORTS) the tiny model is built in transformers' own classes
(GPTNeoXForCausalLM, MptForCausalLM, PhiForCausalLM), with random weights from a fixed torch seed,
its logits are computed, and the same weights are exported to a GGUF the way llama.cpp's
convert_hf_to_gguf.py does it (GPT-NeoX's per-head [q_h, k_h, v_h] rows regrouped into [Q; K; V],
llama.cpp's tensor names and keys, the fixtures' byte-level vocabulary; 2-D weights F16, the rest
F32). The GGUF is committed next to the logits in exported/<name>.gguf / .npz (tokens, logits, family,
gguf_file, gguf_sha256, weight_type, fixture_overrides: the tiny_models arguments that write a fixture
with the same layout, session, notes, config, versions). The export is read back and checked equal to
the model's parameters (after the regrouping) before anything is stored.

Each transformers model's MLP activation is checked to be the family's published one: exact (erf)
GELU for gpt-neox ("gelu"), falcon ("gelu"), mpt (nn.GELU()), tanh GELU for bloom (bloom_gelu) and
phi2 ("gelu_new"), SiLU for stablelm.

A family transformers cannot load from GGUF is skipped and manifest.json says why (and names its
exported reference when there is one). The tests need neither torch nor transformers: only these
arrays (and the exported GGUFs). Run after a change to tests/tiny_models.py (the
test says "reference stale" when a fixture no longer matches its stored digest):

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install numpy gguf torch transformers accelerate sentencepiece pytest
    /tmp/tfenv/bin/python scripts/make_transformers_refs.py             # from the repo root: all
    /tmp/tfenv/bin/python scripts/make_transformers_refs.py llama qwen3  # only these references
    /tmp/tfenv/bin/python scripts/make_transformers_refs.py gptneox mpt mpt_clip phi2   # the exports

(pytest because the digest and the writer call are imported from the test module, so that the two
can never disagree; accelerate because transformers requires it to load GGUF.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import gguf  # noqa: E402
import tiny_models  # noqa: E402
from test_transformers_refs import (EXPORTED_DIR, MANIFEST, REF_DIR, file_sha256, fixture_digest,  # noqa: E402
                                    write_fixture)

# BOS, the bytes of a short text, and the three merged tokens of the tiny vocabulary: 24 positions.
TOKENS = [259] + list(b"Streaming the sink: ") + [256, 257, 258]
SEED = 0
WEIGHT_TYPE = "F32"
DENSE = {"mode": "dense", "window": 64}


def references() -> dict[str, dict]:
    """name -> writer arguments and engine session: one per family, plus phi3's LongRoPE short
    factors (a session whose capacity does not exceed the original context of 32)."""
    refs = {f: dict(family=f, overrides={}, session=DENSE) for f in tiny_models.FAMILIES}
    if "phi3" in refs:
        refs["phi3_short"] = dict(family="phi3", overrides={}, session={"mode": "dense", "window": len(TOKENS)})
    # the paper's families: each one's GGUF fixture; gptneox / mpt / phi2 are skipped here (transformers
    # does not load their GGUF) and made by EXPORTS instead
    refs.update({f: dict(family=f, overrides={}, session=DENSE) for f in tiny_models.PAPER_FAMILIES})
    refs["falcon_new"] = dict(family="falcon", overrides={"falcon_new_decoder": True}, session=DENSE)
    refs["stablelm_2"] = dict(family="stablelm", overrides={"biases": True}, session=DENSE)
    # (no StableLM 2 12B variant: the engine refuses its per-head QK norms, and a stablelm without
    # ffn_norm (its parallel residual); transformers' GGUF loader does not map the QK norms either)
    return refs


# -- reading the fixture --------------------------------------------------------------------------
def read_fixture(path: Path) -> tuple[str, dict, dict]:
    """(architecture, {key without the 'arch.' prefix: value}, {tensor name: float64 array})."""
    reader = gguf.GGUFReader(str(path))
    values = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    arch = values["general.architecture"]
    meta = {k[len(arch) + 1:] if k.startswith(arch + ".") else k: v for k, v in values.items()}
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
    return arch, meta, tensors


# -- making transformers' config say what the GGUF says ---------------------------------------------
def align_config(config, arch: str, meta: dict, tensors: dict, writer: dict, session: dict,
                 notes: list[str]) -> None:
    """Sets by hand (with a note each) what transformers' GGUF loader does not read from the
    metadata, as llama.cpp (and so the engine) reads it; checks what it did read."""

    def set_(attr: str, value, why: str) -> None:
        old = getattr(config, attr, None)
        if old != value:
            setattr(config, attr, value)
            notes.append(f"{attr}: {old!r} -> {value!r} ({why})")

    model_type = config.model_type
    if config.pad_token_id is not None and config.pad_token_id >= len(meta["tokenizer.ggml.tokens"]):
        set_("pad_token_id", None, "the class default is outside the tiny vocabulary (no padding is used)")
    n_embd, n_head = meta["embedding_length"], meta["attention.head_count"]
    head_dim = meta.get("attention.key_length", n_embd // n_head)
    if hasattr(config, "head_dim") or head_dim != n_embd // n_head:
        set_("head_dim", head_dim, "attention.key_length (transformers maps it only for some architectures)")

    # Sliding windows: transformers maps {arch}.attention.sliding_window only for gemma2/gemma3.
    swa = meta.get("attention.sliding_window")
    if model_type in ("mistral", "phi3"):
        set_("sliding_window", swa, f"{arch}.attention.sliding_window (None when absent)")
    elif model_type in ("gemma2", "gemma3_text"):
        if config.sliding_window != swa:
            raise SystemExit(f"{arch}: sliding_window {config.sliding_window} vs GGUF {swa}")
        # llama.cpp's layer pattern when the GGUF has no sliding_window_pattern: gemma2 every 2nd
        # layer global (1 of 2), gemma3 every 6th; transformers' defaults are the same.
        n = 2 if model_type == "gemma2" else 6
        n = meta.get("attention.sliding_window_pattern", n)
        want = ["sliding_attention" if (i % n) < n - 1 else "full_attention" for i in range(config.num_hidden_layers)]
        if config.layer_types != want:
            set_("layer_types", want, f"llama.cpp's swa pattern {n}")
    elif swa is not None and model_type != "llama":  # llama: run as Mistral (as_mistral)
        raise SystemExit(f"{arch}: a sliding window for {model_type} is not handled here")

    # Gemma: the query scale and the soft-caps are not read from GGUF by transformers.
    if model_type in ("gemma2", "gemma3_text"):
        # llama.cpp: f_attention_scale = 1/sqrt(head_dim) (for every size but 27B, which GGUF can't say)
        set_("query_pre_attn_scalar", head_dim, "llama.cpp scales queries by 1/sqrt(attention.key_length)")
        # llama.cpp's values when the keys are absent: gemma2 50 / 30, gemma3 none / none.
        attn_cap, final_cap = (50.0, 30.0) if model_type == "gemma2" else (None, None)
        attn_cap = meta.get("attn_logit_softcapping", attn_cap)
        final_cap = meta.get("final_logit_softcapping", final_cap)
        if model_type == "gemma3_text" and "attn_logit_softcapping" in meta:
            raise SystemExit("gemma3.attn_logit_softcapping present: llama.cpp's gemma3 does not apply it")
        set_("attn_logit_softcapping", float(attn_cap) if attn_cap else None, f"{arch}.attn_logit_softcapping")
        set_("final_logit_softcapping", float(final_cap) if final_cap else None, f"{arch}.final_logit_softcapping")

    # RoPE: base, linear scaling, partial rotary, llama3 factors, LongRoPE, gemma3's local base.
    base = float(meta.get("rope.freq_base", 10000.0))
    n_rot = meta.get("rope.dimension_count", head_dim)
    scaling = meta.get("rope.scaling.type")
    if scaling not in (None, "none", "linear"):
        raise SystemExit(f"{arch}: rope.scaling.type {scaling!r} not handled")
    linear = {"rope_type": "linear", "factor": float(meta["rope.scaling.factor"])} if scaling == "linear" else {}
    old = json.loads(json.dumps(config.rope_parameters))
    if model_type == "gemma3_text":
        # llama.cpp: sliding layers at rope_freq_base_train_swa (10000 unless rope.freq_base_swa) and
        # no scaling; global layers at rope.freq_base with the linear scaling.
        local = float(meta.get("rope.freq_base_swa", 10000.0))
        new = {"full_attention": {"rope_type": "default", "rope_theta": base, **linear},
               "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    else:
        new = {"rope_type": "default", "rope_theta": base, **linear}
        if n_rot != head_dim:
            if model_type != "phi3":
                raise SystemExit(f"{arch}: partial rotary ({n_rot} of {head_dim}) not handled for {model_type}")
            new["partial_rotary_factor"] = n_rot / head_dim
        if "rope_freqs.weight" in tensors:
            new.update(llama3_rope_parameters(tensors["rope_freqs.weight"], base, n_rot, writer))
        if "rope_factors_long.weight" in tensors:
            original = int(meta["rope.scaling.original_context_length"])
            long = tensors["rope_factors_long.weight"].astype(np.float32).tolist()
            short = tensors["rope_factors_short.weight"].astype(np.float32).tolist()
            # The engine (like llama.cpp) takes the long factors when the session's capacity exceeds
            # the original context; transformers when the sequence does (24 tokens here: never).
            capacity = session.get("window", 0) + session.get("n_sink", 0)
            use = long if capacity > original else short
            new.update(rope_type="longrope", short_factor=use, long_factor=long,
                       original_max_position_embeddings=original,
                       attention_factor=float(meta["rope.scaling.attn_factor"]))
            set_("original_max_position_embeddings", original, "rope.scaling.original_context_length")
            notes.append(f"LongRoPE: the {'long' if use is long else 'short'} factors (engine session capacity "
                         f"{capacity} {'>' if use is long else '<='} original context {original}); "
                         f"transformers would choose by sequence length")
    if new != old:
        config.rope_parameters = new
        notes.append(f"rope_parameters: {old} -> {new}")

    expect = {
        "hidden_size": n_embd,
        "num_hidden_layers": meta["block_count"],
        "num_attention_heads": n_head,
        "num_key_value_heads": meta.get("attention.head_count_kv", n_head),
        "intermediate_size": meta["feed_forward_length"],
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": "output.weight" not in tensors,
        "max_position_embeddings": meta["context_length"],
    }
    for attr, value in expect.items():
        if getattr(config, attr) != value:
            raise SystemExit(f"{arch}: config.{attr} = {getattr(config, attr)!r}, GGUF says {value!r}")
    if not math.isclose(config.rms_norm_eps, meta["attention.layer_norm_rms_epsilon"], rel_tol=1e-6):
        raise SystemExit(f"{arch}: rms_norm_eps {config.rms_norm_eps} vs {meta['attention.layer_norm_rms_epsilon']}")
    unread = sorted(k for k in meta if not k.startswith(("tokenizer.", "general.")) and k not in KNOWN_KEYS)
    if unread:
        raise SystemExit(f"{arch}: metadata this script does not know how transformers should read: {unread}")


KNOWN_KEYS = {
    "block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "attention.key_length", "attention.value_length", "rope.dimension_count",
    "rope.freq_base", "rope.freq_base_swa", "attention.layer_norm_rms_epsilon", "attention.sliding_window",
    "attention.sliding_window_pattern", "attn_logit_softcapping", "final_logit_softcapping",
    "rope.scaling.type", "rope.scaling.factor", "rope.scaling.original_context_length", "rope.scaling.attn_factor",
}


def llama3_rope_parameters(freq_factors: np.ndarray, base: float, n_rot: int, c: dict) -> dict:
    """The llama3 rope parameters behind rope_freqs.weight (transformers only takes the parameters,
    not the tensor). GGUF keeps only the tensor, so the parameters come from the writer's settings,
    and are checked to reproduce the tensor the way llama.cpp's converter computes it."""
    params = dict(rope_type="llama3", factor=float(c["llama3_factor"]),
                  low_freq_factor=float(c["llama3_low_freq_factor"]),
                  high_freq_factor=float(c["llama3_high_freq_factor"]),
                  original_max_position_embeddings=int(c["llama3_original_context"]))
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old = params["original_max_position_embeddings"]
    factors = []
    for f in 1.0 / base ** (np.arange(0, n_rot, 2) / n_rot):
        wavelength = 2 * math.pi / f
        if wavelength < old / high:
            factors.append(1.0)
        elif wavelength > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelength - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    if not np.allclose(factors, freq_factors, rtol=1e-6):
        raise SystemExit(f"llama3: rope_freqs.weight {freq_factors} != factors from {params}: {factors}")
    return params


# -- transformers ---------------------------------------------------------------------------------
CONFIG_TENSORS = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}


def check_weights(model, arch: str, tensors: dict, adjust: dict | None = None) -> None:
    """Every GGUF tensor became a parameter equal to it after transformers' conversion (llama Q/K
    un-permuted, Gemma norms minus 1, Bloom's Q/K/V rows interleaved per head again) and after this
    script's own fixes (adjust: GGUF tensor name -> function of the converted array), and no parameter
    kept its random initialization."""
    import torch
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=model.config.to_dict())
    gguf_type = {"gemma3_text": "gemma3", "mistral": "llama"}.get(model.config.model_type)
    mapping = get_gguf_hf_weights_map(model, processor, model_type=gguf_type)
    state = model.state_dict()
    used = set()
    for name, weights in tensors.items():
        if name in CONFIG_TENSORS:
            continue
        if name not in mapping:
            raise SystemExit(f"{arch}: transformers has no parameter for GGUF tensor {name}")
        hf_name = mapping[name]
        value = state[hf_name].detach().to(torch.float64).numpy()
        want = np.asarray(processor.process(weights=weights.astype(np.float32), name=name).weights)
        if adjust and name in adjust:
            want = adjust[name](want)
        if not np.array_equal(value, want.reshape(value.shape).astype(np.float32).astype(np.float64)):
            raise SystemExit(f"{arch}: parameter {hf_name} differs from GGUF tensor {name}")
        used.add(hf_name)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    unset = set(state) - used - tied
    if unset:
        raise SystemExit(f"{arch}: parameters not loaded from the GGUF: {sorted(unset)}")


def as_mistral(model, config, swa: int, notes: list[str]):
    """transformers loads an arch-'llama' GGUF as Mistral only when general.name is exactly
    'mistral' (a list-membership test on the name), so a llama-arch GGUF with a sliding window
    comes back as LlamaForCausalLM, which has none. The same weights in MistralForCausalLM."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    keep = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
            "bos_token_id", "eos_token_id", "rope_parameters"]
    mistral_config = MistralConfig(**{k: getattr(config, k) for k in keep}, sliding_window=swa)
    mistral_config._attn_implementation = "eager"
    mistral = MistralForCausalLM(mistral_config).to(torch.float32)
    mistral.load_state_dict(model.state_dict(), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(mistral.state_dict()[k], v), k
    notes.append(f"loaded as llama (general.name is not exactly 'mistral'); run as MistralForCausalLM "
                 f"with the same weights and sliding_window={swa} ({{arch}}.attention.sliding_window)")
    return mistral.eval()


def transformers_logits(path: Path, arch: str, meta: dict, tensors: dict, writer: dict, session: dict,
                        notes: list[str]):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch in PAPER_GGUF_ARCHS:
        return paper_transformers_logits(path, arch, meta, tensors, notes)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    swa_llama = config.model_type == "llama" and meta.get("attention.sliding_window") is not None
    align_config(config, arch, meta, tensors, writer, session, notes)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config,
                                                 dtype=torch.float32, attn_implementation="eager")
    model.eval()
    check_weights(model, arch, tensors)
    if swa_llama:
        model = as_mistral(model, model.config, int(meta["attention.sliding_window"]), notes)
    check_rope(model, meta, tensors, session)
    with torch.no_grad():
        ids = torch.tensor([TOKENS], dtype=torch.long)
        out = model(input_ids=ids, position_ids=torch.arange(len(TOKENS))[None], use_cache=False)
    return out.logits[0].to(torch.float32).numpy(), model.config


def check_rope(model, meta: dict, tensors: dict, session: dict) -> None:
    """The inverse frequencies transformers rotates with are base^(-2i/n_rot) / the GGUF's divisors."""
    import torch

    rotary = model.model.rotary_emb
    n_rot = meta.get("rope.dimension_count")
    base = float(meta.get("rope.freq_base", 10000.0))
    divisors = np.ones(n_rot // 2)
    if "rope_freqs.weight" in tensors:
        divisors = tensors["rope_freqs.weight"]
    if "rope_factors_long.weight" in tensors:
        capacity = session.get("window", 0) + session.get("n_sink", 0)
        long = capacity > meta["rope.scaling.original_context_length"]
        divisors = tensors["rope_factors_long.weight" if long else "rope_factors_short.weight"]
    if meta.get("rope.scaling.type") == "linear":
        divisors = divisors * meta["rope.scaling.factor"]
    exponents = np.arange(0, n_rot, 2) / n_rot
    want = {"inv_freq": base ** -exponents / divisors}
    if model.config.model_type == "gemma3_text":   # global layers as above; sliding: base 10000, unscaled
        want = {"full_attention_inv_freq": want["inv_freq"],
                "sliding_attention_inv_freq": float(meta.get("rope.freq_base_swa", 10000.0)) ** -exponents}
    for attr, expected in want.items():
        got = getattr(rotary, attr).to(torch.float64).numpy()
        if not np.allclose(got, expected, rtol=1e-5):
            raise SystemExit(f"rope {attr} {got} != {expected}")


# -- the paper's families that transformers loads from GGUF: falcon, bloom, stablelm ---------------
PAPER_GGUF_ARCHS = {"falcon", "bloom", "stablelm"}
PAPER_KNOWN_KEYS = {
    "block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "attention.layer_norm_epsilon", "rope.dimension_count", "rope.freq_base",
    "use_parallel_residual", "tensor_data_layout",
}
# each family's MLP activation in its published definition (Hugging Face's modeling code)
ACTIVATION = {"falcon": "gelu_erf", "bloom": "gelu_tanh", "stablelm": "silu", "gpt_neox": "gelu_erf",
              "mpt": "gelu_erf", "phi": "gelu_tanh"}


def falcon_hf_qkv_rows(n_head: int, n_head_kv: int, head_dim: int) -> np.ndarray:
    """Falcon's own fused query_key_value rows as rows of llama.cpp's [Q; K; V] (hf = gguf[rows]).
    FalconAttention._split_heads views the new decoder architecture's rows as (n_head_kv,
    n_head / n_head_kv + 2, head_dim): each KV group's queries, then its key, then its value;
    Falcon-7B's multi-query layout (n_head + 2, head_dim) is the one-group case, i.e. [Q; K; V]."""
    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    q = np.arange(q_dim).reshape(n_head_kv, n_head // n_head_kv, head_dim)
    k = (q_dim + np.arange(kv_dim)).reshape(n_head_kv, 1, head_dim)
    v = (q_dim + kv_dim + np.arange(kv_dim)).reshape(n_head_kv, 1, head_dim)
    rows = np.concatenate([q, k, v], axis=1).reshape(-1)
    assert np.array_equal(rows, tiny_models.hf_fused_qkv_rows("falcon", n_head, n_head_kv, head_dim))
    return rows


def align_paper_config(config, arch: str, meta: dict, tensors: dict, notes: list[str]) -> None:
    """align_config for falcon / bloom / stablelm: sets by hand (with a note each) what transformers'
    GGUF loader does not read from the metadata, and checks what it did read."""

    def set_(attr: str, value, why: str) -> None:
        old = getattr(config, attr, None)
        if old != value:
            setattr(config, attr, value)
            notes.append(f"{attr}: {old!r} -> {value!r} ({why})")

    def check(attr: str, value) -> None:
        if getattr(config, attr) != value:
            raise SystemExit(f"{arch}: config.{attr} = {getattr(config, attr)!r}, GGUF says {value!r}")

    n_embd, n_head = meta["embedding_length"], meta["attention.head_count"]
    n_head_kv = meta.get("attention.head_count_kv", n_head)
    head_dim = n_embd // n_head
    eps = float(meta["attention.layer_norm_epsilon"])     # float32 in the file; so in the engine
    n_ff = meta["feed_forward_length"]
    n_rot = meta.get("rope.dimension_count", head_dim)
    base = float(meta.get("rope.freq_base", 10000.0))
    tied = "output.weight" not in tensors
    check("vocab_size", len(meta["tokenizer.ggml.tokens"]))
    check("hidden_size", n_embd)
    check("num_hidden_layers", meta["block_count"])
    check("num_attention_heads", n_head)
    check("tie_word_embeddings", tied)
    linear_biases = sorted(n for n in tensors if n.endswith(".bias") and "norm" not in n)
    if arch == "falcon":
        if not tied:
            raise SystemExit("falcon: output.weight present, but transformers ties Falcon's output to the "
                             "embeddings whatever the GGUF holds (its 'exceptions' list)")
        if linear_biases or n_rot != head_dim:
            raise SystemExit(f"falcon: biases {linear_biases} / partial rotary not handled")
        check("max_position_embeddings", meta["context_length"])
        check("alibi", False)
        check("parallel_attn", True)
        check("bias", False)
        set_("ffn_hidden_size", n_ff, "falcon.feed_forward_length: transformers maps it to intermediate_size, "
             "which Falcon does not read (FalconMLP uses ffn_hidden_size, default 4 * hidden_size)")
        set_("layer_norm_epsilon", eps, "falcon.attention.layer_norm_epsilon (transformers maps only "
             "layer_norm_rms_epsilon for falcon; the file's float32 value)")
        if "blk.0.attn_norm_2.weight" in tensors:
            set_("new_decoder_architecture", True, "attn_norm_2 present: Falcon-40B's layout (ln_attn, ln_mlp); "
                 "transformers does not infer it from a GGUF")
            set_("num_kv_heads", n_head_kv, "falcon.attention.head_count_kv (transformers maps it to "
                 "num_key_value_heads, which Falcon does not read)")
        else:
            if n_head_kv != 1:
                raise SystemExit(f"falcon: {n_head_kv} KV heads without the new decoder architecture")
            check("new_decoder_architecture", False)
            check("multi_query", True)
        rope = {"rope_type": "default", "rope_theta": base}
        if config.rope_parameters != rope:
            notes.append(f"rope_parameters: {config.rope_parameters} -> {rope}")
            config.rope_parameters = rope
    elif arch == "bloom":
        if not tied or n_head_kv != n_head:
            raise SystemExit("bloom: an untied output or GQA is not Bloom")
        if n_ff != 4 * n_embd:
            raise SystemExit(f"bloom: feed_forward_length {n_ff}: BloomMLP hard-codes 4 * hidden_size")
        check("layer_norm_epsilon", eps)
        check("apply_residual_connection_post_layernorm", False)
        check("pretraining_tp", 1)
        notes.append(f"ALiBi max bias 8 in both: llama.cpp hard-codes it for bloom (no GGUF key), transformers' "
                     f"build_alibi_tensor too (its slopes for {n_head} heads checked against Press et al.'s)")
    elif arch == "stablelm":
        if "blk.0.attn_q_norm.weight" in tensors:
            raise SystemExit("stablelm: per-head QK norms (StableLM 2 12B) are not mapped by transformers' GGUF loader")
        check("num_key_value_heads", n_head_kv)
        check("intermediate_size", n_ff)
        check("max_position_embeddings", meta["context_length"])
        check("layer_norm_eps", eps)
        check("hidden_act", "silu")
        # transformers derives these two from the tensors (q/k/v biases; no ffn_norm -> parallel)
        check("use_qkv_bias", "blk.0.attn_q.bias" in tensors)
        parallel = "blk.0.ffn_norm.weight" not in tensors
        check("use_parallel_residual", parallel)
        if bool(meta.get("use_parallel_residual", parallel)) != parallel:
            raise SystemExit("stablelm.use_parallel_residual disagrees with the tensors (llama.cpp follows the tensors)")
        check("qk_layernorm", False)
        rope = dict(config.rope_parameters)
        new = {**rope, "rope_type": "default", "rope_theta": base, "partial_rotary_factor": n_rot / head_dim}
        if new != rope:
            notes.append(f"rope_parameters: {rope} -> {new}")
            config.rope_parameters = new
        notes.append(f"partial_rotary_factor {n_rot / head_dim} checked against stablelm.rope.dimension_count "
                     f"{n_rot} of {head_dim} (transformers' GGUF loader does not read the key; its default "
                     f"0.25 is what the fixture has)")
    unread = sorted(k for k in meta if not k.startswith(("tokenizer.", "general.")) and k not in PAPER_KNOWN_KEYS)
    if unread:
        raise SystemExit(f"{arch}: metadata this script does not know how transformers should read: {unread}")


def check_activation(model, kind: str) -> None:
    """The MLP's activation module computes `kind` (gelu_erf, gelu_tanh or silu) and not the others."""
    import torch

    act = next(m for name, m in model.named_modules()
               if name.endswith((".mlp.act", ".mlp.gelu_impl", ".mlp.act_fn", ".ffn.act", ".mlp.activation_fn")))
    x = np.linspace(-6, 6, 481)
    with torch.no_grad():
        got = act(torch.tensor(x, dtype=torch.float64)).numpy()
    want = {"gelu_erf": 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
            "gelu_tanh": 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
            "silu": x / (1 + np.exp(-x))}
    diffs = {k: float(np.abs(got - v).max()) for k, v in want.items()}
    if diffs[kind] > 1e-6 or min(d for k, d in diffs.items() if k != kind) < 1e-4:
        raise SystemExit(f"activation {type(act).__name__}: max |diff| {diffs}, expected {kind}")


def check_alibi(model, n_head: int) -> None:
    """Bloom's / MPT's ALiBi slopes in transformers are Press et al.'s with max bias 8: for the largest
    power of two n <= n_head, 2^(-8(h+1)/n), then the odd slopes 2^(-8(2i+1)/(2n)) of 2n heads."""
    import torch

    n = 1 << int(math.floor(math.log2(n_head)))
    want = [2.0 ** (-8 * (h + 1) / n) for h in range(n)] + [2.0 ** (-8 * (2 * i + 1) / (2 * n)) for i in range(n_head - n)]
    if model.config.model_type == "bloom":
        from transformers.models.bloom.modeling_bloom import build_alibi_tensor

        got = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), n_head, torch.float64)[:, 0, 1].numpy()
    else:
        got = -model.transformer.build_mpt_alibi_tensor(n_head, 2)[:, 0, 0].numpy()
    if not np.allclose(got, want, rtol=1e-6):
        raise SystemExit(f"ALiBi slopes {got} != {want}")


def check_paper_rope(model, n_rot: int, base: float) -> None:
    import torch

    got = model.base_model.rotary_emb.inv_freq.to(torch.float64).numpy()
    want = base ** -(np.arange(0, n_rot, 2) / n_rot)
    if not np.allclose(got, want, rtol=1e-5):
        raise SystemExit(f"rope inv_freq {got} != {want}")


def paper_transformers_logits(path: Path, arch: str, meta: dict, tensors: dict, notes: list[str]):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    align_paper_config(config, arch, meta, tensors, notes)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config,
                                                 dtype=torch.float32, attn_implementation="eager").eval()
    adjust = {}
    if arch == "falcon":
        n_head = meta["attention.head_count"]
        n_head_kv = meta["attention.head_count_kv"]
        rows = falcon_hf_qkv_rows(n_head, n_head_kv, meta["embedding_length"] // n_head)
        if not np.array_equal(rows, np.arange(len(rows))):
            # transformers loads attn_qkv as it is ([Q; K; V]): regroup it into Falcon's own layout
            for layer in model.transformer.h:
                with torch.no_grad():
                    weight = layer.self_attention.query_key_value.weight
                    weight.copy_(weight[torch.as_tensor(rows)].clone())
            for name in tensors:
                if name.endswith("attn_qkv.weight"):
                    adjust[name] = lambda w, rows=rows: w[rows]
            notes.append("attn_qkv: transformers loads llama.cpp's [Q; K; V] rows into query_key_value unchanged; "
                         "regrouped here into Falcon's per-KV-group [q.., k, v] rows (FalconModel.modify_tensors "
                         "undone)")
    check_weights(model, arch, tensors, adjust)
    check_activation(model, ACTIVATION[config.model_type])
    head_dim = meta["embedding_length"] // meta["attention.head_count"]
    if arch == "bloom":
        check_alibi(model, meta["attention.head_count"])
    else:
        check_paper_rope(model, meta.get("rope.dimension_count", head_dim), float(meta.get("rope.freq_base", 10000.0)))
    with torch.no_grad():
        ids = torch.tensor([TOKENS], dtype=torch.long)
        out = model(input_ids=ids, position_ids=torch.arange(len(TOKENS))[None], use_cache=False)
    return out.logits[0].to(torch.float32).numpy(), model.config


# -- gptneox, mpt, phi2: built in transformers, exported to GGUF ------------------------------------
# hf: the transformers config; tiny sizes (2-D weights F16) keep each GGUF near 100 KB.
EXPORTS = {
    # Pythia-like: 25% rotary (4 of 16 dims), parallel residual, exact GELU, biases, untied output
    "gptneox": dict(family="gptneox", seed=0, hf=dict(
        hidden_size=48, num_attention_heads=3, intermediate_size=96, num_hidden_layers=2, rotary_pct=0.25,
        use_parallel_residual=True, hidden_act="gelu", max_position_embeddings=512, layer_norm_eps=1e-5,
        attention_bias=True, tie_word_embeddings=False)),
    # MPT-7B-like with 6 heads (not a power of two): ALiBi (max bias 8), no biases, tied output
    "mpt": dict(family="mpt", seed=0, hf=dict(
        d_model=48, n_heads=6, n_layers=2, expansion_ratio=4, max_seq_len=512, no_bias=True,
        layer_norm_epsilon=1e-5, attn_config=dict(alibi=True, alibi_bias_max=8, clip_qkv=None))),
    # the same weights with MPT's clip_qkv (clamps about 15% of the fused q/k/v values here)
    "mpt_clip": dict(family="mpt", seed=0, hf=dict(
        d_model=48, n_heads=6, n_layers=2, expansion_ratio=4, max_seq_len=512, no_bias=True,
        layer_norm_epsilon=1e-5, attn_config=dict(alibi=True, alibi_bias_max=8, clip_qkv=4.0))),
    # Phi-2-like: half of each head rotates, one LayerNorm, parallel residual, tanh GELU, output bias
    "phi2": dict(family="phi2", seed=0, hf=dict(
        hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=128, num_hidden_layers=2,
        partial_rotary_factor=0.5, hidden_act="gelu_new", max_position_embeddings=512, layer_norm_eps=1e-5,
        tie_word_embeddings=False)),
}
EXPORT_WEIGHT_TYPE = "F16"


def build_hf_model(family: str, hf: dict):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, MptConfig, MptForCausalLM, PhiConfig, PhiForCausalLM

    n_vocab = 261
    special = dict(vocab_size=n_vocab, bos_token_id=n_vocab - 2, eos_token_id=n_vocab - 1, pad_token_id=None)
    if family == "gptneox":
        config = GPTNeoXConfig(**hf, **special)
        model = GPTNeoXForCausalLM
    elif family == "mpt":
        config = MptConfig(**hf, **special, tie_word_embeddings=True)
        model = MptForCausalLM
    else:
        config = PhiConfig(**hf, **special, qk_layernorm=False)
        model = PhiForCausalLM
    config._attn_implementation = "eager"
    return model(config).to(torch.float32).eval()


def randomize(model, family: str, seed: int) -> None:
    """Weights drawn from a fixed torch seed with the fixtures' scales (tests/tiny_models.py): peaked,
    position-sensitive attention, logits of a few units. 2-D weights are rounded to float16 (the
    GGUF's type for them) so that transformers runs exactly the numbers the GGUF holds."""
    import torch

    c = model.config
    n_head = c.num_attention_heads
    head_dim = c.hidden_size // n_head
    generator = torch.Generator().manual_seed(seed)
    qkv_scale = torch.tensor([0.45, 0.45, 0.3], dtype=torch.float64)   # q, k, v
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        center = 0.0
        if leaf == "bias" and ("query_key_value" in name or "_proj" in name and "out_proj" not in name):
            scale = 0.3                                              # q/k/v biases
        elif "norm" in name:
            scale, center = 0.1, (1.0 if leaf == "weight" else 0.0)
        elif leaf == "bias":
            scale = 0.3 if name.startswith(("embed_out", "lm_head")) else 0.1
        elif name.endswith(("embed_in.weight", "wte.weight", "embed_tokens.weight")):
            scale = 1.0
        elif name.endswith(("embed_out.weight", "lm_head.weight")):
            scale = 0.3
        elif "query_key_value" in name:      # GPT-NeoX: rows (n_head, 3, head_dim)
            scale = qkv_scale.repeat_interleave(head_dim).repeat(n_head)[:, None]
        elif "Wqkv" in name:                 # MPT: rows [Q; K; V]
            scale = qkv_scale.repeat_interleave(n_head * head_dim)[:, None]
        elif name.endswith(("q_proj.weight", "k_proj.weight")):
            scale = 0.45
        elif name.endswith("v_proj.weight"):
            scale = 0.3
        elif name.endswith(("attention.dense.weight", "out_proj.weight", "self_attn.dense.weight",
                            "dense_4h_to_h.weight", "down_proj.weight", "fc2.weight")):
            scale = 0.2
        elif name.endswith(("dense_h_to_4h.weight", "up_proj.weight", "fc1.weight")):
            scale = 0.3
        else:
            raise SystemExit(f"{family}: no scale for parameter {name}")
        value = center + scale * torch.randn(param.shape, generator=generator, dtype=torch.float64)
        if param.dim() == 2:
            value = value.to(torch.float16)
        with torch.no_grad():
            param.copy_(value.to(torch.float32))


class ParameterTaker:
    """A transformers model's parameters as NumPy arrays, taken by name; check() says which an export
    left out (every parameter must become exactly one GGUF tensor)."""

    def __init__(self, model):
        self.state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        self.used: set[str] = set()

    def __call__(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.state[name]

    def check(self, what: str) -> None:
        if set(self.state) - self.used:
            raise SystemExit(f"{what}: parameters not exported: {sorted(set(self.state) - self.used)}")


def export_gguf(model, family: str, path: Path) -> dict:
    """Writes the model's weights as llama.cpp's convert_hf_to_gguf.py would (GPTNeoXModel, MPTModel,
    Phi2Model), in the key and tensor order tests/tiny_models.py uses for the family. Returns the
    tensors written {GGUF name: array}, each built from exactly one parameter."""
    c = model.config
    take = ParameterTaker(model)
    n_embd, n_head, n_layer = c.hidden_size, c.num_attention_heads, c.num_hidden_layers
    head_dim = n_embd // n_head
    w = gguf.GGUFWriter(str(path), family)
    w.add_name(f"tiny-{family}-transformers")
    if family == "gptneox":
        # GPTNeoXModel.set_gguf_parameters
        if c.rope_parameters["rope_theta"] != 10000.0:
            raise SystemExit("gptneox: the converter writes no rope.freq_base (llama.cpp assumes 10000)")
        w.add_context_length(c.max_position_embeddings)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_head_count(n_head)
        w.add_rope_dimension_count(int(c.rope_parameters["partial_rotary_factor"] * head_dim))
        w.add_parallel_residual(c.use_parallel_residual)
        w.add_layer_norm_eps(c.layer_norm_eps)
    elif family == "mpt":
        # MPTModel.set_gguf_parameters: n_ff = 4 * d_model, eps fixed at 1e-5, clamp_kqv, max_alibi_bias
        a = c.attn_config
        if c.layer_norm_epsilon != 1e-5 or not a.alibi or a.alibi_bias_max != 8 or c.expansion_ratio != 4:
            raise SystemExit("mpt: the converter writes eps 1e-5 and n_ff 4 * d_model; transformers builds ALiBi "
                             "with max bias 8 whatever alibi_bias_max says")
        w.add_context_length(c.max_seq_len)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(4 * n_embd)
        w.add_head_count(n_head)
        w.add_layer_norm_eps(1e-5)
        if a.clip_qkv is not None:
            w.add_clamp_kqv(a.clip_qkv)
        w.add_max_alibi_bias(a.alibi_bias_max)
    else:
        # Phi2Model.set_gguf_parameters: n_ff = 4 * n_embd, n_rot = int(partial_rotary_factor * n_embd) // n_head
        if c.intermediate_size != 4 * n_embd or c.rope_parameters["rope_theta"] != 10000.0:
            raise SystemExit("phi2: the converter writes feed_forward_length 4 * n_embd and no rope.freq_base")
        w.add_context_length(c.max_position_embeddings)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(4 * n_embd)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head)
        w.add_rope_dimension_count(int(c.rope_parameters["partial_rotary_factor"] * n_embd) // n_head)
        w.add_layer_norm_eps(c.layer_norm_eps)
    tiny_models._add_byte_level_vocab(w)   # the fixtures' byte-level vocabulary (261 tokens)

    out: dict[str, np.ndarray] = {}

    def add(name: str, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value)
        if value.ndim == 2 and not np.array_equal(value.astype(np.float16).astype(value.dtype), value):
            raise SystemExit(f"{family}: {name} is not exactly float16 (randomize rounds 2-D weights)")
        value = value.astype(np.float16 if value.ndim == 2 else np.float32)
        out[name] = value
        w.add_tensor(name, value)

    def regroup(value: np.ndarray) -> np.ndarray:
        """GPT-NeoX's per-head [q_h, k_h, v_h] rows -> [Q; K; V] (GPTNeoXModel.modify_tensors)."""
        per_head = value.reshape(n_head, 3, head_dim, *value.shape[1:])
        return np.concatenate([per_head[:, i].reshape(n_embd, *value.shape[1:]) for i in range(3)])

    if family == "gptneox":
        add("token_embd.weight", take("gpt_neox.embed_in.weight"))
        add("output_norm.weight", take("gpt_neox.final_layer_norm.weight"))
        add("output_norm.bias", take("gpt_neox.final_layer_norm.bias"))
        add("output.weight", take("lm_head.weight"))    # Pythia's embed_out (transformers 5 calls it lm_head)
        for l in range(n_layer):
            h, p = f"gpt_neox.layers.{l}.", f"blk.{l}."
            for hf, gg in (("input_layernorm", "attn_norm"),):
                add(p + gg + ".weight", take(h + hf + ".weight"))
                add(p + gg + ".bias", take(h + hf + ".bias"))
            add(p + "attn_qkv.weight", regroup(take(h + "attention.query_key_value.weight")))
            add(p + "attn_qkv.bias", regroup(take(h + "attention.query_key_value.bias")))
            for hf, gg in (("attention.dense", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
                           ("mlp.dense_h_to_4h", "ffn_up"), ("mlp.dense_4h_to_h", "ffn_down")):
                add(p + gg + ".weight", take(h + hf + ".weight"))
                add(p + gg + ".bias", take(h + hf + ".bias"))
    elif family == "mpt":
        add("token_embd.weight", take("transformer.wte.weight"))
        add("output_norm.weight", take("transformer.norm_f.weight"))
        if model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
            raise SystemExit("mpt: lm_head is not tied to wte")
        take.used.add("lm_head.weight")      # tied to wte: llama.cpp's mpt reads token_embd
        for l in range(n_layer):
            h, p = f"transformer.blocks.{l}.", f"blk.{l}."
            for hf, gg in (("norm_1", "attn_norm"), ("attn.Wqkv", "attn_qkv"), ("attn.out_proj", "attn_output"),
                           ("norm_2", "ffn_norm"), ("ffn.up_proj", "ffn_up"), ("ffn.down_proj", "ffn_down")):
                add(p + gg + ".weight", take(h + hf + ".weight"))
    else:
        add("token_embd.weight", take("model.embed_tokens.weight"))
        add("output_norm.weight", take("model.final_layernorm.weight"))
        add("output_norm.bias", take("model.final_layernorm.bias"))
        add("output.weight", take("lm_head.weight"))
        add("output.bias", take("lm_head.bias"))
        for l in range(n_layer):
            h, p = f"model.layers.{l}.", f"blk.{l}."
            add(p + "attn_norm.weight", take(h + "input_layernorm.weight"))
            add(p + "attn_norm.bias", take(h + "input_layernorm.bias"))
            for x in "qkv":
                add(p + f"attn_{x}.weight", take(h + f"self_attn.{x}_proj.weight"))
            for x in "qkv":
                add(p + f"attn_{x}.bias", take(h + f"self_attn.{x}_proj.bias"))
            for hf, gg in (("self_attn.dense", "attn_output"), ("mlp.fc1", "ffn_up"), ("mlp.fc2", "ffn_down")):
                add(p + gg + ".weight", take(h + hf + ".weight"))
                add(p + gg + ".bias", take(h + hf + ".bias"))
    take.check(family)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def fixture_overrides(family: str, c) -> dict:
    """The tests/tiny_models.py arguments that write a fixture laid out as the export of config c."""
    if family == "mpt":
        clip = c.attn_config.clip_qkv
        return dict(n_layer=c.n_layers, n_embd=c.d_model, n_head=c.n_heads, n_head_kv=c.n_heads,
                    n_ff=4 * c.d_model, n_ctx=c.max_seq_len, eps=1e-5, max_alibi_bias=float(c.attn_config.alibi_bias_max),
                    **({"clamp_kqv": float(clip)} if clip is not None else {}))
    head_dim = c.hidden_size // c.num_attention_heads
    return dict(n_layer=c.num_hidden_layers, n_embd=c.hidden_size, n_head=c.num_attention_heads,
                n_head_kv=c.num_attention_heads, n_ff=c.intermediate_size, n_ctx=c.max_position_embeddings,
                eps=c.layer_norm_eps, rope_dim=int(c.rope_parameters["partial_rotary_factor"] * head_dim))


def make_export(name: str, versions: dict) -> dict:
    """Builds EXPORTS[name] in transformers, writes exported/<name>.gguf and .npz; returns its manifest entry."""
    import torch

    spec = EXPORTS[name]
    family = spec["family"]
    model = build_hf_model(family, spec["hf"])
    randomize(model, family, spec["seed"])
    c = model.config
    notes = []
    check_activation(model, ACTIVATION[c.model_type])
    if family == "mpt":
        check_alibi(model, c.n_heads)
        notes.append("MptMLP hard-codes 4 * d_model and build_mpt_alibi_tensor max bias 8 (expansion_ratio and "
                     "alibi_bias_max set to those values); the converter writes eps 1e-5 and n_ff 4 * d_model")
        if c.attn_config.clip_qkv is not None:
            notes.append(f"clip_qkv {c.attn_config.clip_qkv} -> mpt.attention.clamp_kqv")
    else:
        head_dim = c.hidden_size // c.num_attention_heads
        check_paper_rope(model, int(c.rope_parameters["partial_rotary_factor"] * head_dim), 10000.0)
    if family == "gptneox":
        notes.append("query_key_value rows regrouped from GPT-NeoX's per-head [q_h, k_h, v_h] into [Q; K; V] "
                     "(GPTNeoXModel.modify_tensors)")
    EXPORTED_DIR.mkdir(parents=True, exist_ok=True)
    path = EXPORTED_DIR / f"{name}.gguf"
    written = export_gguf(model, family, path)
    # read back: every tensor as written, and (undoing the regrouping) equal to its parameter
    arch, meta, tensors = read_fixture(path)
    if arch != family or set(tensors) != set(written):
        raise SystemExit(f"{name}: read back {arch} {sorted(tensors)}")
    for tname, value in written.items():
        if not np.array_equal(tensors[tname], value.astype(np.float64)):
            raise SystemExit(f"{name}: {tname} reads back differently")
    if family == "gptneox":
        n_head = c.num_attention_heads
        head_dim = c.hidden_size // n_head
        for l in range(c.num_hidden_layers):
            qkv = tensors[f"blk.{l}.attn_qkv.weight"].reshape(3, n_head, head_dim, -1).transpose(1, 0, 2, 3)
            param = model.gpt_neox.layers[l].attention.query_key_value.weight.detach().to(torch.float64).numpy()
            if not np.array_equal(qkv.reshape(param.shape), param):
                raise SystemExit(f"{name}: layer {l} attn_qkv does not undo to query_key_value")
    with torch.no_grad():
        ids = torch.tensor([TOKENS], dtype=torch.long)
        kwargs = {} if family == "mpt" else {"position_ids": torch.arange(len(TOKENS))[None]}
        logits = model(input_ids=ids, use_cache=False, **kwargs).logits[0].to(torch.float32).numpy()
    assert logits.shape == (len(TOKENS), 261) and np.isfinite(logits).all()
    if family == "mpt" and c.attn_config.clip_qkv is not None:
        clipped = clipped_fraction(model, c.attn_config.clip_qkv)
        notes.append(f"clip_qkv clamps {clipped:.1%} of the fused q/k/v values over these tokens")
    sha = file_sha256(path)
    overrides = fixture_overrides(family, c)
    np.savez_compressed(
        EXPORTED_DIR / f"{name}.npz",
        tokens=np.asarray(TOKENS, dtype=np.int32), logits=logits.astype(np.float32),
        family=np.array(family), gguf_file=np.array(path.name), gguf_sha256=np.array(sha),
        weight_type=np.array(EXPORT_WEIGHT_TYPE), fixture_overrides=np.array(json.dumps(overrides, sort_keys=True)),
        session=np.array(json.dumps(DENSE, sort_keys=True)), notes=np.array(json.dumps(notes)),
        config=np.array(c.to_json_string(use_diff=False)), versions=np.array(json.dumps(versions, sort_keys=True)),
        seed=np.array(spec["seed"]),
    )
    print(f"exported/{name}: {type(model).__name__} -> {path.name} ({path.stat().st_size} bytes); logits "
          f"{logits.shape}, max |logit| {np.abs(logits).max():.3f}")
    for note in notes:
        print(f"    note: {note}")
    checked = cross_check(path, logits, DENSE)
    if checked:
        print(f"    {checked}")
    return {"family": family, "model_class": type(model).__name__, "gguf": path.name, "gguf_sha256": sha,
            "gguf_bytes": path.stat().st_size, "seed": spec["seed"], "session": DENSE, "notes": notes}


def clipped_fraction(model, clip: float) -> float:
    import torch

    seen = []
    hooks = [b.attn.Wqkv.register_forward_hook(lambda m, i, o: seen.append(o.detach())) for b in model.transformer.blocks]
    with torch.no_grad():
        model(input_ids=torch.tensor([TOKENS]), use_cache=False)
    for h in hooks:
        h.remove()
    values = torch.cat([s.flatten() for s in seen])
    return float((values.abs() > clip).double().mean())


# Families whose GGUF architecture transformers lists but whose llama.cpp layout its loader does not
# load: why, and where the reference comes from instead.
GGUF_LOADER_FAILS = {
    "gptoss": ("transformers 5.24's GGUF loader does not load llama.cpp's gpt-oss layout (a TypeError reading "
               "gpt-oss.rope.scaling.*; no mapping of ffn_*_exps or attn_sinks; head_dim from hidden_size / "
               "heads); its reference is a transformers-built model exported to GGUF: exported/gptoss "
               "(scripts/make_gptoss_transformers_ref.py)"),
}


def fixture_reference(name: str, spec: dict, manifest: dict, versions: dict) -> None:
    """Writes <name>.npz from the fixture of spec (transformers loading the GGUF), or records in the
    manifest why transformers can't."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    family, overrides, session = spec["family"], spec["overrides"], spec["session"]
    if family in GGUF_LOADER_FAILS:
        print(f"{name}: skipped: {GGUF_LOADER_FAILS[family]}")
        manifest["skipped"][family] = GGUF_LOADER_FAILS[family]
        return
    writer = tiny_models.family_config(family, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_fixture(Path(tmp) / f"{family}.gguf", family, SEED, WEIGHT_TYPE, overrides)
        raw = path.read_bytes()
        again = write_fixture(Path(tmp) / "again.gguf", family, SEED, WEIGHT_TYPE, overrides).read_bytes()
        if raw != again:
            print(f"{name}: the writer's bytes differ between two runs (the tests check the digest)")
        arch, meta, tensors = read_fixture(path)
        if arch not in GGUF_SUPPORTED_ARCHITECTURES:
            reason = (f"GGUF architecture {arch!r} is not one transformers {transformers.__version__} loads "
                      f"from GGUF (modeling_gguf_pytorch_utils.GGUF_SUPPORTED_ARCHITECTURES)")
            exports = [e for e, x in EXPORTS.items() if x["family"] == family]
            if exports:
                reason += (f"; its reference is a transformers-built model exported to GGUF instead: "
                           f"{', '.join(f'exported/{e}' for e in exports)}")
            print(f"{name}: skipped: {reason}")
            manifest["skipped"][family] = reason
            manifest["references"].pop(name, None)
            (REF_DIR / f"{name}.npz").unlink(missing_ok=True)
            return
        notes: list[str] = []
        logits, config = transformers_logits(path, arch, meta, tensors, writer, session, notes)
        digest = fixture_digest(path)
        checked = cross_check(path, logits, session)
    assert logits.shape == (len(TOKENS), len(meta["tokenizer.ggml.tokens"])) and np.isfinite(logits).all()
    np.savez_compressed(
        REF_DIR / f"{name}.npz",
        tokens=np.asarray(TOKENS, dtype=np.int32),
        logits=logits.astype(np.float32),
        family=np.array(family), seed=np.array(SEED), weight_type=np.array(WEIGHT_TYPE),
        overrides=np.array(json.dumps(overrides, sort_keys=True)),
        session=np.array(json.dumps(session, sort_keys=True)),
        fixture_digest=np.array(digest),
        fixture_sha256=np.array(hashlib.sha256(raw).hexdigest()),
        notes=np.array(json.dumps(notes)),
        config=np.array(config.to_json_string(use_diff=False)),
        versions=np.array(json.dumps(versions, sort_keys=True)),
    )
    manifest["skipped"].pop(family, None)
    manifest["references"][name] = {"family": family, "architecture": arch, "model_type": config.model_type,
                                    "session": session, "fixture_digest": digest, "notes": notes}
    print(f"{name}: GGUF {arch} -> transformers {config.model_type}; logits {logits.shape}, "
          f"max |logit| {np.abs(logits).max():.3f}")
    for note in notes:
        print(f"    note: {note}")
    if checked:
        print(f"    {checked}")


def main() -> int:
    import torch
    import transformers

    torch.manual_seed(0)
    refs = references()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=list(refs) + list(EXPORTS),
                        help=f"of {list(refs)} (GGUF fixtures) and {list(EXPORTS)} (exported)")
    args = parser.parse_args()
    REF_DIR.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    manifest.setdefault("references", {})
    manifest.setdefault("skipped", {})
    manifest.setdefault("exported", {})
    versions = {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": _gguf_version()}
    manifest["versions"] = versions
    manifest["tokens"] = TOKENS
    for name in args.names:
        if name not in refs and name not in EXPORTS:
            parser.error(f"unknown reference {name!r}")
        if name in refs:        # gptneox / mpt / phi2: skipped here (with the reason), then exported
            fixture_reference(name, refs[name], manifest, versions)
        if name in EXPORTS:
            manifest["exported"][name] = make_export(name, versions)
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return 0


def cross_check(path: Path, logits: np.ndarray, session: dict) -> str:
    """Where tests/reference_forward.py exists: its NumPy forward's max |diff| from transformers."""
    try:
        import reference_forward
    except ImportError:
        return ""
    try:
        ref = np.asarray(reference_forward.ReferenceModel(str(path)).logits(TOKENS, **session))
    except Exception as e:  # report only: the NumPy reference is another module's business
        return f"reference_forward: {type(e).__name__}: {e}"
    diff = np.abs(ref - logits).max()
    top1 = int((ref.argmax(-1) != logits.argmax(-1)).sum())
    return f"reference_forward vs transformers: max |diff| {diff:.3g}, top-1 mismatches {top1}"


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


if __name__ == "__main__":
    sys.exit(main())
