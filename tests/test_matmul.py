"""Quantized matmul: every weight type, every ISA level this CPU has, against independent references.

References:
- numpy: gguf-py's dequantize(W) (float64) @ x. The kernels quantize x to 8 bits per block, so they
  may differ from it by at most the activation rounding: each element moves by at most half a step
  (d_x / 2 = max|x_block| / 254), giving the bound |err| <= sum_blocks max|x_b| / 254 * sum_{i in b} |w_i|.
  The tests assert that bound (plus float slack) element by element, and a relative error < 1e-2.
- the scalar kernels: every SIMD level gets identical quantized activations and integer products,
  so it may differ from scalar only by float summation order: |diff| <= 1e-5 * sum |w_i x_i|.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

from sinkstream import _core

import cross_arm

QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.MXFP4]  # gguf-py can quantize these
RANDOM_BLOCKS = [T.IQ4_NL, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]  # random bytes, sane scales
FLOATS = [T.F32, T.F16, T.BF16]
ALL_TYPES = QUANTIZABLE + RANDOM_BLOCKS + FLOATS
ACT_BLOCK = {t: 256 for t in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)}  # activation block per weight type

# Byte offsets of the half scales (d, and dmin for the K-quants with mins) in the random-block types.
SCALE_OFFSETS = {T.IQ4_NL: [0], T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}

FEATURES = _core.cpu_features()
SIMD_LEVELS = {"avx512": ["avx2", "avx512"], "avx2": ["avx2"], "neon": ["neon"], "dotprod": ["neon", "dotprod"],
               "i8mm": ["neon", "dotprod", "i8mm"], "scalar": []}[FEATURES["best_isa"]]


def make_weight(qtype: T, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, row_bytes) uint8 blocks of `qtype`."""
    if qtype in QUANTIZABLE or qtype in FLOATS:
        w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        q = quantize(w, qtype)
        return np.ascontiguousarray(q).view(np.uint8).reshape(rows, -1)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        scales = rng.uniform(1e-3, 2e-2, n_blocks).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, -1)


def dequantized(qtype: T, w: np.ndarray, rows: int) -> np.ndarray:
    return dequantize(w, qtype).reshape(rows, -1).astype(np.float64)


