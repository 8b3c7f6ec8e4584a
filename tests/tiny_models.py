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
                     rope_freq_factors: np.ndarray | None = None, qk_scale: float = 0.6,
                     padding_rows: int = 0, weight_types: dict[str, str] | None = None) -> Path:
    """weight_types: types of some 2-D weights by name without the blk.N. prefix (e.g.
    {"ffn_down.weight": "Q4_0", "output.weight": "F16"}), overriding weight_type for them.
    qk_scale: spread of the Q/K weights. The default makes attention peaked (sensitive to
    positions, good for checking them); a small one keeps it smooth (tiny numeric differences stay
    tiny, good for comparing two implementations of the same arithmetic). padding_rows: token_embd
    rows past the tokenizer's tokens (negative: fewer rows than tokens), F32 and tied only."""
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
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
    n_vocab = _add_byte_level_vocab(w)

    def matrix(name: str, rows: int, cols: int, scale: float) -> None:
        own_type = (weight_types or {}).get(name.split(".", 2)[-1] if name.startswith("blk.") else name, weight_type)
        add_weight(w, name, rng.standard_normal((rows, cols)) * scale, own_type)

    def vector(name: str, n: int, center: float, spread: float) -> None:
        w.add_tensor(name, (center + spread * rng.standard_normal(n)).astype(np.float32))

    if rope_freq_factors is not None:  # llama3-style: per-frequency divisors in rope_freqs.weight
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freq_factors, dtype=np.float32))
    if padding_rows:
        assert weight_type == "F32" and tied
        embd = (rng.standard_normal((n_vocab, n_embd)) * 1.0).astype(np.float32)
        # As converters pad the embedding to a multiple of 64: rows no token has. Here they are
        # +-8x copies of real rows, so one of each pair out-scores every real token for most
        # hidden states: unless sampling masks them, they win.
        k = np.arange(max(padding_rows, 0)) // 2
        sign = np.where(np.arange(max(padding_rows, 0)) % 2 == 0, 8.0, -8.0)[:, None]
        rows = np.concatenate([embd, sign * embd[k]]) if padding_rows > 0 else embd[:padding_rows]
        w.add_tensor("token_embd.weight", rows.astype(np.float32))
    else:
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

FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3", "granite",
            "gptoss")

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
    "gptoss": ["NeoX RoPE", "YaRN", "learned sinks", "alternating sliding window", "biases", "GQA",
               "mixture of experts", "MXFP4 experts", "clamped SwiGLU", "untied output"],
    # the StreamingLLM paper's own models (issue 13); not in FAMILIES until the engine runs them
    "gptneox": ["NeoX RoPE", "partial rotary", "LayerNorm", "biases", "fused QKV", "parallel residual", "GELU",
                "untied output"],
    "falcon": ["NeoX RoPE", "LayerNorm", "fused QKV", "MQA", "parallel residual", "GELU", "tied output"],
    "mpt": ["ALiBi", "LayerNorm without bias", "fused QKV", "clamp_kqv", "GELU", "tied output",
            "n_head not a power of two"],
    "bloom": ["ALiBi", "LayerNorm", "embedding LayerNorm", "biases", "fused QKV", "GELU (tanh)", "tied output",
              "n_head not a power of two"],
    "stablelm": ["NeoX RoPE", "partial rotary", "LayerNorm", "GQA", "SwiGLU", "untied output"],
    "phi2": ["NeoX RoPE", "partial rotary", "LayerNorm", "biases", "parallel residual", "GELU (tanh)",
             "output bias"],
}

