"""An independent float64 NumPy forward pass for every supported model family, and StreamingLLM's
attention sets, per layer.

Written from each model's published definition (Hugging Face modeling code semantics) and from
streaming.md, not from the C++ engine:
- RMSNorm x / sqrt(mean(x^2) + eps) * w (GGUF norm weights: llama.cpp's converter has already added
  the 1 of Gemma's (1 + w)), grouped-query attention, SwiGLU (silu(gate) * up) or GeGLU
  (gelu_tanh(gate) * up, Gemma).
- RoPE: adjacent pairs (2i, 2i+1) for llama / granite / smollm3 (llama.cpp's "normal" layout: the
  converter permutes Q/K), NeoX pairs (i, i + n_rot/2) for qwen2 / qwen3 / gemma2 / gemma3 / phi3.
  Only the first n_rot dims of a head rotate (partial rotary). theta_i = pos * scale *
  base^(-2i/n_rot) / factor_i, with scale = 1/linear factor, factor_i from rope_freqs.weight
  (llama3) or LongRoPE's short/long factors (short when the cache capacity <= the original context
  length, else long); LongRoPE multiplies cos and sin by rope.scaling.attn_factor.
- Gemma: embeddings * sqrt(n_embd), post-attention / post-FFN norms, attention scale
  1/sqrt(key_length), soft-capping cap * tanh(x / cap) of the attention scores (before the
  mask / softmax) and of the final logits (Gemma 2; llama.cpp's defaults 50 / 30 when the keys are
  absent), sliding-window layers il % 2 == 0 (Gemma 2) or il % p < p - 1 with p = 6 or
  gemma3.attention.sliding_window_pattern (Gemma 3, whose local layers use RoPE base 10000 or
  rope.freq_base_swa, unscaled; global layers use rope.freq_base and the linear scaling).
- Qwen3 / Gemma 3: RMS norm of each query and key head (attn_q_norm / attn_k_norm) before RoPE.
- Phi-3: fused attn_qkv (rows q, k, v) and fused ffn_up (rows gate, then up).
- SmolLM3: no RoPE on layers with (il + 1) % 4 == 0.
- Granite: embeddings * embedding_scale, attention scale = attention.scale, both residual branches
  * residual_scale, logits / logit_scale.
- `{arch}.attention.sliding_window` on llama / qwen2 / qwen3 / phi3 / smollm3 / granite (Mistral,
  Phi-3) makes every layer a sliding-window layer.

- The StreamingLLM paper's own models (gptneox, falcon, mpt, bloom, stablelm, phi2; HF GPTNeoX, Falcon,
  MPT, Bloom, StableLm and Phi semantics): LayerNorm (x - mean) / sqrt(var + eps) * w + b, eps from
  `{arch}.attention.layer_norm_epsilon`, biases wherever the file has them, fused attn_qkv rows
  [Q; K; V] (llama.cpp's converter has regrouped GPT-NeoX / Bloom / Falcon rows), MPT's clamp_kqv
  (clip the fused projection), non-gated MLPs with GELU: exact (erf) for gptneox / falcon / mpt
  ("gelu" / nn.GELU()), the tanh approximation for bloom (bloom_gelu_forward) and phi2 ("gelu_new")
  - llama.cpp's LLM_FFN_GELU is the tanh approximation for all of them; `gelu_kind` picks one.
  Residuals: sequential x += attn(ln1(x)); x += mlp(ln2(x)) (mpt, bloom, stablelm with ffn_norm,
  gptneox with use_parallel_residual false) or parallel x + attn(ln_a(x)) + mlp(ln_m(x)): gptneox
  ln_a = attn_norm, ln_m = ffn_norm; falcon ln_a = attn_norm_2 if present (40B: ln_attn) else
  attn_norm, ln_m = attn_norm (40B: ln_mlp); phi2 and stablelm without ffn_norm: one attn_norm for
  both. Bloom: token_embd_norm after the embedding. Phi-2: output.bias. StableLM 2 12B: per-head
  LayerNorm (no bias) of q and k before RoPE.
- gpt-oss (transformers' GptOss semantics, llama.cpp's GGUF names): a learned sink logit s_h per
  head joins each softmax as a column with no value (weights exp(score - m) / (exp(s_h - m) +
  sum exp(score - m)), m the max over scores and s_h); even layers slide (window from
  attention.sliding_window), odd ones are full; NeoX RoPE with YaRN (rope.scaling.type "yarn":
  theta_i = theta_i/f * ramp_i + theta_i * (1 - ramp_i), ramp_i = clip((i - lo) / (hi - lo), 0, 1),
  lo/hi = floor/ceil of the dims making beta_fast = 32 / beta_slow = 1 turns in the original
  context, cos and sin times 0.1 ln f + 1); attention biases; post_attention_norm is the pre-FFN
  norm; the FFN is a mixture of experts: router logits W h + b, softmax over the top-k, each chosen
  expert (clamp(up, -7, 7) + 1) * g * sigmoid(1.702 g), g = min(gate, 7), then down + bias, summed
  with the router weights.
- ALiBi (mpt, bloom): no RoPE; score(t, j) += -slope_h * (p(t) - p(j)) with p the positions within
  the cache (ranks in A(t)), so the bias is contiguous and never jumps (streaming.md). Slopes: for
  n_head a power of two 2^(-max_bias * (h+1) / n_head); otherwise the slopes of the closest power of two
  below (n), then every other slope (the odd ones) of 2n - Press et al., HF Bloom's build_alibi_tensor,
  MPT's gen_slopes and ggml's soft_max (m0 / m1) all give the same numbers. max_bias:
  mpt.attention.max_alibi_bias (absent or 0: no ALiBi, as llama.cpp), 8 for Bloom (llama.cpp's fixed
  value).

Streaming (streaming.md, "Models whose layers differ"): A(t) is the session's attention set and
positions are the rank of each member in A(t) (the query at len(A(t)) - 1). A layer with window w_l
attends to A_l(t) = A(t) ∩ {t - w_l + 1 .. t}, members keeping their rank-in-A(t) positions; a global
layer attends to A(t). For every query the reference materializes A_l(t) and runs full softmax
attention over exactly those tokens. Weights are dequantized with the `gguf` package.

The per-layer tables (layer_windows, layer_uses_rope) and the scalar settings (attn_softcap,
final_softcap, ...) are plain attributes that a test may change to build a variant of the model.
"""
from __future__ import annotations

