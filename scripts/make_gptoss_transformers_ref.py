#!/usr/bin/env python3
"""Writes tests/data/transformers_refs/exported/gptoss.{gguf,npz}: transformers' own gpt-oss forward on
a tiny random model, and the same weights exported to GGUF with llama.cpp's conventions.

Transformers cannot load the tiny gpt-oss fixture from GGUF (transformers 5.24: its GGUF loader reads
`gpt-oss.rope.scaling.*` values with a TypeError, and without YaRN it finds neither llama.cpp's
`ffn_*_exps` experts nor `attn_sinks` and takes head_dim 64 from hidden_size / heads it cannot see
in the GGUF). So, as make_transformers_refs.py does for gptneox / mpt / phi2, the model is built in
transformers' GptOssForCausalLM (eager attention, float32) from a fixed torch seed with the fixtures'
scales, its logits over make_transformers_refs.TOKENS are stored, and its weights are exported the
way llama.cpp's convert_hf_to_gguf.py GptOssModel does: gate_up_proj (E, H, 2I), gate and up
interleaved in its last axis, is split into ffn_gate_exps (even columns) and ffn_up_exps (odd
columns) and transposed to (E, I, H); down_proj (E, I, H) becomes ffn_down_exps (E, H, I); their
biases likewise; self_attn.sinks -> attn_sinks.weight; router -> ffn_gate_inp; post_attention_layernorm
-> post_attention_norm. 2-D weights are rounded to float16 (their GGUF type), the router and experts
stay float32 (a float32 comparison with transformers: MXFP4 experts are checked against the NumPy
reference, which models the engine's 8-bit activation blocks). Key and tensor order are those of
tests/tiny_models.py's gpt-oss writer (test_exported_gguf_follows_the_fixture_layout checks it).

    /tmp/tfenv/bin/python scripts/make_gptoss_transformers_ref.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

import gguf  # noqa: E402
import tiny_models  # noqa: E402
from make_transformers_refs import (DENSE, GGUF_LOADER_FAILS, TOKENS, ParameterTaker, _gguf_version,  # noqa: E402
                                    cross_check, read_fixture)
from test_transformers_refs import EXPORTED_DIR, MANIFEST, file_sha256  # noqa: E402

NAME, SEED, WEIGHT_TYPE = "gptoss", 0, "F16"
# The tiny_models gpt-oss defaults, with float32 experts; the transformers config says the same.
OVERRIDES = {"expert_type": "F32"}
LOADER_REASON = GGUF_LOADER_FAILS["gptoss"]


def build_model():
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    c = tiny_models.family_config("gptoss", **OVERRIDES)
    n_vocab = 261
    config = GptOssConfig(
        num_hidden_layers=c["n_layer"], num_local_experts=c["n_expert"], num_experts_per_tok=c["n_expert_used"],
        vocab_size=n_vocab, hidden_size=c["n_embd"], intermediate_size=c["n_ff"], head_dim=c["head_dim"],
        num_attention_heads=c["n_head"], num_key_value_heads=c["n_head_kv"], sliding_window=c["sliding_window"],
        max_position_embeddings=c["n_ctx"], rms_norm_eps=c["eps"], tie_word_embeddings=False, attention_bias=True,
        rope_parameters={"rope_type": "yarn", "rope_theta": c["freq_base"], "factor": c["yarn_factor"],
                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True,
                         "original_max_position_embeddings": c["yarn_original_context"]},
        bos_token_id=n_vocab - 2, eos_token_id=n_vocab - 1, pad_token_id=None)
    config._attn_implementation = "eager"
    model = GptOssForCausalLM(config).to(torch.float32).eval()
    assert model.config.layer_types == ["sliding_attention" if i % 2 == 0 else "full_attention"
                                        for i in range(c["n_layer"])], model.config.layer_types
    return model, c


SCALES = {  # parameter name suffix -> (center, scale), the fixtures' (tests/tiny_models.py _write_gptoss)
    "embed_tokens.weight": (0.0, 1.0), "lm_head.weight": (0.0, 0.3), "norm.weight": (1.0, 0.1),
    "input_layernorm.weight": (1.0, 0.1), "post_attention_layernorm.weight": (1.0, 0.1),
    "q_proj.weight": (0.0, 0.45), "k_proj.weight": (0.0, 0.45), "v_proj.weight": (0.0, 0.3),
    "q_proj.bias": (0.0, 0.3), "k_proj.bias": (0.0, 0.3), "v_proj.bias": (0.0, 0.3),
    "o_proj.weight": (0.0, 0.2), "o_proj.bias": (0.0, 0.1), "sinks": (1.5, 1.0),
    "router.weight": (0.0, 0.5), "router.bias": (0.0, 0.3),
    "gate_up_proj": (0.0, 0.3), "gate_up_proj_bias": (0.0, 0.1), "down_proj": (0.0, 0.2),
    "down_proj_bias": (0.0, 0.1),
}
F16_2D = ("embed_tokens.weight", "lm_head.weight", "q_proj.weight", "k_proj.weight", "v_proj.weight",
          "o_proj.weight")


def randomize(model) -> None:
    import torch

    generator = torch.Generator().manual_seed(SEED)
    for name, param in model.named_parameters():
        suffix = next((s for s in SCALES if name.endswith(s)), None)
        if suffix is None:
            raise SystemExit(f"no scale for parameter {name}")
        center, scale = SCALES[suffix]
        value = center + scale * torch.randn(param.shape, generator=generator, dtype=torch.float64)
        if name.endswith(F16_2D):
            value = value.to(torch.float16)
        with torch.no_grad():
            param.copy_(value.to(torch.float32))


def export(model, c: dict, path: Path) -> dict:
    """llama.cpp's GptOssModel conversion, in tiny_models._write_gptoss's key and tensor order."""
    cfg = model.config
    take = ParameterTaker(model)

    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_name("tiny-gptoss-transformers")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_expert_feed_forward_length(cfg.intermediate_size)
    w.add_expert_count(cfg.num_local_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    rope = cfg.rope_parameters
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_sliding_window(cfg.sliding_window)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    tiny_models._add_byte_level_vocab(w)
    out: dict[str, np.ndarray] = {}

    def add(name: str, value: np.ndarray, f16: bool = False) -> None:
        value = np.ascontiguousarray(value)
        if f16:
            if not np.array_equal(value.astype(np.float16).astype(value.dtype), value):
                raise SystemExit(f"{name} is not exactly float16")
            value = value.astype(np.float16)
        else:
            value = value.astype(np.float32)
        out[name] = value
        w.add_tensor(name, value)

    add("token_embd.weight", take("model.embed_tokens.weight"), f16=True)
    add("output_norm.weight", take("model.norm.weight"))
    add("output.weight", take("lm_head.weight"), f16=True)
    for l in range(cfg.num_hidden_layers):
        h, p = f"model.layers.{l}.", f"blk.{l}."
        add(p + "attn_norm.weight", take(h + "input_layernorm.weight"))
        for x in "qkv":
            add(p + f"attn_{x}.weight", take(h + f"self_attn.{x}_proj.weight"), f16=True)
        for x in "qkv":
            add(p + f"attn_{x}.bias", take(h + f"self_attn.{x}_proj.bias"))
        add(p + "attn_output.weight", take(h + "self_attn.o_proj.weight"), f16=True)
        add(p + "attn_output.bias", take(h + "self_attn.o_proj.bias"))
        add(p + "attn_sinks.weight", take(h + "self_attn.sinks"))
        add(p + "post_attention_norm.weight", take(h + "post_attention_layernorm.weight"))
        add(p + "ffn_gate_inp.weight", take(h + "mlp.router.weight"))
        add(p + "ffn_gate_inp.bias", take(h + "mlp.router.bias"))
        gate_up = take(h + "mlp.experts.gate_up_proj")              # (E, H, 2I), gate/up interleaved
        gate_up_bias = take(h + "mlp.experts.gate_up_proj_bias")    # (E, 2I)
        down = take(h + "mlp.experts.down_proj")                    # (E, I, H)
        add(p + "ffn_gate_exps.weight", gate_up[:, :, 0::2].transpose(0, 2, 1))
        add(p + "ffn_gate_exps.bias", gate_up_bias[:, 0::2])
        add(p + "ffn_up_exps.weight", gate_up[:, :, 1::2].transpose(0, 2, 1))
        add(p + "ffn_up_exps.bias", gate_up_bias[:, 1::2])
        add(p + "ffn_down_exps.weight", down.transpose(0, 2, 1))
        add(p + "ffn_down_exps.bias", take(h + "mlp.experts.down_proj_bias"))
    take.check("gptoss")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def main() -> int:
    import torch
    import transformers

    model, c = build_model()
    randomize(model)
    EXPORTED_DIR.mkdir(parents=True, exist_ok=True)
    path = EXPORTED_DIR / f"{NAME}.gguf"
    written = export(model, c, path)
    arch, _, tensors = read_fixture(path)
    if arch != "gpt-oss" or set(tensors) != set(written):
        raise SystemExit(f"read back {arch} {sorted(tensors)}")
    for name, value in written.items():
        if not np.array_equal(tensors[name], value.astype(np.float64)):
            raise SystemExit(f"{name} reads back differently")
    with torch.no_grad():
        ids = torch.tensor([TOKENS], dtype=torch.long)
        logits = model(input_ids=ids, position_ids=torch.arange(len(TOKENS))[None],
                       use_cache=False).logits[0].to(torch.float32).numpy()
    assert logits.shape == (len(TOKENS), 261) and np.isfinite(logits).all()
    notes = ["built in transformers' GptOssForCausalLM and exported as llama.cpp's GptOssModel converter does "
             "(gate_up_proj de-interleaved into ffn_gate_exps / ffn_up_exps, experts transposed)",
             "rope_parameters truncate=True: GGUF carries no 'truncate' (llama.cpp floors/ceils the YaRN "
             "correction range); the released gpt-oss config says truncate=false",
             "experts float32 here (MXFP4 is checked against the NumPy reference)"]
    versions = {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": _gguf_version()}
    sha = file_sha256(path)
    np.savez_compressed(
        EXPORTED_DIR / f"{NAME}.npz",
        tokens=np.asarray(TOKENS, dtype=np.int32), logits=logits.astype(np.float32),
        family=np.array("gptoss"), gguf_file=np.array(path.name), gguf_sha256=np.array(sha),
        weight_type=np.array(WEIGHT_TYPE), fixture_overrides=np.array(json.dumps(OVERRIDES, sort_keys=True)),
        session=np.array(json.dumps(DENSE, sort_keys=True)), notes=np.array(json.dumps(notes)),
        config=np.array(model.config.to_json_string(use_diff=False)),
        versions=np.array(json.dumps(versions, sort_keys=True)), seed=np.array(SEED),
    )
    manifest = json.loads(MANIFEST.read_text())
    manifest.setdefault("exported", {})[NAME] = {
        "family": "gptoss", "model_class": type(model).__name__, "gguf": path.name, "gguf_sha256": sha,
        "gguf_bytes": path.stat().st_size, "seed": SEED, "session": DENSE, "notes": notes}
    manifest.setdefault("skipped", {})["gptoss"] = LOADER_REASON
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"exported/{NAME}: {path.stat().st_size} bytes; logits {logits.shape}, max |logit| "
          f"{np.abs(logits).max():.3f}")
    print("   ", cross_check(path, logits, DENSE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