# The paper's models (Pythia, Falcon, MPT, Bloom, StableLM, Phi-2): LayerNorm with bias, GELU, parallel
# residuals, partial rotary, ALiBi. What each GGUF holds, as llama.cpp's convert_hf_to_gguf.py writes it
# and src/models/<arch>.cpp loads it (numpy shapes (rows, cols) = ggml's {cols, rows}):
# - gptneox: keys context_length, embedding_length, block_count, feed_forward_length,
#   rope.dimension_count = int(rotary_pct * head_dim), attention.head_count (no head_count_kv, no
#   rope.freq_base: llama.cpp's defaults n_head / 10000), use_parallel_residual (required),
#   attention.layer_norm_epsilon. Tensors: output.weight (required), {attn,ffn,output}_norm.{weight,bias},
#   attn_qkv.{weight,bias} with rows [Q; K; V] (GPT-NeoX's per-head interleaved [q_h, k_h, v_h] rows are
#   regrouped by GPTNeoXModel.modify_tensors; gptneox.cpp then views Q, K, V at offsets 0, n_embd,
#   n_embd + n_embd_gqa of each row), attn_output, ffn_up, ffn_down, each with bias.
# - falcon: head_count_kv (1 for 7B), tensor_data_layout "jploski", attention.layer_norm_epsilon; no
#   rope keys (n_rot must equal head_dim). attn_norm.{weight,bias}; attn_qkv.weight rows [Q; K; V]
#   (FalconModel.modify_tensors regroups Falcon's per-KV-group [q.., k, v] rows); attn_output, ffn_up,
#   ffn_down without biases; output.weight optional (tied). The "new decoder architecture" (40B) adds
#   attn_norm_2.{weight,bias}: the converter maps ln_mlp -> attn_norm and ln_attn -> attn_norm_2, and
#   falcon.cpp feeds attention from attn_norm_2 and the MLP from attn_norm.
# - mpt: attention.max_alibi_bias (absent or 0: no ALiBi), optional attention.clamp_kqv,
#   attention.layer_norm_epsilon; head_count_kv only when the model has kv_n_heads. Norms are weight
#   only (MPT's no_bias), attn_qkv.weight rows [Q; K; V] (MPT's own layout), no biases, tied output.
# - bloom: head_count_kv = head_count, attention.layer_norm_epsilon; max_alibi_bias is not in the file
#   (llama.cpp hard-codes 8). token_embd_norm.{weight,bias}; attn_qkv rows [Q; K; V] (BloomModel.
#   modify_tensors regroups Bloom's per-head [q_h, k_h, v_h] rows, as for GPT-NeoX); biases everywhere;
#   tied output.
# - stablelm: rope.dimension_count = int(partial_rotary_factor * head_dim), head_count_kv,
#   use_parallel_residual (written by the converter, not read by llama.cpp: it uses parallel residual
#   when blk.N.ffn_norm is absent, StableLM 2 12B), attention.layer_norm_epsilon. attn_q/k/v (optional
#   biases), attn_output without bias, optional per-head attn_q_norm (n_head, head_dim) /
#   attn_k_norm (n_head_kv, head_dim) LayerNorm weights (StableLM 2 12B), ffn_gate/up/down, untied
#   output.weight.
# - phi2: head_count_kv, attention.layer_norm_epsilon, rope.dimension_count. One attn_norm.{weight,bias}
#   per layer feeding attention and MLP; attn_q/k/v.{weight,bias} (transformers' PhiForCausalLM, what the
#   converter sees today) or attn_qkv.{weight,bias} (the old fused checkpoints; llama.cpp loads either);
#   attn_output, ffn_up, ffn_down with biases; output.weight and output.bias.
PAPER_FAMILIES = ("gptneox", "falcon", "mpt", "bloom", "stablelm", "phi2")