import math

import numpy as np
import gguf


# Weight formats with 32-element blocks: like llama.cpp (Q8_0 / Q8_1 activation blocks), the engine
# multiplies them with the input rounded to 8-bit blocks of 32: d = fp16(max|x| / 127),
# q = round-half-even(x * 127 / max|x|), input ~= d * q.
QUANTIZED_INPUT_32 = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "MXFP4"}

# llama.cpp's llama_model_rope_type() for the architectures this reference implements
NEOX_ROPE_ARCHS = {"qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gptneox", "falcon", "stablelm", "phi2", "gpt-oss"}
NORM_ROPE_ARCHS = {"llama", "smollm3", "granite"}
ALIBI_ARCHS = {"mpt", "bloom"}                       # LLAMA_ROPE_TYPE_NONE: positions only through ALiBi
SUPPORTED_ARCHS = NEOX_ROPE_ARCHS | NORM_ROPE_ARCHS | ALIBI_ARCHS
# LayerNorm (mean and variance, weight and optional bias) instead of RMS norm
LAYER_NORM_ARCHS = {"gptneox", "falcon", "mpt", "bloom", "stablelm", "phi2"}
# non-gated MLP: down(gelu(up(x) + b) ) + b; value: the GELU of each model's published definition
GELU_MLP_ARCHS = {"gptneox": "erf", "falcon": "erf", "mpt": "erf", "bloom": "tanh", "phi2": "tanh"}
BLOOM_MAX_ALIBI_BIAS = 8.0                           # llama.cpp hard-codes it (no GGUF key)

DEFAULT_WINDOW = 1 << 30


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
    if mode not in ("streaming", "window"):
        raise ValueError(f"unknown mode {mode!r}")
    s = n_sink if mode == "streaming" else 0
    sinks = list(range(min(s, t + 1)))
    return sinks + list(range(max(s, t - window + 1), t + 1))