def activation_rounding_bound(qtype: T, wf: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n, rows): the largest error 8-bit activation quantization can cause in each dot product."""
    if qtype in FLOATS:
        return np.zeros((x.shape[0], wf.shape[0]))
    block = ACT_BLOCK.get(qtype, 32)
    n, cols = x.shape
    half_step = np.abs(x.astype(np.float64)).reshape(n, cols // block, block).max(axis=2) / 254.0  # (n, nb)
    w_abs_block = np.abs(wf).reshape(wf.shape[0], cols // block, block).sum(axis=2)             # (rows, nb)
    return half_step @ w_abs_block.T


def run(qtype: T, w: np.ndarray, rows: int, cols: int, x: np.ndarray, isa: str, n_threads: int = 1,
        packed: bool = True):
    return _core.matmul_test(int(qtype), w.tobytes(), rows, cols, np.ascontiguousarray(x, np.float32), isa,
                             n_threads, packed)


def cols_for(qtype: T) -> int:
    if qtype in FLOATS:
        return 100 + 37  # not a multiple of 8 or 16: exercises the SIMD tails
    return 512 if qtype in ACT_BLOCK else 352  # 11 blocks of 32: SIMD loops' pairs and an unpaired tail


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_scalar_matches_numpy_within_activation_rounding(qtype):
    rng = np.random.default_rng(100 + int(qtype))
    rows, cols, n = 37, cols_for(qtype), 9  # 9 tokens: tiles of 4, 4 and 1
    w = make_weight(qtype, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[1] *= 1e-3                 # a small-valued token
    x[2, : cols // 2] = 0.0      # all-zero activation blocks (scale 0)
    wf = dequantized(qtype, w, rows)
    ref = x.astype(np.float64) @ wf.T
    got = run(qtype, w, rows, cols, x, "scalar")
    assert got.shape == (n, rows) and got.dtype == np.float32
    absdot = np.abs(x.astype(np.float64)) @ np.abs(wf).T
    bound = activation_rounding_bound(qtype, wf, x) * 1.0001 + 1e-5 * absdot + 1e-30
    err = np.abs(got - ref)
    print(f"{qtype.name}: max |scalar - numpy| = {err.max():.3g}, max err/bound = {(err / bound).max():.3f}")
    assert np.all(err <= bound), f"{qtype.name}: error above the activation-rounding bound at {np.argmax(err / bound)}"
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < (1e-2 if qtype not in FLOATS else 1e-6), rel


@pytest.mark.skipif(not SIMD_LEVELS, reason="this CPU has no SIMD level beyond scalar")
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_simd_levels_match_scalar(qtype, n):
    rng = np.random.default_rng(200 + int(qtype) * 10 + n)
    rows, cols = 19, cols_for(qtype)
    w = make_weight(qtype, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    wf = dequantized(qtype, w, rows)
    absdot = np.abs(x.astype(np.float64)) @ np.abs(wf).T
    scalar = run(qtype, w, rows, cols, x, "scalar")
    for isa in SIMD_LEVELS:
        got = run(qtype, w, rows, cols, x, isa)
        diff = np.abs(got.astype(np.float64) - scalar)
        kernel = _core.matmul_kernel_isa(int(qtype), isa)
        print(f"{qtype.name} n={n} {isa} (kernel from {kernel}): max |diff| = {diff.max():.3g}, "
              f"max diff / sum|w x| = {(diff / absdot).max():.3g}")
        assert np.all(diff <= 1e-5 * absdot + 1e-30), f"{qtype.name} {isa} differs from scalar beyond rounding"


@pytest.mark.skipif(not SIMD_LEVELS, reason="this CPU has no SIMD level beyond scalar")
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_simd_levels_match_scalar_across_row_counts(qtype):
    # Weight widths from one block up (odd and even block counts) and row counts around the
    # kernels' row tiles, one and two tokens.
    rng = np.random.default_rng(250 + int(qtype))
    block = 1 if qtype in FLOATS else GGML_QUANT_SIZES[qtype][0]
    widths = [1, 2, 3, 8, 15] if qtype in FLOATS else ([1, 2, 3] if block == 256 else [1, 2, 3, 4, 5, 6, 7, 9])
    for blocks in widths:
        cols = blocks * block
        for rows in (1, 3, 4, 5, 8, 11):
            w = make_weight(qtype, rows, cols, rng)
            wf = dequantized(qtype, w, rows)
            for n in (1, 2):
                x = rng.standard_normal((n, cols)).astype(np.float32)
                absdot = np.abs(x.astype(np.float64)) @ np.abs(wf).T
                scalar = run(qtype, w, rows, cols, x, "scalar")
                for isa in SIMD_LEVELS:
                    got = run(qtype, w, rows, cols, x, isa)
                    ok = np.abs(got.astype(np.float64) - scalar) <= 1e-5 * absdot + 1e-30
                    assert ok.all(), f"{qtype.name} {isa} cols={cols} rows={rows} n={n}"


PACKED_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]  # ops/cpu/packed_weights.h


# Levels with packed kernels (ops/cpu/packed_weights.cc packed_tile_kernel). On an AArch64 host the
# dotprod level's run here; under qemu they run in test_neon_kernels_under_qemu.
PACKED_AT = {"avx512": PACKED_TYPES, "avx2": PACKED_TYPES, "dotprod": PACKED_TYPES}
PACKED_CASES = [(isa, qtype) for isa in SIMD_LEVELS for qtype in PACKED_AT.get(isa, [])]


@pytest.mark.skipif(not PACKED_CASES, reason="this CPU has no level with packed-row kernels")
@pytest.mark.parametrize("isa, qtype", PACKED_CASES, ids=lambda v: getattr(v, "name", v))
def test_packed_rows_match_the_per_row_kernels(isa, qtype):
    """Rows regrouped 16 at a time (ops/cpu/packed_weights.h) against the per-row kernels of the same
    level: the same integer products in another float order, so within 1e-5 of sum |w x|; and against
    gguf-py's dequantization within the activation rounding. Row counts around the 16-row groups
    (partial last groups), odd block counts, token counts giving every tile width (1-4 tokens). The packed path
    must really run: its bits differ from the per-row kernels' somewhere."""
    rng = np.random.default_rng(900 + int(qtype))
    differs = False
    for rows in (1, 15, 16, 17, 40):
        for blocks in ((1, 2) if qtype in ACT_BLOCK else (1, 3, 18)):
            cols = GGML_QUANT_SIZES[qtype][0] * blocks
            w = make_weight(qtype, rows, cols, rng)
            wf = dequantized(qtype, w, rows)
            for n in (1, 2, 3, 7, 13):  # every tile width: 1-3 alone, 4 + 3, (4 + 4) + (4 + 1)
                x = rng.standard_normal((n, cols)).astype(np.float32)
                absdot = np.abs(x.astype(np.float64)) @ np.abs(wf).T
                packed = run(qtype, w, rows, cols, x, isa, packed=True)
                per_row = run(qtype, w, rows, cols, x, isa, packed=False)
                assert np.all(np.abs(packed.astype(np.float64) - per_row) <= 1e-5 * absdot + 1e-30), (rows, cols, n)
                bound = activation_rounding_bound(qtype, wf, x) * 1.0001 + 1e-5 * absdot + 1e-30
                assert np.all(np.abs(packed - x.astype(np.float64) @ wf.T) <= bound), (rows, cols, n)
                differs = differs or not np.array_equal(packed, per_row)
    assert differs, "packed=True gave the per-row kernels' bits everywhere: the packed path did not run"


