"""Attention kernels: every ISA level this CPU has against a float64 NumPy reference written from the
definition (StreamingLLM, section 3.2: the query attends to the sinks and the rolling window; softmax
of scaled dot products, weighted sum of the values), and against the scalar kernels.

Shapes cover the paths the SIMD kernels choose between: head_dim a multiple of 16 (AVX-512), of 8
only (AVX2; AVX-512 falls back to it), neither (scalar everywhere); query-head groups of 1 to 6 (the
kernels take heads in passes of 2, 3 or 4); row counts that leave partial row blocks, more than one
256-row piece, and a ring that has wrapped around.

With a half-precision cache the reference rounds keys, values, queries and the attention weights to
half precision, as the engine (and llama.cpp's f16 cache) does. The engine's softmax runs in float32,
so a weight next to a half-precision rounding boundary can round the other way: one half-precision
step (2**-11 relative) of that weight, which bounds the difference by about 1e-3 * max|v|.
"""
from __future__ import annotations

import numpy as np
import pytest

from sinkstream import _core

import cross_arm

FEATURES = _core.cpu_features()
ISAS = {"avx512": ["scalar", "avx2", "avx512"], "avx2": ["scalar", "avx2"], "neon": ["scalar", "neon"],
        "dotprod": ["scalar", "neon", "dotprod"], "i8mm": ["scalar", "neon", "dotprod", "i8mm"],
        "scalar": ["scalar"]}[FEATURES["best_isa"]]

# (head_dim, n_head, n_head_kv, n_tokens, n_sink, window)
SHAPES = [
    (64, 9, 3, 700, 4, 600),    # SmolLM2's heads; 604 rows in 3 pieces, the ring wrapped
    (64, 8, 2, 5, 4, 16),       # group 4, fewer rows than a block
    (80, 5, 1, 301, 2, 290),    # group 5 (passes 4 + 1 or 2 + 2 + 1), 64 + 16 columns
    (16, 4, 2, 130, 4, 64),     # the tiny test models' heads
    (24, 6, 1, 263, 0, 263),    # multiple of 8 only; group 6; no sinks
    (12, 2, 2, 40, 3, 20),      # neither: scalar kernels at every level
    (256, 4, 1, 560, 4, 512),   # Gemma 3's heads: four 64-column pieces per block of rows, 35 blocks
]


def reference_attention(keys, values, q_sink, q_window, n_head_kv, n_sink, window, half, sink_logits=None):
    n_tokens = keys.shape[0]
    n_head, head_dim = q_window.shape
    group = n_head // n_head_kv
    t = n_tokens - 1
    sink_end = min(n_sink, n_tokens)
    window_begin = max(sink_end, t + 1 - window)
    members = list(range(sink_end)) + list(range(window_begin, t + 1))
    to = (lambda a: a.astype(np.float16).astype(np.float64)) if half else (lambda a: a.astype(np.float64))
    k = to(keys[members]).reshape(len(members), n_head_kv, head_dim)
    v = to(values[members]).reshape(len(members), n_head_kv, head_dim)
    out = np.zeros((n_head, head_dim))
    for h in range(n_head):
        kv = h // group
        scores = np.concatenate([k[:sink_end, kv] @ to(q_sink[h]), k[sink_end:, kv] @ to(q_window[h])])
        scores /= np.sqrt(head_dim)
        if sink_logits is None:
            weights = np.exp(scores - scores.max())
            weights /= weights.sum()
        else:  # a learned sink (gpt-oss): one more softmax column, with no value
            m = max(scores.max(), float(sink_logits[h]))
            weights = np.exp(scores - m)
            weights /= weights.sum() + np.exp(float(sink_logits[h]) - m)
        if half:
            weights = to(weights)
        out[h] = weights @ v[:, kv]
    return out


