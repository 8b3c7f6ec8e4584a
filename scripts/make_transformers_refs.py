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

A family transformers cannot load from GGUF is skipped and manifest.json says why. The tests need
neither torch nor transformers: only these arrays. Run after a change to tests/tiny_models.py (the
test says "reference stale" when a fixture no longer matches its stored digest):

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install numpy gguf torch transformers accelerate sentencepiece pytest
    /tmp/tfenv/bin/python scripts/make_transformers_refs.py             # from the repo root: all
    /tmp/tfenv/bin/python scripts/make_transformers_refs.py llama qwen3  # only these references

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
from test_transformers_refs import MANIFEST, REF_DIR, fixture_digest, write_fixture  # noqa: E402

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


def check_weights(model, arch: str, tensors: dict) -> None:
    """Every GGUF tensor became a parameter equal to it after transformers' conversion (llama Q/K
    un-permuted, Gemma norms minus 1), and no parameter kept its random initialization."""
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


def main() -> int:
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    torch.manual_seed(0)
    refs = references()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=list(refs), help=f"of {list(refs)}")
    args = parser.parse_args()
    REF_DIR.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    manifest.setdefault("references", {})
    manifest.setdefault("skipped", {})
    versions = {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": _gguf_version()}
    manifest["versions"] = versions
    manifest["tokens"] = TOKENS
    for name in args.names:
        spec = refs[name]
        family, overrides, session = spec["family"], spec["overrides"], spec["session"]
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
                print(f"{name}: skipped: {reason}")
                manifest["skipped"][family] = reason
                manifest["references"].pop(name, None)
                (REF_DIR / f"{name}.npz").unlink(missing_ok=True)
                continue
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