@pytest.mark.skipif(not PACKED_CASES, reason="this CPU has no level with packed-row kernels")
@pytest.mark.parametrize("isa, qtype", PACKED_CASES, ids=lambda v: getattr(v, "name", v))
def test_packed_results_do_not_depend_on_the_tile(isa, qtype):
    """A token's outputs are the same bits whether it goes alone (1-token kernels) or in a prompt-sized
    matmul (tiles of 8 tokens, run 4 at a time): every width sums the same integers and then the same
    floats in the same order. A batched session must get the bits it would get alone."""
    rng = np.random.default_rng(990 + int(qtype))
    block = GGML_QUANT_SIZES[qtype][0]
    rows, cols, n = 37, (18 if block == 32 else 3) * block, 14  # 3 groups, the last partial; tiles 4+4+4+2
    w = make_weight(qtype, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    together = run(qtype, w, rows, cols, x, isa)
    alone = np.vstack([run(qtype, w, rows, cols, x[i:i + 1], isa) for i in range(n)])
    assert np.array_equal(together, alone)
    assert np.array_equal(run(qtype, w, rows, cols, x[:7], isa), together[:7])  # tiles 4 + 3


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(SIMD_LEVELS), reason="needs both x86 levels")
@pytest.mark.parametrize("qtype", PACKED_AT["avx2"], ids=lambda t: t.name)
def test_packed_avx2_kernels_give_the_avx512_bits(qtype):
    # Both compute each block's exact int32 sums and then the same float steps in the same order.
    rng = np.random.default_rng(970 + int(qtype))
    block = GGML_QUANT_SIZES[qtype][0]  # 32, or 256 for the K-quants
    for rows, cols, n in ((1, block, 1), (17, 2 * block, 2), (37, 3 * block, 7),  # tiles of 1, 2, 4 + 3
                         (16, 18 * 32 if block == 32 else 3 * block, 9)):
        w = make_weight(qtype, rows, cols, rng)
        x = rng.standard_normal((n, cols)).astype(np.float32)
        assert np.array_equal(run(qtype, w, rows, cols, x, "avx2"), run(qtype, w, rows, cols, x, "avx512"))
    if qtype == T.Q8_0:  # any byte a file may hold, -128 included (the quantizer stops at -127)
        blocks = rng.integers(0, 256, size=(16 * 18, 34), dtype=np.uint8)
        blocks[:, 2::7] = 0x80
        blocks[:, 0:2] = rng.uniform(1e-3, 2e-2, 16 * 18).astype(np.float16).view(np.uint8).reshape(-1, 2)
        w = blocks.reshape(16, -1)
        x = rng.standard_normal((5, 576)).astype(np.float32)
        assert np.array_equal(run(qtype, w, 16, 576, x, "avx2"), run(qtype, w, 16, 576, x, "avx512"))