def make_case(shape, seed):
    head_dim, n_head, n_head_kv, n_tokens, n_sink, window = shape
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n_tokens, n_head_kv * head_dim), dtype=np.float32)
    values = rng.standard_normal((n_tokens, n_head_kv * head_dim), dtype=np.float32)
    # Queries scaled so that the softmax is neither flat nor one-hot: the weighting matters.
    q_window = 1.5 * rng.standard_normal((n_head, head_dim), dtype=np.float32)
    q_sink = 1.5 * rng.standard_normal((n_head, head_dim), dtype=np.float32)
    return keys, values, q_sink, q_window, n_head_kv, n_sink, window


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "hd{}-h{}-kv{}-t{}".format(*s[:4]))
def test_every_isa_matches_the_reference(shape, kv_type):
    keys, values, q_sink, q_window, n_head_kv, n_sink, window = make_case(shape, seed=sum(shape))
    expected = reference_attention(keys, values, q_sink, q_window, n_head_kv, n_sink, window, kv_type == "f16")
    tolerance = (1e-3 if kv_type == "f16" else 1e-5) * np.abs(values).max()
    results = {}
    for isa in ISAS:
        got = _core.attend_test(keys, values, q_sink, q_window, n_head_kv, n_sink, window, kv_type, isa)
        assert got.shape == expected.shape
        err = np.abs(got - expected).max()
        print(f"{isa} {kv_type}: max |engine - reference| = {err:.2e}")
        assert err < tolerance, f"{isa}: {err:.2e}"
        results[isa] = got
    for isa, got in results.items():  # SIMD against scalar: summation order (and rare half flips) only
        assert np.abs(got - results["scalar"]).max() < tolerance, isa


Q8_SHAPES = [s for s in SHAPES if s[0] % 32 == 0] + [(32, 6, 2, 300, 4, 257)]


def q8_0_round_trip(rows: np.ndarray) -> np.ndarray:
    """The values a Q8_0 cache holds, by the gguf package's own quantizer and dequantizer."""
    import gguf

    qtype = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.dequantize(gguf.quants.quantize(rows, qtype), qtype).reshape(rows.shape)


@pytest.mark.parametrize("shape", Q8_SHAPES, ids=lambda s: "hd{}-h{}-kv{}-t{}".format(*s[:4]))
def test_q8_0_cache_matches_the_reference_on_gguf_quantized_rows(shape):
    """kv_type q8_0: keys and values stored as GGML Q8_0 blocks (the query stays float32). The
    reference attends in float64 over the rows the gguf package's Q8_0 quantizer makes."""
    keys, values, q_sink, q_window, n_head_kv, n_sink, window = make_case(shape, seed=sum(shape) + 1)
    expected = reference_attention(q8_0_round_trip(keys), q8_0_round_trip(values), q_sink, q_window, n_head_kv,
                                   n_sink, window, False)
    tolerance = 5e-6 * np.abs(values).max()
    results = {}
    for isa in ISAS:
        results[isa] = _core.attend_test(keys, values, q_sink, q_window, n_head_kv, n_sink, window, "q8_0", isa)
        err = np.abs(results[isa] - expected).max()
        print(f"{isa} q8_0: max |engine - reference| = {err:.2e}")
        assert err < tolerance, f"{isa}: {err:.2e}"
    # Quantizing the cache does change the output (by far more than float rounding): it is really used.
    unquantized = reference_attention(keys, values, q_sink, q_window, n_head_kv, n_sink, window, False)
    assert np.abs(unquantized - expected).max() > 50 * tolerance


def test_q8_0_needs_whole_blocks_per_head():
    keys, values, q_sink, q_window, n_head_kv, n_sink, window = make_case(SHAPES[3], seed=1)  # head_dim 16
    with pytest.raises(ValueError, match="head_dim a multiple of 32"):
        _core.attend_test(keys, values, q_sink, q_window, n_head_kv, n_sink, window, "q8_0", "scalar")


def test_sink_rows_are_scored_with_the_sink_query():
    """The sink rows are scored with q_sink (the query rotated at p(t), streaming.md), the window
    rows with q_window: negating q_sink changes the output, and it still matches the reference."""
    keys, values, q_sink, q_window, n_head_kv, n_sink, window = make_case(SHAPES[0], seed=7)
    base = _core.attend_test(keys, values, q_sink, q_window, n_head_kv, n_sink, window, "f32", ISAS[-1])
    moved = _core.attend_test(keys, values, -q_sink, q_window, n_head_kv, n_sink, window, "f32", ISAS[-1])
    assert np.abs(moved - base).max() > 1e-4  # q_sink is used
    expected = reference_attention(keys, values, -q_sink, q_window, n_head_kv, n_sink, window, False)
    assert np.abs(moved - expected).max() < 1e-5 * np.abs(values).max()


