"""Tiny random llama-family GGUF models for unit tests, written with the `gguf` package.

The vocabulary is GPT-2 byte-level: one token per byte (so any text tokenizes), three merged
tokens, and BOS/EOS control tokens; weights are random with scales that give peaked, position-sensitive attention.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import gguf


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_model(path: Path, *, arch: str = "llama", n_layer: int = 2, n_embd: int = 32, n_head: int = 4,
                     n_head_kv: int = 2, n_ff: int = 48, n_ctx: int = 512, rope_dim: int | None = None,
                     biases: bool = False, tied: bool = True, weight_type: str = "F32", seed: int = 0,
                     freq_base: float = 10000.0, rope_linear_factor: float | None = None,
                     rope_freq_factors: np.ndarray | None = None, qk_scale: float = 0.6) -> Path:
    """qk_scale: spread of the Q/K weights. The default makes attention peaked (sensitive to
    positions, good for checking them); a small one keeps it smooth (tiny numeric differences stay
    tiny, good for comparing two implementations of the same arithmetic)."""
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
    alphabet = byte_level_alphabet()
    space = alphabet[ord(" ")]
    merges = [f"{space} t", "t h", "h e"]                 # a few real BPE merges, ranked
    merged = [f"{space}t", "th", "he"]
    tokens = alphabet + merged + ["<s>", "</s>"]
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(rope_dim or head_dim)
    w.add_rope_freq_base(freq_base)
    if rope_linear_factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_linear_factor)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (256 + len(merged)) + [gguf.TokenType.CONTROL] * 2)
    w.add_token_merges(merges)
    w.add_bos_token_id(n_vocab - 2)
    w.add_eos_token_id(n_vocab - 1)
    w.add_add_bos_token(False)

    def matrix(name: str, rows: int, cols: int, scale: float) -> None:
        value = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if weight_type == "F32":
            w.add_tensor(name, value)
        elif weight_type == "F16":
            w.add_tensor(name, value.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType[weight_type]
            w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)

    def vector(name: str, n: int, center: float, spread: float) -> None:
        w.add_tensor(name, (center + spread * rng.standard_normal(n)).astype(np.float32))

    if rope_freq_factors is not None:  # llama3-style: per-frequency divisors in rope_freqs.weight
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freq_factors, dtype=np.float32))
    matrix("token_embd.weight", n_vocab, n_embd, 1.0)
    vector("output_norm.weight", n_embd, 1.0, 0.1)
    if not tied:
        matrix("output.weight", n_vocab, n_embd, 0.3)
    for l in range(n_layer):
        p = f"blk.{l}."
        vector(p + "attn_norm.weight", n_embd, 1.0, 0.1)
        matrix(p + "attn_q.weight", n_head * head_dim, n_embd, qk_scale)
        matrix(p + "attn_k.weight", n_head_kv * head_dim, n_embd, qk_scale)
        matrix(p + "attn_v.weight", n_head_kv * head_dim, n_embd, 0.3)
        if biases:
            vector(p + "attn_q.bias", n_head * head_dim, 0.0, 0.3)
            vector(p + "attn_k.bias", n_head_kv * head_dim, 0.0, 0.3)
            vector(p + "attn_v.bias", n_head_kv * head_dim, 0.0, 0.3)
        matrix(p + "attn_output.weight", n_embd, n_head * head_dim, 0.2)
        vector(p + "ffn_norm.weight", n_embd, 1.0, 0.1)
        matrix(p + "ffn_gate.weight", n_ff, n_embd, 0.3)
        matrix(p + "ffn_up.weight", n_ff, n_embd, 0.3)
        matrix(p + "ffn_down.weight", n_embd, n_ff, 0.2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------------------------------------------
# Tiny random models of every supported family, with llama.cpp's GGUF conventions
# ---------------------------------------------------------------------------------------------------
# Metadata keys and tensor names follow gguf-py's constants (gguf.Keys / gguf.TENSOR_NAMES) and what
# llama.cpp's convert_hf_to_gguf.py writes and src/llama-model.cpp / src/models/*.cpp read:
#   llama / llama3 / mistral / smollm3 / granite: adjacent-pair ("normal") RoPE;
#   qwen2 / qwen3 / gemma2 / gemma3 / phi3: NeoX RoPE (pairs (i, i + n_rot/2)).
# Norm weights are stored as llama.cpp's converter stores them: for Gemma the converter has already
# added 1 to Gemma's (1 + w) weights, so every GGUF norm here is a plain RMS norm x / rms(x) * w.

FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3", "granite")

FAMILY_FEATURES = {
    "llama": ["adjacent-pair RoPE", "GQA", "SwiGLU", "tied output"],
    "llama3": ["adjacent-pair RoPE", "llama3 RoPE", "GQA", "SwiGLU"],
    "mistral": ["adjacent-pair RoPE", "sliding window", "GQA", "SwiGLU"],
    "qwen2": ["NeoX RoPE", "biases", "GQA", "SwiGLU", "untied output"],
    "qwen3": ["NeoX RoPE", "QK-norm", "head_dim != n_embd/n_head", "GQA", "SwiGLU"],
    "gemma2": ["NeoX RoPE", "sliding window", "soft-cap", "post-norms", "GeGLU", "embedding scale",
               "head_dim != n_embd/n_head"],
    "gemma3": ["NeoX RoPE", "sliding window", "QK-norm", "post-norms", "GeGLU", "embedding scale",
               "per-layer RoPE base", "linear RoPE scaling", "head_dim != n_embd/n_head"],
    "phi3": ["NeoX RoPE", "fused QKV", "fused gate/up", "partial rotary", "LongRoPE", "sliding window",
             "untied output"],
    "smollm3": ["adjacent-pair RoPE", "NoPE", "GQA", "SwiGLU"],
    "granite": ["adjacent-pair RoPE", "granite multipliers", "GQA", "SwiGLU"],
}

_ARCH = {"llama": "llama", "llama3": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
         "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3", "smollm3": "smollm3", "granite": "granite"}

_COMMON = dict(
    n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=None, n_ff=96, n_ctx=512, rope_dim=None,
    freq_base=10000.0, eps=1e-5, qk_scale=0.45, embd_std=1.0, tied=True, biases=False, qk_norm=False,
    post_norms=False, write_head_dims=False, sliding_window=None, rope_linear_factor=None,
    # llama3 RoPE (rope_freqs.weight); None = no tensor
    llama3_factor=None, llama3_low_freq_factor=1.0, llama3_high_freq_factor=4.0, llama3_original_context=64,
    # gemma
    attn_softcap=None, final_softcap=None, sliding_window_pattern=None, freq_base_swa=None,
    # phi3
    fused=True, longrope=False, original_context_length=None, attn_factor=None,
    rope_factors_short=None, rope_factors_long=None,
    # granite
    embedding_scale=None, residual_scale=None, attention_scale=None, logit_scale=None,
)

_FAMILY_DEFAULTS = {
    "llama": dict(),
    # factor 8, low 1, high 4 and a small original context: with head_dim 16 and base 10000 the
    # divisors are [1, 1.30, 7.66, 8, 8, 8, 8, 8] (two are neither 1 nor 8)
    "llama3": dict(llama3_factor=8.0),
    "mistral": dict(sliding_window=5),
    "qwen2": dict(biases=True, tied=False, eps=1e-6),
    # QK-norm weights around 2 keep the normalized scores peaked
    "qwen3": dict(head_dim=24, qk_norm=True, write_head_dims=True, eps=1e-6),
    "gemma2": dict(n_layer=3, head_dim=32, n_ff=128, post_norms=True, write_head_dims=True, eps=1e-6,
                   sliding_window=5, attn_softcap=5.0, final_softcap=3.0, embd_std=0.25),
    "gemma3": dict(n_layer=6, head_dim=32, n_ff=128, post_norms=True, qk_norm=True, write_head_dims=True,
                   eps=1e-6, sliding_window=5, freq_base=1e6, rope_linear_factor=8.0, embd_std=0.25),
    # Phi-4-mini-like: GQA, partial rotary (12 of 16 dims), LongRoPE with a tiny original context
    "phi3": dict(head_dim=16, rope_dim=12, tied=False, sliding_window=5, longrope=True,
                 original_context_length=32, n_ctx=128),
    "smollm3": dict(n_layer=4),
    "granite": dict(embedding_scale=2.0, residual_scale=0.5, attention_scale=0.2, logit_scale=4.0),
}


def llama3_rope_divisors(n_rot: int, freq_base: float, factor: float, low_freq_factor: float,
                         high_freq_factor: float, original_context: int) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's converter computes it from a llama3 rope_scaling (one divisor
    per frequency: theta_i = base^(-2i/n_rot) / divisor_i)."""
    freqs = freq_base ** -(np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    low_wavelen = original_context / low_freq_factor
    high_wavelen = original_context / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def family_config(family: str, **overrides) -> dict:
    """The resolved settings write_family_model uses for `family` (defaults plus overrides)."""
    if family not in _FAMILY_DEFAULTS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    unknown = set(overrides) - set(_COMMON)
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)}; known: {sorted(_COMMON)}")
    c = dict(_COMMON)
    c.update(_FAMILY_DEFAULTS[family])
    c.update(overrides)
    c["family"], c["arch"] = family, _ARCH[family]
    if c["head_dim"] is None:
        c["head_dim"] = c["n_embd"] // c["n_head"]
    if c["rope_dim"] is None:
        c["rope_dim"] = c["head_dim"]
    half = c["rope_dim"] // 2
    if c["longrope"]:
        if c["original_context_length"] is None:
            c["original_context_length"] = max(1, c["n_ctx"] // 4)
        if c["rope_factors_short"] is None:   # near 1, like Phi's short factors
            c["rope_factors_short"] = 1.0 + 0.25 * np.arange(half) / max(1, half - 1)
        if c["rope_factors_long"] is None:    # growing toward the low frequencies, like Phi's long factors
            c["rope_factors_long"] = 1.0 + 5.0 * (np.arange(half) / max(1, half - 1)) ** 2
        if c["attn_factor"] is None:          # what the converter writes for 'longrope'
            scale = c["n_ctx"] / c["original_context_length"]
            c["attn_factor"] = (float(np.sqrt(1 + np.log(scale) / np.log(c["original_context_length"])))
                                if scale > 1.0 else 1.0)
    return c


def _add_byte_level_vocab(w: "gguf.GGUFWriter") -> int:
    alphabet = byte_level_alphabet()
    space = alphabet[ord(" ")]
    merges = [f"{space} t", "t h", "h e"]
    merged = [f"{space}t", "th", "he"]
    tokens = alphabet + merged + ["<s>", "</s>"]
    n_vocab = len(tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (256 + len(merged)) + [gguf.TokenType.CONTROL] * 2)
    w.add_token_merges(merges)
    w.add_bos_token_id(n_vocab - 2)
    w.add_eos_token_id(n_vocab - 1)
    w.add_add_bos_token(False)
    return n_vocab


def write_family_model(path: Path, family: str, *, seed: int = 0, weight_type: str = "F32", **overrides) -> Path:
    """A tiny random GGUF of `family` (see FAMILIES / FAMILY_FEATURES), deterministic from `seed`.

    weight_type: F32, F16 or a gguf quant type name, for the 2-D weights (norms, biases and RoPE
    factor tensors stay F32). overrides: any key of family_config (n_layer, n_embd, n_head,
    n_head_kv, head_dim, n_ff, rope_dim, sliding_window (None: key not written), attn_softcap,
    final_softcap, sliding_window_pattern, rope_linear_factor, longrope, fused, ...).

    The random draws happen in the same order for every family (embeddings, output, then per layer
    norm, q, k, v, ...), so two families that differ only in metadata (llama / mistral / smollm3,
    phi3 fused / split) get identical weights from the same seed. `fused=False` writes phi3's QKV
    and gate/up as separate tensors: llama.cpp can't load that (it requires a 2*n_ff ffn_up), it is
    for checking the reference's fused path against its split one."""
    c = family_config(family, **overrides)
    rng = np.random.default_rng(seed)
    arch = c["arch"]
    n_layer, n_embd, n_head, n_head_kv = c["n_layer"], c["n_embd"], c["n_head"], c["n_head_kv"]
    hd, n_ff, n_rot = c["head_dim"], c["n_ff"], c["rope_dim"]
    q_dim, kv_dim = n_head * hd, n_head_kv * hd

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{family}")
    w.add_block_count(n_layer)
    w.add_context_length(c["n_ctx"])
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if c["write_head_dims"] or hd != n_embd // n_head:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(n_rot)
    w.add_rope_freq_base(c["freq_base"])
    w.add_layer_norm_rms_eps(c["eps"])
    if c["rope_linear_factor"] is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(c["rope_linear_factor"])
    if c["sliding_window"] is not None:
        w.add_sliding_window(int(c["sliding_window"]))
    if c["sliding_window_pattern"] is not None:
        w.add_sliding_window_pattern(int(c["sliding_window_pattern"]))
    if c["freq_base_swa"] is not None:
        w.add_rope_freq_base_swa(c["freq_base_swa"])
    if c["attn_softcap"] is not None:
        w.add_attn_logit_softcapping(c["attn_softcap"])
    if c["final_softcap"] is not None:
        w.add_final_logit_softcapping(c["final_softcap"])
    if c["longrope"]:
        w.add_rope_scaling_orig_ctx_len(int(c["original_context_length"]))
        w.add_rope_scaling_attn_factors(float(c["attn_factor"]))
    if c["embedding_scale"] is not None:
        w.add_embedding_scale(c["embedding_scale"])
    if c["residual_scale"] is not None:
        w.add_residual_scale(c["residual_scale"])
    if c["attention_scale"] is not None:
        w.add_attention_scale(c["attention_scale"])
    if c["logit_scale"] is not None:
        w.add_logit_scale(c["logit_scale"])
    n_vocab = _add_byte_level_vocab(w)

    def add_matrix(name: str, value: np.ndarray) -> None:
        value = value.astype(np.float32)
        if weight_type == "F32":
            w.add_tensor(name, value)
        elif weight_type == "F16":
            w.add_tensor(name, value.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType[weight_type]
            w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)

    def draw(rows: int, cols: int, scale: float) -> np.ndarray:
        return rng.standard_normal((rows, cols)) * scale

    def vector(name: str, n: int, center: float, spread: float) -> None:
        w.add_tensor(name, (center + spread * rng.standard_normal(n)).astype(np.float32))

    if c["llama3_factor"] is not None:
        w.add_tensor("rope_freqs.weight", llama3_rope_divisors(
            n_rot, c["freq_base"], c["llama3_factor"], c["llama3_low_freq_factor"],
            c["llama3_high_freq_factor"], c["llama3_original_context"]))
    if c["longrope"]:
        w.add_tensor("rope_factors_long.weight", np.asarray(c["rope_factors_long"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.asarray(c["rope_factors_short"], dtype=np.float32))
    add_matrix("token_embd.weight", draw(n_vocab, n_embd, c["embd_std"]))
    vector("output_norm.weight", n_embd, 1.0, 0.1)
    if not c["tied"]:
        add_matrix("output.weight", draw(n_vocab, n_embd, 0.3))
    for l in range(n_layer):
        p = f"blk.{l}."
        vector(p + "attn_norm.weight", n_embd, 1.0, 0.1)
        wq, wk, wv = draw(q_dim, n_embd, c["qk_scale"]), draw(kv_dim, n_embd, c["qk_scale"]), draw(kv_dim, n_embd, 0.3)
        if c["family"] == "phi3" and c["fused"]:
            add_matrix(p + "attn_qkv.weight", np.concatenate([wq, wk, wv]))   # rows: q, k, v
        else:
            add_matrix(p + "attn_q.weight", wq)
            add_matrix(p + "attn_k.weight", wk)
            add_matrix(p + "attn_v.weight", wv)
        if c["biases"]:
            vector(p + "attn_q.bias", q_dim, 0.0, 0.3)
            vector(p + "attn_k.bias", kv_dim, 0.0, 0.3)
            vector(p + "attn_v.bias", kv_dim, 0.0, 0.3)
        if c["qk_norm"]:
            vector(p + "attn_q_norm.weight", hd, 2.0, 0.3)
            vector(p + "attn_k_norm.weight", hd, 2.0, 0.3)
        add_matrix(p + "attn_output.weight", draw(n_embd, q_dim, 0.2))
        if c["post_norms"]:
            vector(p + "post_attention_norm.weight", n_embd, 1.0, 0.1)
        vector(p + "ffn_norm.weight", n_embd, 1.0, 0.1)
        gate, up = draw(n_ff, n_embd, 0.3), draw(n_ff, n_embd, 0.3)
        if c["family"] == "phi3" and c["fused"]:
            add_matrix(p + "ffn_up.weight", np.concatenate([gate, up]))       # rows: gate, then up
        else:
            add_matrix(p + "ffn_gate.weight", gate)
            add_matrix(p + "ffn_up.weight", up)
        add_matrix(p + "ffn_down.weight", draw(n_embd, n_ff, 0.2))
        if c["post_norms"]:
            vector(p + "post_ffw_norm.weight", n_embd, 1.0, 0.1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
