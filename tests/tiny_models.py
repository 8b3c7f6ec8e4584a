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
