"""A plain NumPy reference of the llama-family forward pass and of StreamingLLM's attention sets.

Written from the architecture's definition (RMSNorm, RoPE, grouped-query attention, SwiGLU) and from
streaming.md: for every query t it materializes A(t) and the positions within the cache, then runs
full softmax attention over exactly those tokens. Weights are dequantized with the `gguf` package.
Everything is float64 so the engine is compared with an exact answer, not with itself.
"""
from __future__ import annotations

import numpy as np
import gguf


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
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.w[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
        self.out = self.w.get("output.weight", self.w["token_embd.weight"])
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

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x) + self.eps) * w

    def logits(self, tokens: list[int], mode: str = "dense", n_sink: int = 4, window: int = 1 << 30,
               layers_out: list | None = None) -> np.ndarray:
        """Logits (len(tokens), n_vocab): token t sees exactly A(t), each member at its rank in A(t).

        The K/V of a token depend on what that token itself attended to, so each layer keeps the
        outputs of every token (as a cache would)."""
        n = len(tokens)
        hd, group = self.head_dim, self.n_head // self.n_head_kv
        x = self.w["token_embd.weight"][tokens].copy()
        if layers_out is not None:
            layers_out.append(x.copy())
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = np.stack([self.rms(x[i], self.w[p + "attn_norm.weight"]) for i in range(n)])
            q = h @ self.w[p + "attn_q.weight"].T + self.w.get(p + "attn_q.bias", 0)
            k = h @ self.w[p + "attn_k.weight"].T + self.w.get(p + "attn_k.bias", 0)
            v = h @ self.w[p + "attn_v.weight"].T + self.w.get(p + "attn_v.bias", 0)
            q = q.reshape(n, self.n_head, hd)
            k = k.reshape(n, self.n_head_kv, hd)
            v = v.reshape(n, self.n_head_kv, hd)
            attn = np.zeros((n, self.n_head, hd))
            for t in range(n):
                members = attention_set(t, mode, n_sink, window)
                qt = self.rope(q[t], len(members) - 1)
                ks = np.stack([self.rope(k[j], rank) for rank, j in enumerate(members)])  # (m, kv, hd)
                vs = v[members]
                for head in range(self.n_head):
                    g = head // group
                    scores = ks[:, g, :] @ qt[head] / np.sqrt(hd)
                    w = np.exp(scores - scores.max())
                    w /= w.sum()
                    attn[t, head] = w @ vs[:, g, :]
            x = x + attn.reshape(n, -1) @ self.w[p + "attn_output.weight"].T
            h = np.stack([self.rms(x[i], self.w[p + "ffn_norm.weight"]) for i in range(n)])
            gate = h @ self.w[p + "ffn_gate.weight"].T
            up = h @ self.w[p + "ffn_up.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ self.w[p + "ffn_down.weight"].T
            if layers_out is not None:
                layers_out.append(x.copy())
        h = np.stack([self.rms(x[i], self.w["output_norm.weight"]) for i in range(n)])
        return h @ self.out.T