def layer_attention_set(t: int, mode: str, n_sink: int, window: int, layer_window: int = 0) -> list[tuple[int, int]]:
    """A_l(t) as (token, position) pairs: A(t) ∩ {t - w_l + 1 .. t} for a sliding-window layer
    (layer_window = w_l > 0), all of A(t) for a global one (0); positions are ranks in A(t)."""
    pairs = [(j, rank) for rank, j in enumerate(attention_set(t, mode, n_sink, window))]
    if layer_window > 0:
        pairs = [(j, rank) for j, rank in pairs if j >= t - layer_window + 1]
    return pairs


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """The exact GELU x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1.0 + _erf(np.asarray(x, dtype=np.float64) / np.sqrt(2.0)).astype(np.float64))


def alibi_slopes(n_head: int, max_bias: float = 8.0) -> np.ndarray:
    """ALiBi's per-head slopes (Press et al.): with n the largest power of two <= n_head, heads
    0..n-1 get 2^(-max_bias * (h + 1) / n), the remaining n_head - n heads the odd-numbered slopes
    2^(-max_bias * (2i + 1) / (2n)), i = 0, 1, ... of 2n heads (HF Bloom's build_alibi_tensor, MPT's
    gen_slopes with alibi_bias_max, ggml's soft_max m0 / m1)."""
    n = 1 << int(math.floor(math.log2(n_head)))
    slopes = [2.0 ** (-max_bias * (h + 1) / n) for h in range(n)]
    slopes += [2.0 ** (-max_bias * (2 * i + 1) / (2 * n)) for i in range(n_head - n)]
    return np.array(slopes)


def alibi_bias(slopes: np.ndarray, key_positions, query_position: int) -> np.ndarray:
    """(n_head, m) biases -slope_h * (query_position - p_j) for keys at positions p_j (positions
    within the cache, streaming.md)."""
    distance = query_position - np.asarray(key_positions, dtype=np.float64)
    return -np.asarray(slopes)[:, None] * distance[None, :]


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softcap(x: np.ndarray, cap: float | None) -> np.ndarray:
    return x if not cap else cap * np.tanh(x / cap)


class ReferenceModel:
    def __init__(self, path: str):
        reader = gguf.GGUFReader(str(path))
        f = reader.fields
        self.arch = str(bytes(f["general.architecture"].parts[-1]), "utf-8")
        if self.arch not in SUPPORTED_ARCHS:
            raise NotImplementedError(f"reference forward: architecture {self.arch!r} is not implemented")
        arch = self.arch

        def field(key):
            return f.get(f"{arch}.{key}")

        def scalar(key, default=None):
            fl = field(key)
            return default if fl is None else fl.parts[fl.data[0]][0].item()

        def string(key, default=None):
            fl = field(key)
            return default if fl is None else str(bytes(fl.parts[-1]), "utf-8")

        self.n_layer = scalar("block_count")
        self.n_embd = scalar("embedding_length")
        self.n_ff = scalar("feed_forward_length")
        self.n_head = scalar("attention.head_count")
        self.n_head_kv = scalar("attention.head_count_kv", self.n_head)
        self.head_dim = scalar("attention.key_length", self.n_embd // self.n_head)
        self.v_head_dim = scalar("attention.value_length", self.head_dim)
        self.n_rot = scalar("rope.dimension_count", self.head_dim)
        self.freq_base = scalar("rope.freq_base", 10000.0)
        self.layer_norm = arch in LAYER_NORM_ARCHS
        self.eps = scalar("attention.layer_norm_epsilon" if self.layer_norm else "attention.layer_norm_rms_epsilon", 1e-5)
        self.n_ctx_train = scalar("context_length")
        self.neox = arch in NEOX_ROPE_ARCHS

        # RoPE scaling: linear (llama.cpp's default type when only a factor is given)
        scaling_type = string("rope.scaling.type", "linear")
        factor = scalar("rope.scaling.factor", 0.0)
        self.linear_factor = 1.0
        self.yarn_factor = 0.0
        if scaling_type == "linear":
            self.linear_factor = factor if factor else 1.0
        elif scaling_type == "yarn":
            self.yarn_factor = factor
        elif scaling_type != "none":
            raise NotImplementedError(f"reference forward: RoPE scaling {scaling_type!r} is not implemented")

        self.w: dict[str, np.ndarray] = {}
        self.quantized_input = set()  # weights whose matmul input the engine rounds to 8-bit blocks
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.w[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
            if t.tensor_type.name in QUANTIZED_INPUT_32:
                self.quantized_input.add(t.name)

        # llama3-style per-frequency divisors, or LongRoPE short / long factors (Phi-3)
        self.freq_factors = self.w.get("rope_freqs.weight", np.ones(self.n_rot // 2))
        self.rope_factors_short = self.w.get("rope_factors_short.weight")
        self.rope_factors_long = self.w.get("rope_factors_long.weight")
        self.longrope = self.rope_factors_long is not None or self.rope_factors_short is not None
        self.original_context_length = scalar("rope.scaling.original_context_length", self.n_ctx_train)
        self.rope_attn_factor = scalar("rope.scaling.attn_factor", 1.0)
        # gpt-oss: learned sinks, mixture of experts
        self.n_expert = scalar("expert_count", 0)
        self.n_expert_used = scalar("expert_used_count", 0)
        self.ffn_norm_name = "post_attention_norm" if arch == "gpt-oss" else "ffn_norm"

        # Which layers attend through a sliding window (0 = global), per llama.cpp's hparams loading
        n_swa = scalar("attention.sliding_window", 0)
        if arch == "gemma2":
            n_swa = n_swa or 4096   # llama.cpp's default for Gemma 2
            self.layer_windows = [n_swa if il % 2 == 0 else 0 for il in range(self.n_layer)]
        elif arch == "gpt-oss":
            self.layer_windows = [n_swa if il % 2 == 0 else 0 for il in range(self.n_layer)]
        elif arch == "gemma3":
            period = scalar("attention.sliding_window_pattern", 6)
            self.layer_windows = [n_swa if n_swa > 0 and (period == 0 or il % period < period - 1) else 0
                                  for il in range(self.n_layer)]
        else:
            self.layer_windows = [n_swa] * self.n_layer

        # Per-layer RoPE: (base, linear factor); NoPE layers
        self.layer_uses_rope = [arch not in ALIBI_ARCHS] * self.n_layer
        if arch == "smollm3":
            self.layer_uses_rope = [(il + 1) % 4 != 0 for il in range(self.n_layer)]
        self.layer_rope_base = [self.freq_base] * self.n_layer
        self.layer_rope_linear = [self.linear_factor] * self.n_layer
        if arch == "gemma3":
            base_swa = scalar("rope.freq_base_swa", 10000.0)
            for il in range(self.n_layer):
                if self.layer_windows[il]:
                    self.layer_rope_base[il], self.layer_rope_linear[il] = base_swa, 1.0

        # Scalar settings
        self.embd_scale = None
        self.attn_scale = 1.0 / np.sqrt(self.head_dim)
        self.attn_softcap = None
        self.final_softcap = None
        self.residual_scale = None
        self.logit_scale = None
        self.ffn_act = silu
        if arch in ("gemma2", "gemma3"):
            self.embd_scale = np.sqrt(self.n_embd)
            self.ffn_act = gelu_tanh
            big = {"gemma2": 46, "gemma3": 62}[arch]   # llama.cpp: the 27B uses n_embd / n_head
            if self.n_layer == big:
                self.attn_scale = 1.0 / np.sqrt(self.n_embd / self.n_head)
        if arch == "gemma2":
            self.attn_softcap = scalar("attn_logit_softcapping", 50.0)
            self.final_softcap = scalar("final_logit_softcapping", 30.0)
        if arch == "gemma3":
            self.final_softcap = scalar("final_logit_softcapping", None) or None
        # The paper's families: ALiBi, clamp_kqv, GELU kind, residual layout
        self.alibi_max_bias = 0.0
        if arch == "mpt":
            self.alibi_max_bias = scalar("attention.max_alibi_bias", 0.0)
        elif arch == "bloom":
            self.alibi_max_bias = BLOOM_MAX_ALIBI_BIAS
        self.alibi_slopes = alibi_slopes(self.n_head, self.alibi_max_bias) if self.alibi_max_bias > 0 else None
        self.clamp_kqv = scalar("attention.clamp_kqv", 0.0) if arch == "mpt" else 0.0
        self.gelu_kind = GELU_MLP_ARCHS.get(arch)
        self.parallel_residual = [False] * self.n_layer
        if arch == "gptneox":
            self.parallel_residual = [bool(scalar("use_parallel_residual", True))] * self.n_layer
        elif arch in ("falcon", "phi2"):
            self.parallel_residual = [True] * self.n_layer
        elif arch == "stablelm":   # llama.cpp: parallel residual when a layer has no ffn_norm
            self.parallel_residual = [f"blk.{il}.ffn_norm.weight" not in self.w for il in range(self.n_layer)]
        if arch == "granite":
            self.embd_scale = scalar("embedding_scale", None) or None
            self.attn_scale = scalar("attention.scale", None) or self.attn_scale
            self.residual_scale = scalar("residual_scale", None) or None
            self.logit_scale = scalar("logit_scale", None) or None

    # ------------------------------------------------------------------ helpers

    def default_capacity(self, n_tokens: int, mode: str, n_sink: int, window: int) -> int:
        """The cache capacity a session has: n_sink + window (streaming), window (window, dense);
        the sequence length when no window was given."""
        if window >= DEFAULT_WINDOW:
            return n_tokens
        return n_sink + window if mode == "streaming" else window

    def rope_factors(self, layer: int = 0, capacity: int | None = None) -> np.ndarray:
        """The per-frequency divisors of `layer` for a cache of `capacity` tokens."""
        if self.longrope:
            use_long = capacity is not None and capacity > self.original_context_length
            chosen = self.rope_factors_long if use_long else self.rope_factors_short
            if chosen is not None:
                return chosen
        return self.freq_factors

    def rope(self, x: np.ndarray, pos: int, layer: int = 0, capacity: int | None = None) -> np.ndarray:
        """Rotates each head vector in x (n_heads, head_dim) to position pos, as layer `layer` does."""
        if not self.layer_uses_rope[layer]:
            return x
        half = self.n_rot // 2
        inv_freq = self.layer_rope_base[layer] ** (-2.0 * np.arange(half) / self.n_rot)
        mscale = self.rope_attn_factor if self.longrope else 1.0
        if self.yarn_factor:
            inv_freq, mscale = self.yarn(inv_freq, layer)
        theta = inv_freq / self.rope_factors(layer, capacity) * (pos / self.layer_rope_linear[layer])
        c, s = np.cos(theta) * mscale, np.sin(theta) * mscale
        y = x.copy()
        if self.neox:
            a, b = np.arange(half), np.arange(half) + half
        else:
            a, b = 2 * np.arange(half), 2 * np.arange(half) + 1
        y[..., a] = x[..., a] * c - x[..., b] * s
        y[..., b] = x[..., a] * s + x[..., b] * c
        return y

    def yarn(self, inv_freq: np.ndarray, layer: int) -> tuple[np.ndarray, float]:
        """YaRN's frequencies and cos/sin magnitude (Hugging Face _compute_yarn_parameters with
        beta_fast 32, beta_slow 1, truncate as its default)."""
        base, dim, factor = self.layer_rope_base[layer], self.n_rot, self.yarn_factor

        def correction_dim(rotations):
            return dim * math.log(self.original_context_length / (rotations * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(correction_dim(32.0)), 0)
        high = min(math.ceil(correction_dim(1.0)), dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0.0, 1.0)
        extrapolation = 1.0 - ramp
        inv = inv_freq / factor * (1.0 - extrapolation) + inv_freq * extrapolation
        return inv, (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

    def experts(self, layer: int, h: np.ndarray) -> np.ndarray:
        """gpt-oss's mixture of experts on h (n, n_embd)."""
        p = f"blk.{layer}."
        logits = self.linear(h, p + "ffn_gate_inp")
        out = np.zeros_like(h)
        for t in range(h.shape[0]):
            chosen = np.argsort(-logits[t], kind="stable")[:self.n_expert_used]
            weights = np.exp(logits[t, chosen] - logits[t, chosen].max())
            weights /= weights.sum()
            for e, weight in zip(chosen, weights):
                def proj(name, x):
                    wname = p + name + ".weight"
                    if wname in self.quantized_input:
                        x = round_input_to_8bit_blocks(x)
                    return self.w[wname][e] @ x + self.w.get(p + name + ".bias", np.zeros((self.n_expert, 1)))[e]
                gate = np.minimum(proj("ffn_gate_exps", h[t]), 7.0)
                up = np.clip(proj("ffn_up_exps", h[t]), -7.0, 7.0)
                act = (up + 1.0) * gate / (1.0 + np.exp(-1.702 * gate))
                out[t] += weight * proj("ffn_down_exps", act)
        return out

    def matmul(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T, with x rounded as the engine rounds it for that weight's format."""
        if name in self.quantized_input:
            x = round_input_to_8bit_blocks(x)
        return x @ self.w[name].T

    def rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """RMS norm over the last axis."""
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def layer_norm_(self, x: np.ndarray, w: np.ndarray, b=0.0) -> np.ndarray:
        """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * w + b."""
        centered = x - np.mean(x, axis=-1, keepdims=True)
        return centered / np.sqrt(np.mean(centered * centered, axis=-1, keepdims=True) + self.eps) * w + b

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        """The model's norm with tensor `name` (without .weight / .bias): LayerNorm (with its bias when
        the file has one) for the LayerNorm architectures, RMS norm otherwise."""
        if self.layer_norm:
            return self.layer_norm_(x, self.w[name + ".weight"], self.w.get(name + ".bias", 0.0))
        return self.rms(x, self.w[name + ".weight"])

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T + b for tensor `name` (without .weight / .bias); no bias if the file has none."""
        return self.matmul(x, name + ".weight") + self.w.get(name + ".bias", 0.0)

    def gelu(self, x: np.ndarray) -> np.ndarray:
        return gelu_erf(x) if self.gelu_kind == "erf" else gelu_tanh(x)

    def qkv(self, layer: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = f"blk.{layer}."
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        if p + "attn_qkv.weight" in self.w:   # one matrix, rows [Q; K; V] (llama.cpp's layout)
            fused = self.matmul(h, p + "attn_qkv.weight") + self.w.get(p + "attn_qkv.bias", 0)
            if self.clamp_kqv > 0:            # MPT's clip_qkv: after the projection and its bias
                fused = np.clip(fused, -self.clamp_kqv, self.clamp_kqv)
            q, k, v = fused[:, :q_dim], fused[:, q_dim:q_dim + kv_dim], fused[:, q_dim + kv_dim:]
        else:
            q = self.matmul(h, p + "attn_q.weight") + self.w.get(p + "attn_q.bias", 0)
            k = self.matmul(h, p + "attn_k.weight") + self.w.get(p + "attn_k.bias", 0)
            v = self.matmul(h, p + "attn_v.weight") + self.w.get(p + "attn_v.bias", 0)
            if self.clamp_kqv > 0:
                q, k, v = (np.clip(a, -self.clamp_kqv, self.clamp_kqv) for a in (q, k, v))
        n = h.shape[0]
        return (q.reshape(n, self.n_head, self.head_dim), k.reshape(n, self.n_head_kv, self.head_dim),
                v.reshape(n, self.n_head_kv, self.v_head_dim))

    def ffn(self, layer: int, h: np.ndarray) -> np.ndarray:
        p = f"blk.{layer}."
        if self.n_expert:
            return self.experts(layer, h)
        if self.gelu_kind is not None:         # GPT-NeoX / Falcon / MPT / Bloom / Phi-2: up, GELU, down
            return self.linear(self.gelu(self.linear(h, p + "ffn_up")), p + "ffn_down")
        if p + "ffn_gate.weight" in self.w:
            gate = self.matmul(h, p + "ffn_gate.weight")
            up = self.matmul(h, p + "ffn_up.weight")
        else:                                  # Phi-3: ffn_up holds gate (first n_ff rows), then up
            fused = self.matmul(h, p + "ffn_up.weight")
            if fused.shape[-1] != 2 * self.n_ff:
                raise ValueError(f"{p}ffn_up.weight has {fused.shape[-1]} rows and there is no ffn_gate")
            gate, up = fused[:, :self.n_ff], fused[:, self.n_ff:]
        return self.matmul(self.ffn_act(gate) * up, p + "ffn_down.weight")

    # ------------------------------------------------------------------ forward

    def logits(self, tokens: list[int], mode: str = "dense", n_sink: int = 4, window: int = DEFAULT_WINDOW,
               layers_out: list | None = None, kv_half: bool = False, capacity: int | None = None) -> np.ndarray:
        """Logits (len(tokens), n_vocab): in layer l, token t sees exactly A_l(t), each member at its
        rank in A(t).

        The K/V of a token depend on what that token itself attended to, so each layer keeps the
        outputs of every token (as a cache would).

        kv_half: the engine's (and llama.cpp's) half-precision cache: keys and values are stored in
        half precision, and the query and the attention weights are rounded to it as well.
        capacity: the session's cache capacity (chooses LongRoPE's short / long factors); default
        default_capacity()."""
        tokens = [int(t) for t in tokens]
        half = (lambda a: a.astype(np.float16).astype(np.float64)) if kv_half else (lambda a: a)
        n = len(tokens)
        if capacity is None:
            capacity = self.default_capacity(n, mode, n_sink, window)
        sets = [attention_set(t, mode, n_sink, window) for t in range(n)]
        group = self.n_head // self.n_head_kv
        kv_of_head = np.arange(self.n_head) // group

        x = self.w["token_embd.weight"][tokens].copy()
        if self.embd_scale:
            x = x * self.embd_scale
        if "token_embd_norm.weight" in self.w:      # Bloom: LayerNorm of the embeddings
            x = self.norm(x, "token_embd_norm")
        if layers_out is not None:
            layers_out.append(x.copy())
        for l in range(self.n_layer):
            p = f"blk.{l}."
            # Falcon 40B: attention reads attn_norm_2 (ln_attn), the MLP attn_norm (ln_mlp)
            h = self.norm(x, p + ("attn_norm_2" if p + "attn_norm_2.weight" in self.w else "attn_norm"))
            q, k, v = self.qkv(l, h)
            if p + "attn_q_norm.weight" in self.w:   # QK-norm: each head, before RoPE (StableLM: LayerNorm)
                q = self.norm(q, p + "attn_q_norm")
            if p + "attn_k_norm.weight" in self.w:
                k = self.norm(k, p + "attn_k_norm")
            w_l = self.layer_windows[l]
            rotated_k: dict[tuple[int, int], np.ndarray] = {}

            def key(j: int, pos: int) -> np.ndarray:
                if (j, pos) not in rotated_k:
                    rotated_k[(j, pos)] = half(self.rope(k[j], pos, l, capacity))
                return rotated_k[(j, pos)]

            attn = np.zeros((n, self.n_head, self.v_head_dim))
            for t in range(n):
                members = sets[t]
                if w_l > 0:
                    pairs = [(j, rank) for rank, j in enumerate(members) if j >= t - w_l + 1]
                else:
                    pairs = list(zip(members, range(len(members))))
                qt = half(self.rope(q[t], len(members) - 1, l, capacity))           # (n_head, hd)
                ks = np.stack([key(j, pos) for j, pos in pairs])[:, kv_of_head, :]  # (m, n_head, hd)
                vs = half(v[[j for j, _ in pairs]])[:, kv_of_head, :]               # (m, n_head, vd)
                scores = softcap(np.einsum("mhd,hd->hm", ks, qt) * self.attn_scale, self.attn_softcap)
                if self.alibi_slopes is not None:    # contiguous: distances within the cache
                    scores = scores + alibi_bias(self.alibi_slopes, [pos for _, pos in pairs], len(members) - 1)
                sinks = self.w.get(p + "attn_sinks.weight")
                if sinks is None:
                    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
                    weights /= weights.sum(axis=1, keepdims=True)
                else:   # a learned sink: one more softmax column, no value
                    m = np.maximum(scores.max(axis=1), sinks)[:, None]
                    weights = np.exp(scores - m)
                    weights /= weights.sum(axis=1, keepdims=True) + np.exp(sinks[:, None] - m)
                attn[t] = np.einsum("hm,mhd->hd", half(weights), vs)
            out = self.linear(attn.reshape(n, -1), p + "attn_output")
            if self.parallel_residual[l]:           # x + attn(ln_a(x)) + mlp(ln_m(x))
                mlp_norm = p + ("ffn_norm" if p + "ffn_norm.weight" in self.w else "attn_norm")
                x = x + out + self.ffn(l, self.norm(x, mlp_norm))
                if layers_out is not None:
                    layers_out.append(x.copy())
                continue
            if p + "post_attention_norm.weight" in self.w and self.ffn_norm_name != "post_attention_norm":
                out = self.rms(out, self.w[p + "post_attention_norm.weight"])
            if self.residual_scale:
                out = out * self.residual_scale
            x = x + out
            out = self.ffn(l, self.norm(x, p + self.ffn_norm_name))
            if p + "post_ffw_norm.weight" in self.w:
                out = self.rms(out, self.w[p + "post_ffw_norm.weight"])
            if self.residual_scale:
                out = out * self.residual_scale
            x = x + out
            if layers_out is not None:
                layers_out.append(x.copy())
        h = self.norm(x, "output_norm")
        logits = self.matmul(h, "output.weight" if "output.weight" in self.w else "token_embd.weight")
        logits = logits + self.w.get("output.bias", 0.0)   # Phi-2
        logits = softcap(logits, self.final_softcap)
        if self.logit_scale:
            logits = logits / self.logit_scale
        return logits