@pytest.mark.parametrize("layout", ["avx2", "avx512", "dotprod"])  # Q5 fifth bits: planes, masks, planes
@pytest.mark.parametrize("qtype", PACKED_TYPES, ids=lambda t: t.name)
def test_packing_keeps_every_bit_of_the_rows(qtype, layout):
    """Every byte of random blocks (any scales, any bits) survives packing into 16-row groups, as
    laid out for any level's kernels, and unpacking row by row: get_row reads a tied embedding
    from its packed head this way."""
    rng = np.random.default_rng(950 + int(qtype))
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    for rows, blocks in ((1, 1), (17, 3), (40, 2)):
        w = rng.integers(0, 256, size=(rows, blocks * type_size), dtype=np.uint8)
        back = _core.pack_roundtrip_test(int(qtype), w.tobytes(), rows, blocks * block_size, layout)
        assert back == w.tobytes(), (rows, blocks)


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q8_0, T.Q6_K, T.F16], ids=lambda t: t.name)
def test_threads_do_not_change_results(qtype):
    rng = np.random.default_rng(300 + int(qtype))
    rows, cols = 1501, cols_for(qtype)  # enough work per token for several tasks at n = 1
    w = make_weight(qtype, rows, cols, rng)
    for n in (1, 6):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        for isa in ["scalar"] + SIMD_LEVELS:
            one = run(qtype, w, rows, cols, x, isa, n_threads=1)
            two = run(qtype, w, rows, cols, x, isa, n_threads=2)
            three = run(qtype, w, rows, cols, x, isa, n_threads=3)
            assert np.array_equal(one, two) and np.array_equal(one, three), (n, isa)


@pytest.mark.parametrize("types", [(T.Q4_1, T.Q4_1, T.Q4_1), (T.Q4_K, T.Q6_K), (T.Q8_0, T.Q4_K, T.F16)],
                         ids=lambda ts: "+".join(t.name for t in ts))
def test_shared_input_matmul_equals_separate_calls(types):
    """Q/K/V (and gate/up) in one call: bit-identical to one matmul per weight, whether the weights
    quantize the input alike (one pass) or not (separate passes), with task ranges that straddle
    the end of one weight and the start of the next (row counts not multiples of anything)."""
    rng = np.random.default_rng(700 + sum(int(t) for t in types))
    cols = 512
    shapes = [(int(rows), t) for rows, t in zip(rng.integers(150, 700, size=len(types)), types)]
    weights = [(t, make_weight(t, rows, cols, rng), rows) for rows, t in shapes]
    for n in (1, 5):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        for isa in ["scalar"] + SIMD_LEVELS:
            for n_threads in (1, 2, 3):
                together = _core.matmul_shared_input_test([(int(t), w.tobytes(), rows, cols) for t, w, rows in weights],
                                                          x, isa, n_threads)
                assert len(together) == len(weights)
                for (t, w, rows), got in zip(weights, together):
                    assert np.array_equal(got, run(t, w, rows, cols, x, isa)), (t.name, n, isa, n_threads)


def test_shared_input_matmul_rejects_mismatched_columns():
    rng = np.random.default_rng(5)
    a, b = make_weight(T.Q4_1, 8, 64, rng), make_weight(T.Q4_1, 8, 96, rng)
    with pytest.raises(ValueError, match="columns"):
        _core.matmul_shared_input_test([(int(T.Q4_1), a.tobytes(), 8, 64), (int(T.Q4_1), b.tobytes(), 8, 96)],
                                       np.zeros((1, 64), np.float32), "scalar")


def test_token_tiles_do_not_change_results():
    # A token's output must not depend on which other tokens share its tile (so evaluating a prompt
    # in one call or token by token gives identical numbers).
    # 9 tokens: across the 4-token tiles of the per-row kernels and the 8-token tiles of the packed ones.
    rng = np.random.default_rng(4)
    rows, cols = 26, 256  # not a multiple of the 4-row tiles nor of the 16-row packed groups
    for qtype in sorted(set(PACKED_TYPES) | {T.F16}):
        w = make_weight(qtype, rows, cols, rng)
        x = rng.standard_normal((9, cols)).astype(np.float32)
        for isa in ["scalar"] + SIMD_LEVELS:
            together = run(qtype, w, rows, cols, x, isa)
            alone = np.concatenate([run(qtype, w, rows, cols, x[t:t + 1], isa) for t in range(9)])
            assert np.array_equal(together, alone), (qtype.name, isa)


