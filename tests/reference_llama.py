"""A plain NumPy reference of the llama-family forward pass and of StreamingLLM's attention sets.

Written from the architecture's definition (RMSNorm, RoPE, grouped-query attention, SwiGLU) and from
streaming.md: for every query t it materializes A(t) and the positions within the cache, then runs
full softmax attention over exactly those tokens. Weights are dequantized with the `gguf` package.
Everything is float64 so the engine is compared with an exact answer, not with itself.
"""
from __future__ import annotations

import numpy as np
import gguf


# Weight formats with 32-element blocks: like llama.cpp (Q8_0 / Q8_1 activation blocks), the engine
# multiplies them with the input rounded to 8-bit blocks of 32: d = fp16(max|x| / 127),
# q = round-half-even(x * 127 / max|x|), input ~= d * q.
QUANTIZED_INPUT_32 = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"}


def round_input_to_8bit_blocks(x: np.ndarray) -> np.ndarray:
    blocks = x.astype(np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inverse)  # numpy rounds half to even
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return (d * q).reshape(x.shape).astype(np.float64)


def attention_set(t: int, mode: str, n_sink: int, window: int) -> list[int]:
    """A(t) in token order (streaming.md, "Modes")."""
    if mode == "dense":
        return list(range(t + 1))
    s = n_sink if mode == "streaming" else 0
    sinks = list(range(min(s, t + 1)))
    return sinks + list(range(max(s, t - window + 1), t + 1))


class ReferenceLlama:
    def __init__(self, path: str):
        reader = gguf.GGUFReader(path)
        self.arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
        f = reader.fields

        def scalar(key, default=None):
            field = f.get(f"{self.arch}.{key}")
            return default if field is None else field.parts[field.data[0]][0].item()

        self.n_layer = scalar("block_count")
        self.n_embd = scalar("embedding_length")
        self.n_head = scalar("attention.head_count")
        self.n_head_kv = scalar("attention.head_count_kv", self.n_head)
        self.head_dim = scalar("attention.key_length", self.n_embd // self.n_head)
        self.n_rot = scalar("rope.dimension_count", self.head_dim)
        self.freq_base = scalar("rope.freq_base", 10000.0)
        self.eps = scalar("attention.layer_norm_rms_epsilon", 1e-5)
        self.neox = self.arch == "qwen2"
        scaling = f.get(f"{self.arch}.rope.scaling.type")
        self.linear_factor = 1.0
        if scaling is not None and str(bytes(scaling.parts[-1]), "utf-8") == "linear":
            self.linear_factor = scalar("rope.scaling.factor")
        self.w = {}
        self.quantized_input = set()  # weights whose matmul input the engine rounds to 8-bit blocks
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.w[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
            if t.tensor_type.name in QUANTIZED_INPUT_32:
                self.quantized_input.add(t.name)
        self.freq_factors = self.w.get("rope_freqs.weight", np.ones(self.n_rot // 2))

    def rope(self, x: np.ndarray, pos: int) -> np.ndarray:
        """Rotates each head vector in x (n_heads, head_dim) to position pos."""
        half = self.n_rot // 2
        # Linear scaling divides positions by the factor; llama3-style factors divide each frequency.
        theta = self.freq_base ** (-2.0 * np.arange(half) / self.n_rot) / self.freq_factors * (pos / self.linear_factor)
        c, s = np.cos(theta), np.sin(theta)
        y = x.copy()
        if self.neox:
            a, b = np.arange(half), np.arange(half) + half
        else:
            a, b = 2 * np.arange(half), 2 * np.arange(half) + 1
        y[:, a] = x[:, a] * c - x[:, b] * s
        y[:, b] = x[:, a] * s + x[:, b] * c
        return y

    def matmul(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T, with x rounded as the engine rounds it for that weight's format."""
        if name in self.quantized_input:
            x = round_input_to_8bit_blocks(x)
        return x @ self.w[name].T

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x) + self.eps) * w

    def logits(self, tokens: list[int], mode: str = "dense", n_sink: int = 4, window: int = 1 << 30,
               layers_out: list | None = None, kv_half: bool = False) -> np.ndarray:
        """Logits (len(tokens), n_vocab): token t sees exactly A(t), each member at its rank in A(t).

        The K/V of a token depend on what that token itself attended to, so each layer keeps the
        outputs of every token (as a cache would).

        kv_half: the engine's (and llama.cpp's) half-precision cache: keys and values are stored in
        half precision, and the query and the attention weights are rounded to it as well."""
        half = (lambda a: a.astype(np.float16).astype(np.float64)) if kv_half else (lambda a: a)
        n = len(tokens)
        hd, group = self.head_dim, self.n_head // self.n_head_kv
        x = self.w["token_embd.weight"][tokens].copy()
        if layers_out is not None:
            layers_out.append(x.copy())
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = np.stack([self.rms(x[i], self.w[p + "attn_norm.weight"]) for i in range(n)])
            q = self.matmul(h, p + "attn_q.weight") + self.w.get(p + "attn_q.bias", 0)
            k = self.matmul(h, p + "attn_k.weight") + self.w.get(p + "attn_k.bias", 0)
            v = self.matmul(h, p + "attn_v.weight") + self.w.get(p + "attn_v.bias", 0)
            q = q.reshape(n, self.n_head, hd)
            k = k.reshape(n, self.n_head_kv, hd)
            v = v.reshape(n, self.n_head_kv, hd)
            attn = np.zeros((n, self.n_head, hd))
            for t in range(n):
                members = attention_set(t, mode, n_sink, window)
                qt = half(self.rope(q[t], len(members) - 1))
                ks = half(np.stack([self.rope(k[j], rank) for rank, j in enumerate(members)]))  # (m, kv, hd)
                vs = half(v[members])
                for head in range(self.n_head):
                    g = head // group
                    scores = ks[:, g, :] @ qt[head] / np.sqrt(hd)
                    w = np.exp(scores - scores.max())
                    w /= w.sum()
                    attn[t, head] = half(w) @ vs[:, g, :]
            x = x + self.matmul(attn.reshape(n, -1), p + "attn_output.weight")
            h = np.stack([self.rms(x[i], self.w[p + "ffn_norm.weight"]) for i in range(n)])
            gate = self.matmul(h, p + "ffn_gate.weight")
            up = self.matmul(h, p + "ffn_up.weight")
            x = x + self.matmul(gate / (1 + np.exp(-gate)) * up, p + "ffn_down.weight")
            if layers_out is not None:
                layers_out.append(x.copy())
        h = np.stack([self.rms(x[i], self.w["output_norm.weight"]) for i in range(n)])
        return self.matmul(h, "output.weight" if "output.weight" in self.w else "token_embd.weight")