def test_bad_arguments_are_named():
    keys, values, q_sink, q_window, n_head_kv, n_sink, window = make_case(SHAPES[3], seed=1)
    with pytest.raises(ValueError, match="n_head_kv"):
        _core.attend_test(keys, values, q_sink, q_window, 3, n_sink, window, "f16", "scalar")
    with pytest.raises(ValueError, match="kv_type"):
        _core.attend_test(keys, values, q_sink, q_window, n_head_kv, n_sink, window, "bf16", "scalar")
    with pytest.raises(ValueError, match="ISA"):
        _core.attend_test(keys, values, q_sink, q_window, n_head_kv, n_sink, window, "f16", "sse9")


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("cpu,isa", cross_arm.TARGETS[:1])
def test_neon_attention_under_qemu(tmp_path, cpu, isa):
    """The NEON attention kernels against the double-precision reference and the scalar kernels:
    tests/cpp/attention_isa_check.cc (the shapes above), cross-compiled and run under qemu-user."""
    sources = ["tests/cpp/attention_isa_check.cc", "cpp/ops/cpu/attention.cc", "cpp/ops/cpu/attention_avx2.cc",
               "cpp/ops/cpu/attention_avx512.cc", "cpp/ops/cpu/attention_neon.cc", "cpp/kv/sink_cache.cc",
               "cpp/ops/cpu/cpu_features.cc"]
    out = cross_arm.build_and_run(sources, cpu, tmp_path)
    assert out.returncode == 0 and "all attention levels match" in out.stdout, out.stdout[-3000:]
    assert " neon " in out.stdout and "best ISA: neon" in out.stdout  # the NEON kernels really ran


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "hd{}-h{}-kv{}-t{}".format(*s[:4]))
def test_learned_sink_logits_on_every_isa(shape, kv_type):
    """gpt-oss's learned sinks: a logit per head in the softmax's denominator, some below, some
    above every score (then it takes most of the weight, and the output shrinks toward 0)."""
    keys, values, q_sink, q_window, n_head_kv, n_sink, window = make_case(shape, seed=3 * sum(shape))
    n_head = q_window.shape[0]
    sink_logits = np.linspace(-20.0, 30.0, n_head).astype(np.float32)
    expected = reference_attention(keys, values, q_sink, q_window, n_head_kv, n_sink, window, kv_type == "f16",
                                   sink_logits)
    plain = reference_attention(keys, values, q_sink, q_window, n_head_kv, n_sink, window, kv_type == "f16")
    assert np.abs(expected - plain).max() > 0.1            # the sink logits matter here
    tolerance = (1e-3 if kv_type == "f16" else 1e-5) * np.abs(values).max()
    results = {}
    for isa in ISAS:
        got = _core.attend_test(keys, values, q_sink, q_window, n_head_kv, n_sink, window, kv_type, isa, sink_logits)
        err = np.abs(got - expected).max()
        print(f"{isa} {kv_type} learned sinks: max |engine - reference| = {err:.2e}")
        assert err < tolerance, f"{isa}: {err:.2e}"
        results[isa] = got
    for isa, got in results.items():
        assert np.abs(got - results["scalar"]).max() < tolerance, isa
    with pytest.raises(ValueError, match="sink_logits"):
        _core.attend_test(keys, values, q_sink, q_window, n_head_kv, n_sink, window, kv_type, "scalar",
                          sink_logits[:-1].copy())


def test_cache_rows_round_to_half_as_numpy_at_every_isa():
    """The sink cache's f32 -> f16 conversion (F16C at the x86 levels) gives NumPy's float16 bits:
    nearest, ties to even, subnormals, overflow to infinity, signed zeros; 37 values: a vector tail."""
    rng = np.random.default_rng(4)
    special = np.array([0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, -65520.0, 1e9, np.inf, -np.inf,
                        2.0**-24, 2.0**-25, 2.0**-25 * 1.0001, 3 * 2.0**-25, 2.0**-14, 2.0**-14 * (1 - 2.0**-11),
                        1 + 2.0**-11, 1 + 3 * 2.0**-11, 1e-9], dtype=np.float32)
    values = np.concatenate([special, (rng.standard_normal(17) * 10).astype(np.float32)])
    ties = (np.float16(rng.standard_normal(1000)).astype(np.float32).view(np.uint32) + (1 << 12)).view(np.float32)
    for row in (values, ties):  # ties: exactly halfway between two half-precision neighbours
        with np.errstate(over="ignore"):  # 65520 and beyond become infinity, as they should
            want = row.astype(np.float16).view(np.uint16)
        for isa in ISAS:
            assert np.array_equal(_core.half_row_test(row, isa), want), isa