@pytest.mark.model
def test_default_model_weights():
    import sinkstream
    path = os.fspath(sinkstream.default_model_path())
    if not os.path.exists(path):
        pytest.skip(f"default model not downloaded: {path}")
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    rng = np.random.default_rng(5)
    for name, row_slice in [("blk.0.attn_q.weight", slice(None)), ("blk.3.ffn_down.weight", slice(None)),
                            ("token_embd.weight", slice(0, 49152, 61))]:
        t = tensors[name]
        qtype = T(int(t.tensor_type))
        w = np.ascontiguousarray(np.asarray(t.data)[row_slice])
        rows, cols = w.shape[0], int(t.shape[0])
        x = rng.standard_normal((3, cols)).astype(np.float32)
        wf = dequantized(qtype, w, rows)
        ref = x.astype(np.float64) @ wf.T
        bound = activation_rounding_bound(qtype, wf, x) * 1.0001 + 1e-5 * (np.abs(x) @ np.abs(wf).T)
        for isa in ["scalar"] + SIMD_LEVELS:
            got = run(qtype, w, rows, cols, x, isa, n_threads=2)
            assert np.all(np.abs(got - ref) <= bound), (name, isa)
            # ~0.5 % typically; up to ~1.4 % for token_embd, whose rows share a large common
            # direction that random x barely meets (small |ref|, same absolute error).
            assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-2, (name, isa)


def test_cpu_features_report():
    f = _core.cpu_features()
    assert f["best_isa"] in ("scalar", "neon", "dotprod", "i8mm", "avx2", "avx512")
    if f["best_isa"] in ("dotprod", "i8mm"):
        assert f["neon"] and f["neon_dotprod"] and (f["neon_i8mm"] or f["best_isa"] == "dotprod")
    if f["best_isa"] == "avx512":
        assert f["avx512f"] and f["avx512bw"] and f["avx512vl"] and f["avx512vnni"] and f["os_avx512"]
    if f["best_isa"] in ("avx2", "avx512"):
        assert f["avx2"] and f["fma"] and f["f16c"] and f["os_avx"]
    # /proc/cpuinfo is an independent witness on Linux x86.
    if os.path.exists("/proc/cpuinfo") and f["best_isa"] in ("avx2", "avx512"):
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
        assert ("avx512_vnni" in flags) == f["avx512vnni"]
        assert ("avx2" in flags) == f["avx2"]


def _active_isa_with_env(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SINKSTREAM_ISA=value)
    code = "from sinkstream import _core; print(_core.cpu_features()['active_isa'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_isa_env_var_lowers_the_level():
    assert _active_isa_with_env("scalar").stdout.strip() == "scalar"
    if FEATURES["best_isa"] == "avx512":
        assert _active_isa_with_env("avx2").stdout.strip() == "avx2"
        assert _active_isa_with_env("AVX512").stdout.strip() == "avx512"
    if FEATURES["best_isa"] == "avx2":
        assert _active_isa_with_env("avx512").stdout.strip() == "avx2"  # never above what the CPU has
    bad = _active_isa_with_env("sse9")
    assert bad.returncode != 0 and "sse9" in bad.stderr


def test_bad_arguments_raise():
    rng = np.random.default_rng(6)
    w = make_weight(T.Q4_1, 4, 64, rng)
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(ValueError, match="bytes"):
        _core.matmul_test(int(T.Q4_1), w.tobytes()[:-1], 4, 64, x, "scalar")
    with pytest.raises(ValueError, match="columns"):
        _core.matmul_test(int(T.Q4_1), w.tobytes(), 4, 64, np.zeros((1, 32), np.float32), "scalar")
    with pytest.raises(ValueError, match="unknown ISA"):
        _core.matmul_test(int(T.Q4_1), w.tobytes(), 4, 64, x, "sse9")
    with pytest.raises(ValueError, match="IQ2_XXS"):
        _core.matmul_test(int(T.IQ2_XXS), b"\0" * 66, 1, 256, np.zeros((1, 256), np.float32), "scalar")
    if FEATURES["best_isa"] not in ("neon", "dotprod", "i8mm"):
        with pytest.raises(ValueError, match="not available"):
            _core.matmul_test(int(T.Q4_1), w.tobytes(), 4, 64, x, "neon")


