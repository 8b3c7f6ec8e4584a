"""Dequantization of every supported GGML type must be bit-exact with gguf-py's NumPy dequantizers.

The reference is `gguf.quants.dequantize` (the gguf package, written independently of sinkstream from
ggml's C code). Comparisons are on the float32 bit patterns, so -0.0 vs 0.0 or a last-bit rounding
difference (e.g. from a fused multiply-add) fails.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize as gguf_dequantize

from sinkstream import _core

# Byte offsets of the half-precision scale fields inside each block (GGUF spec block layouts).
# Random bytes there could be inf/NaN; the tests give them sane or deliberately extreme finite values.
SCALE_OFFSETS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.IQ4_NL: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
FLOAT_TYPES = [T.F32, T.F16, T.BF16]
QUANT_TYPES = list(SCALE_OFFSETS)

# Extreme finite half scales: zero, -0, smallest subnormal, largest subnormal, smallest normal, max.
EXTREME_HALVES = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00],
                          dtype=np.uint16)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def ours(qtype: T, blocks: np.ndarray) -> np.ndarray:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    n = blocks.size // GGML_QUANT_SIZES[qtype][1] * block_size
    return _core.dequantize(int(qtype), blocks.tobytes(), n)


def reference(qtype: T, blocks: np.ndarray) -> np.ndarray:
    return gguf_dequantize(np.ascontiguousarray(blocks, dtype=np.uint8), qtype).reshape(-1)


def assert_bit_exact(qtype: T, blocks: np.ndarray) -> None:
    got, want = ours(qtype, blocks), reference(qtype, blocks)
    assert got.dtype == np.float32 and got.shape == want.shape
    mismatch = np.flatnonzero(bits(got) != bits(want))
    assert mismatch.size == 0, (
        f"{qtype.name}: {mismatch.size} of {got.size} values differ, first at {mismatch[0]}: "
        f"ours {got[mismatch[0]]!r} vs gguf {want[mismatch[0]]!r}")


def random_finite_halves(rng: np.random.Generator, size: int) -> np.ndarray:
    h = rng.integers(0, 1 << 16, size=size, dtype=np.uint16)
    finite = (h & 0x7C00) != 0x7C00
    return np.where(finite, h, h & 0x83FF)  # clear the exponent of inf/NaN patterns: a subnormal


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int, scales: np.ndarray | None = None):
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in SCALE_OFFSETS.get(qtype, []):
        h = random_finite_halves(rng, n_blocks) if scales is None else scales
        blocks[:, off:off + 2] = h.astype("<u2").view(np.uint8).reshape(n_blocks, 2)
    return blocks


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_random_blocks_bit_exact(qtype):
    rng = np.random.default_rng(1000 + int(qtype))
    assert_bit_exact(qtype, random_blocks(rng, qtype, 512))


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_realistic_scales_bit_exact(qtype):
    # Scales of the size real weights have (1e-4 .. 1e-1), where products round non-trivially.
    rng = np.random.default_rng(2000 + int(qtype))
    scales = (rng.uniform(1e-4, 1e-1, 256) * rng.choice([-1, 1], 256)).astype(np.float16).view(np.uint16)
    assert_bit_exact(qtype, random_blocks(rng, qtype, 256, scales=scales))


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("scale_bits", EXTREME_HALVES, ids=lambda h: f"h{int(h):04x}")
def test_extreme_scales_bit_exact(qtype, scale_bits):
    rng = np.random.default_rng(int(scale_bits) * 31 + int(qtype))
    n_blocks = 16
    blocks = random_blocks(rng, qtype, n_blocks, scales=np.full(n_blocks, scale_bits, dtype=np.uint16))
    # Block 0: every quant bit clear; block 1: every quant bit set (the extreme quant values).
    is_scale_byte = np.zeros(blocks.shape[1], dtype=bool)
    for off in SCALE_OFFSETS[qtype]:
        is_scale_byte[off:off + 2] = True
    blocks[0, ~is_scale_byte] = 0x00
    blocks[1, ~is_scale_byte] = 0xFF
    assert_bit_exact(qtype, blocks)


def test_mixed_extreme_scale_pairs():
    # d and m (or d and dmin) at different extremes in the same block.
    rng = np.random.default_rng(7)
    for qtype in (T.Q4_1, T.Q5_1, T.Q2_K, T.Q4_K, T.Q5_K):
        pairs = np.array([(a, b) for a in EXTREME_HALVES for b in EXTREME_HALVES], dtype=np.uint16)
        blocks = random_blocks(rng, qtype, len(pairs))
        for k, off in enumerate(SCALE_OFFSETS[qtype]):
            blocks[:, off:off + 2] = pairs[:, k].astype("<u2").view(np.uint8).reshape(-1, 2)
        assert_bit_exact(qtype, blocks)


@pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda t: t.name)
def test_float_types_bit_exact_all_patterns(qtype):
    # Every bit pattern, NaN and inf included: float formats are converted exactly.
    rng = np.random.default_rng(3)
    if qtype == T.F32:
        raw = rng.integers(0, 1 << 32, size=100_000, dtype=np.uint32)
        raw[:6] = [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0x00000001, 0x80000000]
    else:
        raw = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    assert_bit_exact(qtype, raw.view(np.uint8))


def test_q8_0_roundtrip_through_gguf_quantize():
    # Blocks made by gguf's own quantizer (realistic content), for the types it can quantize.
    rng = np.random.default_rng(11)
    from gguf.quants import quantize
    x = rng.standard_normal((8, 1024)).astype(np.float32) * 0.05
    for qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16):
        assert_bit_exact(qtype, quantize(x, qtype).view(np.uint8))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="block size"):
        _core.dequantize(int(T.Q4_1), b"\0" * 20, 31)
    with pytest.raises(ValueError, match="bytes"):
        _core.dequantize(int(T.Q4_1), b"\0" * 19, 32)
    with pytest.raises(ValueError, match="unknown ggml type id"):
        _core.dequantize(4, b"", 0)
    with pytest.raises(ValueError, match="IQ2_XXS"):
        _core.dequantize(int(T.IQ2_XXS), b"\0" * 66, 256)


# ---- MXFP4 (gpt-oss experts): one E8M0 scale byte, then 16 bytes of E2M1 codes ---------------------

@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # gguf-py at exponent 255
def test_mxfp4_every_exponent_and_code_bit_exact():
    """All 256 E8M0 exponents, 0 (2^-127, halved to the subnormal 2^-128), 1, 254 and 255 (NaN in the
    MX spec, 2^127 in gguf-py / ggml; its large codes overflow to inf) included, each with all 16
    E2M1 codes in both nibbles."""
    codes = np.arange(16, dtype=np.uint8)
    qs = np.concatenate([codes | (codes[::-1] << 4)])          # 16 bytes: low nibble j, high 15 - j
    blocks = np.zeros((256, 17), dtype=np.uint8)
    blocks[:, 0] = np.arange(256)
    blocks[:, 1:] = qs
    assert_bit_exact(T.MXFP4, blocks)
    got = ours(T.MXFP4, blocks).reshape(256, 32)
    assert got[127, 2] == 1.0 and got[127, 7] == 6.0 and got[127, 15] == -6.0     # scale 1: E2M1 values
    assert np.isinf(got[255]).any() and got[0, 1] == np.float32(2.0 ** -128)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_mxfp4_random_and_quantized_blocks_bit_exact():
    rng = np.random.default_rng(39)
    assert_bit_exact(T.MXFP4, rng.integers(0, 256, size=(4096, 17), dtype=np.uint8))
    from gguf.quants import quantize
    x = (rng.standard_normal((8, 1024)) * rng.choice([1e-30, 1e-3, 1.0, 1e20], (8, 1))).astype(np.float32)
    assert_bit_exact(T.MXFP4, quantize(x, T.MXFP4).view(np.uint8))


# ---- real tensors of the default model -------------------------------------------------------------

def _default_model_path() -> str:
    import sinkstream
    return os.fspath(sinkstream.default_model_path())


@pytest.mark.model
def test_default_model_tensors_bit_exact():
    path = _default_model_path()
    if not os.path.exists(path):
        pytest.skip(f"default model not downloaded: {path}")
    reader = GGUFReader(path)
    wanted = {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight",
              "blk.29.ffn_gate.weight", "output_norm.weight"}
    seen = set()
    for t in reader.tensors:
        if t.name not in wanted:
            continue
        qtype = T(int(t.tensor_type))
        data = np.asarray(t.data)
        if t.name == "token_embd.weight":
            data = data[::97]  # a spread of rows: enough to cover the whole value range quickly
        assert_bit_exact(qtype, data.view(np.uint8).reshape(data.shape[0], -1))
        seen.add(t.name)
    assert seen == wanted


# ---- core/fp16.h conversions ------------------------------------------------------------------------

def _tricky_floats() -> np.ndarray:
    all_halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = all_halves[np.isfinite(all_halves)].astype(np.float64)
    finite = np.unique(finite)
    mid = ((finite[:-1] + finite[1:]) / 2).astype(np.float32)  # exact ties: round to even
    assert np.array_equal(mid.astype(np.float64), (finite[:-1] + finite[1:]) / 2)
    up, down = np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))
    special = np.array([0.0, -0.0, 65504.0, 65519.996, 65520.0, 65536.0, 1e30, 3.4028235e38,
                        2.0 ** -24, 2.0 ** -25, 2.0 ** -26, 3 * 2.0 ** -25, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -25,
                        1e-45, 1e-40, -1e-40, np.inf, -np.inf], dtype=np.float32)
    special = np.concatenate([special, -special])
    nans = np.array([0x7F800001, 0x7FC00000, 0xFFC00000, 0x7F801FFF, 0x7F802000, 0xFFC12345, 0x7FFFFFFF,
                     0x7FA00000], dtype=np.uint32).view(np.float32)
    rng = np.random.default_rng(5)
    random_bits = rng.integers(0, 1 << 32, size=2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([all_halves.astype(np.float32), mid, up, down, -mid, -up, special, nans,
                           random_bits]).astype(np.float32)


def test_f32_to_fp16_matches_numpy():
    x = _tricky_floats()
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    got = _core.f32_to_fp16(x)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{bad.size} of {x.size} differ; first: f32 bits {x.view(np.uint32)[bad[0]]:#010x} "
                           f"-> ours {got[bad[0]]:#06x}, numpy {want[bad[0]]:#06x}")


def test_fp16_to_f32_matches_numpy_for_all_halves():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = h.view(np.float16).astype(np.float32).view(np.uint32)
    got = _core.fp16_to_f32(h).view(np.uint32)
    assert np.array_equal(got, want)