_ARCH = {"llama": "llama", "llama3": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
         "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3", "smollm3": "smollm3", "granite": "granite",
         "gptneox": "gptneox", "falcon": "falcon", "mpt": "mpt", "bloom": "bloom", "stablelm": "stablelm",
         "phi2": "phi2", "gptoss": "gpt-oss"}

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
    # paper families (PAPER_FAMILIES): rope_dim = int(rotary_pct * head_dim) when rope_dim is None;
    # parallel_residual (gptneox's key; stablelm: no ffn_norm); falcon's new decoder architecture
    # (attn_norm_2, n_head_kv 2 unless given); MPT's clip_qkv and ALiBi max bias (None: key not written)
    rotary_pct=None, parallel_residual=False, falcon_new_decoder=False, clamp_kqv=None, max_alibi_bias=None,
    # gpt-oss: experts (n_ff is each expert's width), their weight type, YaRN, the sink logits' mean
    n_expert=4, n_expert_used=2, expert_type="MXFP4", yarn_factor=None, yarn_original_context=None,
    sink_center=1.5,
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
    # gpt-oss-like: layer 0 slides (window 5), layer 1 is full; 4 experts of width 32, 2 per token,
    # MXFP4; YaRN factor 4 over an original context of 64 (context 256 = 4 * 64; the ramp spans dims
    # 0..3 of 8 at head_dim 16); learned sinks around 1.5; q/k/v/o biases; untied output
    "gptoss": dict(n_ff=32, n_ctx=256, sliding_window=5, biases=True, tied=False, yarn_factor=4.0,
                   yarn_original_context=64),
    # Pythia-like: 25% rotary (4 of 16 dims), parallel residual, untied output
    "gptneox": dict(n_head_kv=4, n_ff=128, rotary_pct=0.25, parallel_residual=True, biases=True, tied=False),
    # Falcon-7B-like: multi-query attention, one LayerNorm for both branches, no linear biases, tied
    "falcon": dict(n_head_kv=1, n_ff=128, parallel_residual=True),
    # MPT-7B-like but 6 heads (not a power of two): ALiBi with max bias 8, no biases, tied
    "mpt": dict(n_embd=48, n_head=6, n_head_kv=6, n_ff=192, max_alibi_bias=8.0),
    # Bloom-like, 6 heads: ALiBi (8, fixed by llama.cpp), embedding LayerNorm, biases, tied
    "bloom": dict(n_embd=48, n_head=6, n_head_kv=6, n_ff=192, biases=True),
    # StableLM-3B-4E1T-like: 25% rotary, sequential residual, SwiGLU, GQA (as StableLM 2 12B), untied
    "stablelm": dict(rotary_pct=0.25, tied=False, fused=False),
    # Phi-2-like: half of each head rotates (HF PhiConfig's default; phi-2 itself: 32 of 80), shared
    # LayerNorm, parallel residual, separate q/k/v with biases, output bias
    "phi2": dict(n_head_kv=4, n_ff=128, rotary_pct=0.5, parallel_residual=True, biases=True, tied=False,
                 fused=False),
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
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES + PAPER_FAMILIES}")
    unknown = set(overrides) - set(_COMMON)
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)}; known: {sorted(_COMMON)}")
    c = dict(_COMMON)
    c.update(_FAMILY_DEFAULTS[family])
    c.update(overrides)
    c["family"], c["arch"] = family, _ARCH[family]
    if c["head_dim"] is None:
        c["head_dim"] = c["n_embd"] // c["n_head"]
    if c["family"] == "falcon" and c["falcon_new_decoder"] and "n_head_kv" not in overrides:
        c["n_head_kv"] = 2
    if c["rope_dim"] is None:
        c["rope_dim"] = int(c["rotary_pct"] * c["head_dim"]) if c["rotary_pct"] else c["head_dim"]
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


def add_weight(w: "gguf.GGUFWriter", name: str, value: np.ndarray, weight_type: str) -> None:
    """A 2-D weight as F32, F16 or a gguf quantization type (by name)."""
    value = value.astype(np.float32)
    if weight_type == "F32":
        w.add_tensor(name, value)
    elif weight_type == "F16":
        w.add_tensor(name, value.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType[weight_type]
        w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)