MATMUL_CHECK_SOURCES = [
    "tests/cpp/matmul_isa_check.cc", "cpp/quant/quant_types.cc", "cpp/quant/dequantize.cc", "cpp/ops/cpu/matmul.cc",
    "cpp/ops/cpu/cpu_features.cc", "cpp/ops/cpu/vec_dot_scalar.cc", "cpp/ops/cpu/vec_dot_neon.cc",
    "cpp/ops/cpu/vec_dot_dotprod.cc", "cpp/ops/cpu/vec_dot_i8mm.cc", "cpp/ops/cpu/vec_dot_avx2.cc",
    "cpp/ops/cpu/vec_dot_avx512.cc", "cpp/ops/cpu/packed_weights.cc", "cpp/ops/cpu/packed_avx512.cc",
    "cpp/ops/cpu/packed_avx2.cc", "cpp/ops/cpu/packed_dotprod.cc", "cpp/core/thread_pool.cc"]


# The types with packed SDOT kernels (ops/cpu/packed_dotprod.cc): all of them.
DOTPROD_PACKED = tuple(t.name for t in PACKED_AT["dotprod"])


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("cpu,isa", cross_arm.TARGETS)
def test_neon_kernels_under_qemu(tmp_path_factory, cpu, isa):
    # The NEON kernels cannot run on x86: cross-compile tests/cpp/matmul_isa_check.cc for AArch64
    # (once: the baseline, plus the SDOT and SMMLA files with their extensions) and run it under
    # qemu-user on CPUs without and with those extensions, when both tools exist. Run-time dispatch
    # must pick `isa` there, and every level up to it must match the scalar kernels.
    out = cross_arm.build_and_run(MATMUL_CHECK_SOURCES, cpu, tmp_path_factory.getbasetemp() / "matmul_isa_check")
    assert out.returncode == 0 and "all levels match scalar" in out.stdout, out.stdout[-3000:]
    assert f"best ISA: {isa}\n" in out.stdout
    assert f"(kernel {isa:<6s})" in out.stdout  # that level's kernels really ran
    if isa == "dotprod":  # the packed SDOT kernels ran and matched too
        for name in DOTPROD_PACKED:
            assert re.search(rf"^{name}\s+dotprod \(kernel dotprod\+packed\).* ok  packed bits [0-9a-f]{{16}}$",
                             out.stdout, re.M), name


PACKED_BITS_LINE = re.compile(r"^(\S+)\s+\S+\s+\(kernel (\S+)\+packed\) cols=(\d+)\s+n=(\d+) .* ok  packed bits ([0-9a-f]{16})$",
                              re.M)


@pytest.mark.slow
@pytest.mark.ci
def test_packed_kernels_give_the_same_bits_on_arm_and_x86(tmp_path_factory):
    # packed_weights.h: every level's packed kernels sum the same integers, then the same floats in
    # the same order, and the activations quantize to the same bytes. So the SDOT kernels under qemu
    # (cortex-a76) and this x86 host's packed kernels (AVX2; AVX-512 where present) must give the
    # same bits for the same inputs (tests/cpp/matmul_isa_check.cc draws them from a seeded mt19937).
    base = tmp_path_factory.getbasetemp()
    arm = cross_arm.build_and_run(MATMUL_CHECK_SOURCES, "cortex-a76", base / "matmul_isa_check")
    native = subprocess.run([str(cross_arm.build_native(MATMUL_CHECK_SOURCES, base / "matmul_isa_check_native"))],
                            capture_output=True, text=True)
    assert arm.returncode == 0 and native.returncode == 0, (arm.stdout[-2000:], native.stdout[-2000:])
    arm_bits = {(t, c, n): d for t, level, c, n, d in PACKED_BITS_LINE.findall(arm.stdout) if level == "dotprod"}
    x86 = [(t, level, c, n, d) for t, level, c, n, d in PACKED_BITS_LINE.findall(native.stdout)]
    compared = [(t, level, c, n) for t, level, c, n, d in x86 if (t, c, n) in arm_bits]
    assert {t for t, *_ in compared} == set(DOTPROD_PACKED), compared
    for t, level, c, n, d in x86:
        if (t, c, n) in arm_bits:
            assert d == arm_bits[(t, c, n)], f"{t} cols={c} n={n}: {level} packed differs from dotprod packed"


# ---- activation quantization -------------------------------------------------------------------------