def write_family_model(path: Path, family: str, *, seed: int = 0, weight_type: str = "F32", **overrides) -> Path:
    """A tiny random GGUF of `family` (see FAMILIES, PAPER_FAMILIES / FAMILY_FEATURES), deterministic
    from `seed`. PAPER_FAMILIES are written by _write_paper_family (its docstring lists their overrides).

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
    if family in PAPER_FAMILIES:
        return _write_paper_family(Path(path), c, seed, weight_type)
    if family == "gptoss":
        return _write_gptoss(Path(path), c, seed, weight_type)
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
        add_weight(w, name, value, weight_type)

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


def _write_paper_family(path: Path, c: dict, seed: int, weight_type: str) -> Path:
    """write_family_model for PAPER_FAMILIES (see the table above PAPER_FAMILIES).

    Overrides: biases (gptneox / bloom / phi2: every linear layer, default on, off is for the
    reference only; stablelm: q/k/v biases; mpt: MPT with no_bias=False, norm biases too; falcon:
    refused), fused (attn_qkv rows [Q; K; V] vs attn_q / attn_k / attn_v: llama.cpp loads either for
    phi2 / stablelm, only the fused one for the others), tied, parallel_residual (gptneox: the key;
    stablelm: no ffn_norm; falcon / phi2 are always parallel), falcon_new_decoder, qk_norm (stablelm),
    clamp_kqv / max_alibi_bias (mpt). The weights are drawn in the same order whatever `fused` is, so
    fused and split files from one seed hold the same numbers."""
    family, arch = c["family"], c["arch"]
    rng = np.random.default_rng(seed)
    n_layer, n_embd, n_head, n_head_kv = c["n_layer"], c["n_embd"], c["n_head"], c["n_head_kv"]
    hd, n_ff, n_rot = c["head_dim"], c["n_ff"], c["rope_dim"]
    q_dim, kv_dim = n_head * hd, n_head_kv * hd
    if hd * n_head != n_embd:
        raise ValueError(f"{family}: head_dim * n_head must be n_embd (llama.cpp has no key_length here)")
    if family == "falcon" and (c["biases"] or n_rot != hd):
        raise ValueError("falcon: no linear biases, and every head dimension rotates (llama.cpp asserts n_rot == head_dim)")
    if family == "bloom" and c["max_alibi_bias"] is not None:
        raise ValueError("bloom: llama.cpp fixes the ALiBi max bias at 8; there is no key for it")
    if family != "mpt" and (c["clamp_kqv"] is not None or c["max_alibi_bias"] is not None):
        raise ValueError("clamp_kqv and max_alibi_bias are MPT settings")
    if family != "stablelm" and c["qk_norm"]:
        raise ValueError("qk_norm: of the paper families only stablelm (StableLM 2 12B) has per-head QK norms")
    parallel = bool(c["parallel_residual"]) or family in ("falcon", "phi2")
    linear_biases = bool(c["biases"]) and family in ("gptneox", "bloom", "phi2", "mpt")
    norm_biases = family != "mpt" or bool(c["biases"])

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{family}")
    w.add_context_length(c["n_ctx"])
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    if family in ("falcon", "bloom", "stablelm", "phi2") or n_head_kv != n_head:
        w.add_head_count_kv(n_head_kv)
    if family in ("gptneox", "stablelm", "phi2"):
        w.add_rope_dimension_count(n_rot)
    if family not in ("mpt", "bloom") and c["freq_base"] != 10000.0:
        w.add_rope_freq_base(c["freq_base"])
    if family in ("gptneox", "stablelm"):
        w.add_parallel_residual(parallel)
    w.add_layer_norm_eps(c["eps"])
    if family == "falcon":
        w.add_tensor_data_layout("jploski")
    if family == "mpt":
        if c["clamp_kqv"] is not None:
            w.add_clamp_kqv(float(c["clamp_kqv"]))
        if c["max_alibi_bias"] is not None:
            w.add_max_alibi_bias(float(c["max_alibi_bias"]))
    n_vocab = _add_byte_level_vocab(w)

    def add_matrix(name: str, value: np.ndarray) -> None:
        add_weight(w, name, value, weight_type)

    def draw(rows: int, cols: int, scale: float) -> np.ndarray:
        return rng.standard_normal((rows, cols)) * scale

    def draw_vector(n: int, center: float, spread: float) -> np.ndarray:
        return (center + spread * rng.standard_normal(n)).astype(np.float32)

    def vector(name: str, n: int, center: float, spread: float) -> None:
        w.add_tensor(name, draw_vector(n, center, spread))

    def layer_norm(name: str, bias: bool = True) -> None:
        vector(name + ".weight", n_embd, 1.0, 0.1)
        if bias:
            vector(name + ".bias", n_embd, 0.0, 0.1)

    def linear(name: str, rows: int, cols: int, scale: float, bias: bool, bias_spread: float = 0.1) -> None:
        add_matrix(name + ".weight", draw(rows, cols, scale))
        if bias:
            vector(name + ".bias", rows, 0.0, bias_spread)

    add_matrix("token_embd.weight", draw(n_vocab, n_embd, c["embd_std"]))
    if family == "bloom":
        layer_norm("token_embd_norm")
    layer_norm("output_norm", norm_biases)
    if not c["tied"]:
        linear("output", n_vocab, n_embd, 0.3, family == "phi2", 0.3)
    for l in range(n_layer):
        p = f"blk.{l}."
        layer_norm(p + "attn_norm", norm_biases)
        if family == "falcon" and c["falcon_new_decoder"]:
            layer_norm(p + "attn_norm_2")
        wq, wk, wv = draw(q_dim, n_embd, c["qk_scale"]), draw(kv_dim, n_embd, c["qk_scale"]), draw(kv_dim, n_embd, 0.3)
        qkv_bias = linear_biases or (family == "stablelm" and bool(c["biases"]))
        if qkv_bias:
            bq, bk, bv = draw_vector(q_dim, 0.0, 0.3), draw_vector(kv_dim, 0.0, 0.3), draw_vector(kv_dim, 0.0, 0.3)
        if c["fused"]:
            add_matrix(p + "attn_qkv.weight", np.concatenate([wq, wk, wv]))   # rows: Q, then K, then V
            if qkv_bias:
                w.add_tensor(p + "attn_qkv.bias", np.concatenate([bq, bk, bv]))
        else:
            add_matrix(p + "attn_q.weight", wq)
            add_matrix(p + "attn_k.weight", wk)
            add_matrix(p + "attn_v.weight", wv)
            if qkv_bias:
                w.add_tensor(p + "attn_q.bias", bq)
                w.add_tensor(p + "attn_k.bias", bk)
                w.add_tensor(p + "attn_v.bias", bv)
        if family == "stablelm" and c["qk_norm"]:   # StableLM 2 12B: a LayerNorm weight per head
            w.add_tensor(p + "attn_q_norm.weight", draw_vector(n_head * hd, 2.0, 0.3).reshape(n_head, hd))
            w.add_tensor(p + "attn_k_norm.weight", draw_vector(n_head_kv * hd, 2.0, 0.3).reshape(n_head_kv, hd))
        linear(p + "attn_output", n_embd, q_dim, 0.2, linear_biases)
        if family in ("gptneox", "mpt", "bloom") or (family == "stablelm" and not parallel):
            layer_norm(p + "ffn_norm", norm_biases)
        if family == "stablelm":
            add_matrix(p + "ffn_gate.weight", draw(n_ff, n_embd, 0.3))
        linear(p + "ffn_up", n_ff, n_embd, 0.3, linear_biases)
        linear(p + "ffn_down", n_embd, n_ff, 0.2, linear_biases)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_fused_qkv_rows(family: str, n_head: int, n_head_kv: int, head_dim: int) -> np.ndarray:
    """For each row of the checkpoint's own fused query_key_value matrix, the row of the GGUF attn_qkv
    ([Q; K; V]) that llama.cpp's converter moves it to: hf[i] = gguf[rows[i]].

    GPT-NeoX and Bloom interleave per head (view(n_head, 3, head_dim)): q_h, k_h, v_h
    (GPTNeoXModel / BloomModel.modify_tensors). Falcon groups per KV head (view(n_head_kv,
    n_head / n_head_kv + 2, head_dim)): the group's queries, then its key, then its value; Falcon-7B's
    multi-query layout is the one-group case (FalconModel.modify_tensors). MPT, Phi-2's old Wqkv and
    StableLM are [Q; K; V] already."""
    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    order = []
    if family in ("gptneox", "bloom"):
        assert n_head == n_head_kv
        for h in range(n_head):
            for block in range(3):   # q, k, v of head h
                start = block * q_dim + h * head_dim
                order.extend(range(start, start + head_dim))
    elif family == "falcon":
        per_group = n_head // n_head_kv
        for g in range(n_head_kv):
            for i in range(per_group):
                start = (g * per_group + i) * head_dim
                order.extend(range(start, start + head_dim))
            order.extend(range(q_dim + g * head_dim, q_dim + (g + 1) * head_dim))
            order.extend(range(q_dim + kv_dim + g * head_dim, q_dim + kv_dim + (g + 1) * head_dim))
    else:
        order = list(range(q_dim + 2 * kv_dim))
    return np.asarray(order)


def _write_gptoss(path: Path, c: dict, seed: int, weight_type: str) -> Path:
    """write_family_model for gpt-oss, with llama.cpp's GGUF conventions (gguf-py MODEL_ARCH.GPT_OSS):
    keys expert_count, expert_used_count, expert_feed_forward_length, attention.sliding_window (even
    layers slide), rope.scaling.type "yarn" with factor and original_context_length; per layer
    attn_norm, attn_q/k/v/output with biases, attn_sinks.weight (n_head float32 logits),
    post_attention_norm (the pre-FFN norm), ffn_gate_inp.{weight,bias} (router), and
    ffn_{gate,up,down}_exps.weight (3-D: numpy (n_expert, rows, cols), `expert_type`) with
    .bias (n_expert, rows) float32. Gate and up are separate (llama.cpp's converter splits
    transformers' interleaved gate_up_proj). weight_type is for the other 2-D weights."""
    rng = np.random.default_rng(seed)
    n_layer, n_embd, n_head, n_head_kv = c["n_layer"], c["n_embd"], c["n_head"], c["n_head_kv"]
    hd, n_ff, n_exp = c["head_dim"], c["n_ff"], c["n_expert"]
    q_dim, kv_dim = n_head * hd, n_head_kv * hd
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_name("tiny-gptoss")
    w.add_block_count(n_layer)
    w.add_context_length(c["n_ctx"])
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_expert_feed_forward_length(n_ff)
    w.add_expert_count(n_exp)
    w.add_expert_used_count(c["n_expert_used"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if c["write_head_dims"] or hd != n_embd // n_head:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(c["rope_dim"])
    w.add_rope_freq_base(c["freq_base"])
    w.add_layer_norm_rms_eps(c["eps"])
    if c["sliding_window"] is not None:
        w.add_sliding_window(int(c["sliding_window"]))
    if c["yarn_factor"] is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(c["yarn_factor"])
        w.add_rope_scaling_orig_ctx_len(int(c["yarn_original_context"]))
    n_vocab = _add_byte_level_vocab(w)

    def draw(*shape: int, scale: float) -> np.ndarray:
        return rng.standard_normal(shape) * scale

    def vector(name: str, n: int, center: float, spread: float) -> None:
        w.add_tensor(name, (center + spread * rng.standard_normal(n)).astype(np.float32))

    add_weight(w, "token_embd.weight", draw(n_vocab, n_embd, scale=c["embd_std"]), weight_type)
    vector("output_norm.weight", n_embd, 1.0, 0.1)
    if not c["tied"]:
        add_weight(w, "output.weight", draw(n_vocab, n_embd, scale=0.3), weight_type)
    for l in range(n_layer):
        p = f"blk.{l}."
        vector(p + "attn_norm.weight", n_embd, 1.0, 0.1)
        add_weight(w, p + "attn_q.weight", draw(q_dim, n_embd, scale=c["qk_scale"]), weight_type)
        add_weight(w, p + "attn_k.weight", draw(kv_dim, n_embd, scale=c["qk_scale"]), weight_type)
        add_weight(w, p + "attn_v.weight", draw(kv_dim, n_embd, scale=0.3), weight_type)
        if c["biases"]:
            vector(p + "attn_q.bias", q_dim, 0.0, 0.3)
            vector(p + "attn_k.bias", kv_dim, 0.0, 0.3)
            vector(p + "attn_v.bias", kv_dim, 0.0, 0.3)
        add_weight(w, p + "attn_output.weight", draw(n_embd, q_dim, scale=0.2), weight_type)
        if c["biases"]:
            vector(p + "attn_output.bias", n_embd, 0.0, 0.1)
        vector(p + "attn_sinks.weight", n_head, c["sink_center"], 1.0)
        vector(p + "post_attention_norm.weight", n_embd, 1.0, 0.1)
        add_weight(w, p + "ffn_gate_inp.weight", draw(n_exp, n_embd, scale=0.5), "F32")
        vector(p + "ffn_gate_inp.bias", n_exp, 0.0, 0.3)
        for name, rows, cols, scale in (("ffn_gate_exps", n_ff, n_embd, 0.3), ("ffn_up_exps", n_ff, n_embd, 0.3),
                                        ("ffn_down_exps", n_embd, n_ff, 0.2)):
            add_weight(w, p + name + ".weight", draw(n_exp, rows, cols, scale=scale), c["expert_type"])
            w.add_tensor(p + name + ".bias", draw(n_exp, rows, scale=0.1).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rewrite_gguf(src: Path, dst: Path, *, keys: dict | None = None, drop: tuple = (),
                 tensors: dict | None = None) -> Path:
    """A copy of the GGUF `src` at `dst` with metadata `keys` (name -> (value, GGUFValueType), or None
    to leave the key out) set, added or removed, the tensors named in `drop` left out and those in `tensors` (name -> array) replaced:
    for fixtures a writer cannot make (bad shapes, missing tensors, contradicting keys)."""
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture" or field.name in (keys or {}):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(field.name, field.contents(), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(field.name, field.contents(), vtype)
    for name, spec in (keys or {}).items():   # None: the key left out
        if spec is not None:
            w.add_key_value(name, *spec)
    for t in reader.tensors:
        if t.name in drop:
            continue
        if tensors and t.name in tensors:
            w.add_tensor(t.name, np.asarray(tensors[t.name], dtype=np.float32))
        else:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