def numpy_quantize_blocks(x: np.ndarray, block: int):
    """Reference 8-bit activation quantization in float32 numpy, as llama.cpp's AVX2 quantize_row_q8_*:
    d = max|x| / 127, q = rint(x * (127 / max|x|)), ties to even. Returns (q int8 (nb, block), d (nb,))."""
    xb = x.astype(np.float32).reshape(-1, block)
    finite = np.isfinite(xb).all(axis=1)
    amax = np.where(finite, np.abs(np.where(np.isfinite(xb), xb, 0)).max(axis=1), np.inf).astype(np.float32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        d = (amax / np.float32(127)).astype(np.float32)
        inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
        q = np.rint(xb * inv[:, None])
    # Blocks without int8 codes (a NaN/inf, or so tiny that 127 / max overflows): zeros, and the
    # scale NaN (non-finite input) or 0 (tiny).
    bad = ~finite | ~np.isfinite(inv)
    q[bad] = 0
    d = np.where(finite, np.where(bad, np.float32(0), d), np.float32(np.nan)).astype(np.float32)
    return q.astype(np.int8), d


def numpy_q8a_row(x: np.ndarray) -> bytes:
    q, d = numpy_quantize_blocks(x, 32)
    with np.errstate(over="ignore"):
        d = d.astype(np.float16).astype(np.float32)  # the 32-element formats keep the scale at half precision
    nb = q.shape[0]
    pairs = np.zeros((nb + 1) // 2 * 2 * 32, np.int8).reshape(-1, 2, 2, 16)  # (pair, half, member, 16)
    for b in range(nb):
        pairs[b // 2, 0, b % 2] = q[b, :16]
        pairs[b // 2, 1, b % 2] = q[b, 16:]
    ds = (d * q.astype(np.int32).sum(axis=1).astype(np.float32)).astype(np.float32)
    scales = np.stack([d, ds], axis=1).astype(np.float32)
    raw = pairs.tobytes() + scales.tobytes()
    return raw + b"\xab" * (-len(raw) % 64)  # padding is left untouched (the test fills it with 0xAB)


def numpy_q8k_row(x: np.ndarray) -> bytes:
    q, d = numpy_quantize_blocks(x, 256)
    out = b""
    for b in range(q.shape[0]):
        bsums = q[b].astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
        out += q[b].tobytes() + bsums.tobytes() + np.float32(d[b]).tobytes() + b"\0" * 28
    return out


def tricky_activations(rng: np.random.Generator, cols: int) -> list[np.ndarray]:
    rows = [rng.standard_normal(cols).astype(np.float32),
            (rng.standard_normal(cols) * 1e-6).astype(np.float32),    # tiny: Q8A scales are half subnormals
            (rng.standard_normal(cols) * 3e-9).astype(np.float32),    # tinier: Q8A scales round to 0
            (rng.standard_normal(cols) * 1e4).astype(np.float32),     # large
            np.zeros(cols, np.float32)]                               # all-zero blocks: d = 0
    ties = rng.integers(-127, 127, cols).astype(np.float32) + np.float32(0.5)  # exact .5 ties with d = 1
    ties[::32] = 127.0
    rows.append(ties)
    mixed = rng.standard_normal(cols).astype(np.float32)
    mixed[: cols // 2] = -0.0
    rows.append(mixed)
    odd = rng.standard_normal(cols).astype(np.float32)  # blocks without int8 codes, among normal ones
    odd[3], odd[cols // 2 + 5] = np.nan, -np.inf
    odd[-32:] = 1e-39  # 127 / max overflows
    rows.append(odd)
    return rows


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q6_K], ids=lambda t: t.name)
def test_activation_quantization_matches_numpy_on_every_level(qtype):
    rng = np.random.default_rng(7)
    block = 256 if qtype == T.Q6_K else 32
    for cols in ([32, 64, 96, 352, 576, 1536] if block == 32 else [256, 512, 1536]):
        for x in tricky_activations(rng, cols):
            want = numpy_q8a_row(x) if block == 32 else numpy_q8k_row(x)
            for isa in ["scalar"] + SIMD_LEVELS:
                got = _core.quantize_activations_test(int(qtype), x, isa)
                assert got == want, f"{qtype.name} cols={cols} {isa}: activation bytes differ from numpy"
