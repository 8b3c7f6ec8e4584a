"""The CUDA backend (cpp/ops/cuda/, bindings in cpp/bindings/bind_cuda.cc).

Three situations, each tested where it occurs:
- built without CUDA (the default build, normal CI): the queries answer "no" and every compute call
  raises a RuntimeError that says how to get CUDA;
- built with CUDA, no usable device (scripts/check_cuda_build.sh on a machine without a GPU): the
  compute calls raise a RuntimeError naming the reason;
- built with CUDA and a device: matmul on random blocks of every supported type against a NumPy
  reference that dequantizes with gguf-py (`gguf.quants.dequantize`, independent of sinkstream), and
  rms_norm / silu_mul against NumPy in float64. Each GPU test prints its max difference.
Argument validation (ValueError naming the argument) is checked in every build: it runs first.

Tolerance of the matmul: the kernels dequantize bit-exactly like gguf-py and accumulate in float32
(FMAs, a per-lane sum over cols/256 steps, then a 32-way tree), so each output may differ from the
float64 product by a few float32 roundings of the partial sums: |err| <= 1e-5 * sum_i |x_i w_i|
(float32 eps is 6e-8; 1e-5 leaves room for ~150 roundings, far more than cols = 4096 needs).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from sinkstream import _core

BUILT = _core.cuda_built()
AVAILABLE = _core.cuda_available()
NOT_BUILT = "sinkstream was built without CUDA: reinstall with -C cmake.define.SINKSTREAM_CUDA=ON"
NO_DEVICE = "sinkstream was built with CUDA, but no CUDA device is usable"

# Every weight type the CUDA backend reads (cpp/ops/cuda/block_decode.h); the first three quants and
# the floats have block-wise matmul kernels, the rest a generic one.
QUANTS = [T.Q4_0, T.Q4_1, T.Q8_0, T.Q5_0, T.Q5_1, T.IQ4_NL, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
TYPES = QUANTS + [T.F16, T.BF16, T.F32]
# Byte offsets of the half scales (d, m / dmin) in each block (GGUF layouts, quant_blocks.h).
SCALE_OFFSETS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q8_0: [0], T.Q5_0: [0], T.Q5_1: [0, 2], T.IQ4_NL: [0],
                 T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
MATMUL_RTOL = 1e-5


def _skip_reason() -> str:
    if not BUILT:
        return "sinkstream was built without CUDA (the GPU tests need -C cmake.define.SINKSTREAM_CUDA=ON)"
    try:  # a CUDA build without a device says why in its error
        _core.cuda_rms_norm(np.ones((1, 4), np.float32), np.ones(4, np.float32))
    except RuntimeError as e:
        return str(e)
    return "no usable CUDA device"


needs_gpu = pytest.mark.skipif(not AVAILABLE, reason=_skip_reason() if not AVAILABLE else "")


# ---- inputs and references -----------------------------------------------------------------------

def random_weight(qtype: T, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, row_bytes) uint8: random blocks (every nibble / int8 pattern) with sane half scales,
    or random finite halves / normal floats for F16 / F32."""
    if qtype == T.F32:
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        h = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16)
        h = np.where((h & 0x7C00) == 0x7C00, h & 0x83FF, h)  # inf/NaN patterns -> subnormals
        return h.astype("<u2").view(np.uint8)
    if qtype == T.BF16:  # the top halves of normal floats
        f = rng.standard_normal((rows, cols)).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype("<u2").view(np.uint8)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        scales = (rng.uniform(1e-3, 2e-2, n_blocks) * rng.choice([-1, 1], n_blocks)).astype(np.float16)
        blocks[:, off:off + 2] = scales.astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, -1)


def dequantized(qtype: T, w: np.ndarray, rows: int) -> np.ndarray:
    """W as float64 (rows, cols), dequantized by gguf-py."""
    return dequantize(np.ascontiguousarray(w), qtype).reshape(rows, -1).astype(np.float64)


def check_matmul(qtype: T, w: np.ndarray, rows: int, cols: int, x: np.ndarray, got: np.ndarray) -> float:
    """Asserts got (n, rows) matches X . W^T element by element; returns the max |error|."""
    wf = dequantized(qtype, w, rows)
    x64 = x.astype(np.float64)
    want = x64 @ wf.T
    bound = MATMUL_RTOL * (np.abs(x64) @ np.abs(wf).T) + 1e-30
    assert got.shape == want.shape and got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (
        f"{qtype.name} {rows}x{cols}, n={x.shape[0]}: {int((err > bound).sum())} outputs off, worst at {worst}: "
        f"got {got[worst]!r}, want {want[worst]!r}, bound {bound[worst]:.3g}")
    return float(err.max())


def valid_args(qtype: T = T.Q4_1, rows: int = 4, cols: int = 64, n: int = 2):
    rng = np.random.default_rng(0)
    return random_weight(qtype, rows, cols, rng).tobytes(), qtype.name, rows, cols, \
        rng.standard_normal((n, cols)).astype(np.float32)


# ---- every build ---------------------------------------------------------------------------------

def test_queries_answer_consistently():
    assert isinstance(BUILT, bool) and isinstance(AVAILABLE, bool)
    devices = _core.cuda_devices()
    assert isinstance(devices, list)
    if not BUILT:
        assert not AVAILABLE and devices == []
    if AVAILABLE:
        assert devices, "cuda_available() but cuda_devices() is empty"
    for d in devices:
        assert set(d) == {"index", "name", "compute_capability", "total_memory", "multiprocessors"}
        assert isinstance(d["name"], str) and d["name"]
        major, minor = d["compute_capability"]
        assert major >= 1 and minor >= 0
        assert d["total_memory"] > 0 and d["multiprocessors"] > 0
        print(f"device {d['index']}: {d['name']}, sm_{major}{minor}, {d['total_memory'] / 2**30:.1f} GiB, "
              f"{d['multiprocessors']} SMs")


def _bad_matmul_calls():
    w, name, rows, cols, x = valid_args()
    return {
        "type_name": ((w, "IQ2_XS", rows, cols, x), "type_name 'IQ2_XS' is not supported"),
        "type_name_garbage": ((w, "nope", rows, cols, x), "type_name 'nope'"),
        "rows_zero": ((b"", name, 0, cols, x), "rows = 0 must be positive"),
        "rows_negative": ((w, name, -4, cols, x), "rows = -4"),
        "cols_zero": ((w, name, rows, 0, x[:, :0]), "cols = 0 must be positive"),
        "cols_not_block_multiple": ((w, name, rows, 48, x[:, :48].copy()), "cols = 48 is not a multiple of the Q4_1 block size 32"),
        "bytes_short": ((w[:-1], name, rows, cols, x), "raw_weight_bytes has 159 bytes, but rows = 4 of Q4_1 x cols = 64 need 160"),
        "bytes_long": ((w + b"\0", name, rows, cols, x), "raw_weight_bytes has 161 bytes"),
        "x_cols": ((w, name, rows, cols, np.zeros((2, 32), np.float32)), r"x has shape \(2, 32\), expected \(n, cols = 64\)"),
        "f32_bytes": ((w[:100], "F32", 5, 6, np.zeros((1, 6), np.float32)), "raw_weight_bytes has 100 bytes, but rows = 5 of F32 x cols = 6 need 120"),
    }


@pytest.mark.parametrize("case", list(_bad_matmul_calls()))
def test_matmul_validates_arguments(case):
    args, message = _bad_matmul_calls()[case]
    with pytest.raises(ValueError, match=message):
        _core.cuda_matmul(*args)


def test_matmul_validates_uint8_array_length():
    w, name, rows, cols, x = valid_args()
    arr = np.frombuffer(w, dtype=np.uint8)[:-2]
    with pytest.raises(ValueError, match="raw_weight_bytes has 158 bytes"):
        _core.cuda_matmul(arr, name, rows, cols, x)


def test_matmul_rejects_wrong_argument_types():
    w, name, rows, cols, x = valid_args()
    with pytest.raises(TypeError):
        _core.cuda_matmul("not bytes", name, rows, cols, x)
    with pytest.raises(TypeError):
        _core.cuda_matmul(w, name, rows, cols, x[0])  # x must be 2-D


def test_rms_norm_and_silu_mul_validate_arguments():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match="weight has 7 values, x rows have 8"):
        _core.cuda_rms_norm(x, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="eps = -1 must be finite and >= 0"):
        _core.cuda_rms_norm(x, np.ones(8, np.float32), -1.0)
    with pytest.raises(ValueError, match="rows must not be empty"):
        _core.cuda_rms_norm(np.ones((2, 0), np.float32), np.ones(0, np.float32))
    with pytest.raises(ValueError, match="gate and up differ in shape"):
        _core.cuda_silu_mul(np.ones(5, np.float32), np.ones(6, np.float32))
    with pytest.raises(ValueError, match="gate has 1 dimensions, up has 2"):
        _core.cuda_silu_mul(np.ones(4, np.float32), np.ones((2, 2), np.float32))


# ---- host-side parts of the backend (every build: the CPU runs the kernels' own host code) --------

def test_decodable_types_are_every_family_type():
    assert sorted(_core.cuda_decodable_types()) == sorted(t.name for t in TYPES)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_decode_row_matches_cpu_dequantizer(qtype):
    # block_decode.h's decode_element, the code the GPU matmul and embedding run, on the CPU: every
    # element bit-equal to dequantize.cc (itself bit-equal to gguf-py) over random blocks.
    rng = np.random.default_rng(int(qtype))
    cols = 2 * cols_for(qtype)
    w = random_weight(qtype, 3, cols, rng)
    for row in w:
        got = _core.cuda_decode_row(row, qtype.name, cols)
        want = _core.dequantize(int(qtype), row.tobytes(), cols)
        np.testing.assert_array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32))
        np.testing.assert_array_equal(got, dequantize(row, qtype).reshape(-1).astype(np.float32))


def test_decode_row_validates_arguments():
    with pytest.raises(ValueError, match="raw has 17 bytes, a Q4_0 row of 32 needs 18"):
        _core.cuda_decode_row(np.zeros(17, np.uint8), "Q4_0", 32)
    with pytest.raises(ValueError, match="cols = 48 is not a positive multiple of the Q4_K block size 256"):
        _core.cuda_decode_row(np.zeros(144, np.uint8), "Q4_K", 48)
    with pytest.raises(ValueError, match="type_name 'TQ1_0' is not supported by the CUDA backend"):
        _core.cuda_decode_row(np.zeros(4, np.uint8), "TQ1_0", 32)


# (n_layer, n_sink, window, max_chunk, layer_windows, evicts): a global cache, Gemma-style local
# layers narrower and wider than the window, no sinks, the dense (non-evicting) layout, and chunks
# of several query tiles.
PLAN_GEOMETRIES = {
    "global": (2, 4, 12, 5, [], True),
    "local": (3, 2, 10, 4, [5, 0, 16], True),
    "no_sinks": (1, 0, 7, 3, [], True),
    "dense": (2, 4, 60, 8, [0, 6], False),
    # chunks longer than the window: several query tiles (prefill), the ring wrapped within a chunk
    "long_chunks": (2, 4, 12, 40, [5, 0], True),
}


@pytest.mark.parametrize("name", list(PLAN_GEOMETRIES))
def test_attention_plan_matches_sink_cache(name):
    # The per-query tables the CUDA attention kernel gets, expanded row by row by the kernel's own
    # row_slot / alibi_distance, against SinkCache's span(layer, t), slot_of and p(t) - p(j): every
    # query from the first tokens, across ring wrap-arounds, to positions deep in a stream.
    n_layer, n_sink, window, chunk, layer_windows, evicts = PLAN_GEOMETRIES[name]
    starts = [0, 1, 3, window - 1, window + n_sink, 5 * window + 3]
    if evicts:
        starts += [10**6 + 7, 2**40 + 1]
    checked = 0
    for layer in range(n_layer):
        for t0 in starts:
            if not evicts and t0 + chunk > n_sink + window:
                continue
            for q in _core.cuda_attention_plan(n_layer, 2, 8, n_sink, window, chunk, layer_windows, evicts,
                                               layer, t0, chunk):
                assert q["slots"] == q["expected_slots"], (name, layer, q["t"])
                # the prefill kernel's tiles find exactly these rows, each once, at these slots
                assert q["tile_slots"] == q["slots"] and q["tile_rows"] == len(q["slots"]), (name, layer, q["t"])
                assert q["alibi_distances"] == q["expected_alibi_distances"], (name, layer, q["t"])
                assert q["query_position"] == q["expected_query_position"]
                assert q["tokens"][-1] == q["t"] and q["slots"][-1] == q["store_slot"]
                assert len(set(q["slots"])) == len(q["slots"]), "two rows of A_l(t) share a slot"
                checked += 1
    assert checked > 0


def test_attention_plan_validates_arguments():
    with pytest.raises(ValueError, match="layer 2 of 2"):
        _core.cuda_attention_plan(2, 2, 8, 4, 12, 5, [], True, 2, 0, 1)
    with pytest.raises(ValueError, match="n = 6 must be 1..max_chunk"):
        _core.cuda_attention_plan(2, 2, 8, 4, 12, 5, [], True, 0, 0, 6)


# (gguf-py writes no K-quants; their layouts are checked by test_decode_row_matches_cpu_dequantizer.)
@pytest.mark.parametrize("weight_type", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_1"])
def test_upload_plan_covers_every_family(tmp_path, weight_type):
    # Every 2-D weight of every family fixture has a CUDA kernel for its type; vectors stay float32.
    from tiny_models import FAMILIES, PAPER_FAMILIES, family_config, write_family_model
    from gguf.quants import QuantError
    ran, unfit = [], []
    for family in FAMILIES + PAPER_FAMILIES:
        # Rows a multiple of the 32-element block.
        width = 256 if weight_type in ("Q4_K", "Q6_K") else 64
        n_head = family_config(family)["n_head"]
        overrides = {} if weight_type in ("F32", "F16") else {"n_embd": width, "n_ff": 2 * width,
                                                              "head_dim": width // n_head}
        try:
            path = write_family_model(tmp_path / f"{family}.gguf", family, seed=3, weight_type=weight_type, **overrides)
        except (QuantError, ValueError):  # a fixture shape this block size cannot hold (e.g. a fused or head-sized row)
            unfit.append(family)
            continue
        plan = _core.cuda_upload_plan(str(path))
        assert plan and all(t["supported"] for t in plan), [t for t in plan if not t["supported"]]
        assert [t for t in plan if t["matrix"]] and sum(t["bytes"] for t in plan) > 0
        ran.append(family)
    print(f"{weight_type}: checked {ran}; shapes this type cannot hold: {unfit}")
    assert ran


def test_device_argument_errors(tmp_path):
    from tiny_models import write_family_model
    import sinkstream
    path = write_family_model(tmp_path / "llama.gguf", "llama", seed=1)
    with pytest.raises(ValueError, match="device must be one of 'cpu', 'cuda'; got 'tpu'"):
        sinkstream.Model(path, device="tpu")
    model = sinkstream.Model(path)
    assert model.device == "cpu" and model.session().device == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        model.session(device="gpu")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'gpu'"):
        _core.Session(model._core, device="gpu")
    if AVAILABLE:
        return
    # No usable CUDA here: one RuntimeError naming what is missing, from Python and from the engine.
    missing = re.escape(NOT_BUILT) if not BUILT else "no (usable )?CUDA device|CUDA"
    with pytest.raises(RuntimeError, match=missing) as info:
        sinkstream.Model(path, device="cuda")
    print(info.value)
    with pytest.raises(RuntimeError, match=missing):
        model.session(device="cuda")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        _core.Session(model._core, device="cuda")


def test_cli_has_device_option():
    import argparse
    from sinkstream.commands import _generation_args
    p = argparse.ArgumentParser()
    _generation_args.add_model_arguments(p)
    assert p.parse_args([]).device == "cpu"
    assert p.parse_args(["--device", "cuda"]).device == "cuda"
    with pytest.raises(SystemExit):
        p.parse_args(["--device", "tpu"])


# ---- built without CUDA --------------------------------------------------------------------------

@pytest.mark.skipif(BUILT, reason="this build has CUDA")
def test_without_cuda_compute_calls_say_how_to_get_it():
    w, name, rows, cols, x = valid_args()
    calls = [
        lambda: _core.cuda_matmul(w, name, rows, cols, x),
        lambda: _core.cuda_matmul(np.frombuffer(w, np.uint8), name, rows, cols, x),
        lambda: _core.cuda_rms_norm(x, np.ones(cols, np.float32)),
        lambda: _core.cuda_silu_mul(x, x),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match=re.escape(NOT_BUILT)):
            call()


# ---- built with CUDA, no device ------------------------------------------------------------------

@pytest.mark.skipif(not BUILT or AVAILABLE, reason="needs a CUDA build on a machine without a usable device")
def test_cuda_build_without_device_says_so():
    w, name, rows, cols, x = valid_args()
    for call in (lambda: _core.cuda_matmul(w, name, rows, cols, x),
                 lambda: _core.cuda_rms_norm(x, np.ones(cols, np.float32)),
                 lambda: _core.cuda_silu_mul(x, x)):
        with pytest.raises(RuntimeError, match=NO_DEVICE) as info:
            call()
        print(info.value)
    assert _core.cuda_devices() == [] or not AVAILABLE


# ---- on the GPU ----------------------------------------------------------------------------------

def cols_for(qtype: T) -> int:
    # Quants: 11 blocks of 32, so a warp's last 8-block step is partial (3 blocks, 12 lanes busy).
    # Floats: 137 = 4 * 32 + 9, a partial last lane step.
    # K-quants: 2 super-blocks of 256.
    if qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        return 512
    return 352 if qtype in QUANTS else 137


@needs_gpu
@pytest.mark.parametrize("n", [1, 3, 8, 21], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_matmul_matches_gguf_reference(qtype, n):
    # n = 1: the decode kernel; 3: one partial tile of 8 tokens; 8: one full tile; 21: 2 tiles + 5.
    # rows = 67: the last thread block has 3 of its 4 row warps.
    rows, cols = 67, cols_for(qtype)
    rng = np.random.default_rng(1000 * n + int(qtype))
    w = random_weight(qtype, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    raw = w.tobytes() if n % 2 else w  # bytes and uint8 arrays both accepted
    got = _core.cuda_matmul(raw, qtype.name, rows, cols, x)
    print(f"{qtype.name} {rows}x{cols} n={n}: max |diff| {check_matmul(qtype, w, rows, cols, x, got):.3g}")


@needs_gpu
@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q8_0], ids=lambda t: t.name)
def test_matmul_model_sized(qtype):
    # Shapes of the default model (SmolLM2-135M: Q4_1 and Q8_0, n_embd 576, n_ff 1536), decode and a
    # prefill chunk; W is read ceil(n / 8) times.
    rng = np.random.default_rng(7)
    rows, cols = 1536, 576
    w = random_weight(qtype, rows, cols, rng)
    for n in (1, 64):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        got = _core.cuda_matmul(w, qtype.name, rows, cols, x)
        print(f"{qtype.name} {rows}x{cols} n={n}: max |diff| {check_matmul(qtype, w, rows, cols, x, got):.3g}")


@needs_gpu
def test_matmul_no_tokens():
    w, name, rows, cols, _ = valid_args()
    y = _core.cuda_matmul(w, name, rows, cols, np.zeros((0, cols), np.float32))
    assert y.shape == (0, rows) and y.dtype == np.float32


@needs_gpu
@pytest.mark.parametrize("n,d,eps", [(1, 576, 1e-5), (7, 1000, 1e-6), (3, 4097, 1e-5), (2, 5, 0.0)])
def test_rms_norm_matches_numpy(n, d, eps):
    # d = 4097: more elements than threads, with a partial last stride; d = 5: fewer than one warp.
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10, (n, 1))).astype(np.float32)
    weight = rng.uniform(-2, 2, d).astype(np.float32)
    got = _core.cuda_rms_norm(x, weight, eps)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + eps) * weight
    assert got.shape == (n, d) and got.dtype == np.float32
    # The scale is computed in double and rounded once; then two float32 products: ~3 roundings.
    err = np.abs(got - want)
    print(f"rms_norm {n}x{d}: max |diff| {err.max():.3g}")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)


@needs_gpu
@pytest.mark.parametrize("shape", [(1,), (1000,), (3, 1536), (70001,)], ids=str)
def test_silu_mul_matches_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    gate = rng.uniform(-20, 20, shape).astype(np.float32)
    up = rng.standard_normal(shape).astype(np.float32)
    got = _core.cuda_silu_mul(gate, up)
    g = gate.astype(np.float64)
    want = g / (1.0 + np.exp(-g)) * up
    assert got.shape == shape and got.dtype == np.float32
    print(f"silu_mul {shape}: max |diff| {np.abs(got - want).max():.3g}")
    # expf and the IEEE division are within ~2 ulp; with the product, a few float32 roundings.
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-37)


@needs_gpu
@pytest.mark.parametrize("kv_type", ["f16", "f32"])
@pytest.mark.parametrize("shape", [(64, 9, 3, 700, 4, 600), (64, 9, 3, 5000, 4, 4500), (64, 8, 2, 5, 4, 16),
                                   (80, 5, 1, 301, 2, 290),
                                   (16, 4, 2, 130, 4, 64), (24, 6, 1, 263, 0, 263), (256, 4, 1, 50, 4, 40)],
                         ids=lambda s: "hd{}-h{}-kv{}-t{}".format(*s[:4]))
def test_attention_kernel_matches_cpu(shape, kv_type):
    # The CUDA backend's attention kernel (through attend_test's 'cuda' level) against the CPU's
    # scalar kernels on the same one-layer sink cache: sinks scored with q_sink, the ring wrapped,
    # GQA groups, head_dim up to 256. Sums in other orders, so close, not equal.
    head_dim, n_head, n_head_kv, n_tokens, n_sink, window = shape
    rng = np.random.default_rng(sum(shape))
    keys = rng.standard_normal((n_tokens, n_head_kv * head_dim), dtype=np.float32)
    values = rng.standard_normal((n_tokens, n_head_kv * head_dim), dtype=np.float32)
    q_window = 1.5 * rng.standard_normal((n_head, head_dim), dtype=np.float32)
    q_sink = 1.5 * rng.standard_normal((n_head, head_dim), dtype=np.float32)
    args = (keys, values, q_sink, q_window, n_head_kv, n_sink, window, kv_type)
    cpu = _core.attend_test(*args, "scalar")
    gpu = _core.attend_test(*args, "cuda")
    tolerance = (1e-3 if kv_type == "f16" else 1e-5) * np.abs(values).max()
    print(f"attention {shape} {kv_type}: max |gpu - cpu| {np.abs(gpu - cpu).max():.3g}")
    assert np.abs(gpu - cpu).max() < tolerance
    # Learned sink logits (gpt-oss): one more softmax column per head, with no value.
    sinks = rng.standard_normal(n_head).astype(np.float32) * 3
    cpu = _core.attend_test(*args, "scalar", sink_logits=sinks)
    gpu = _core.attend_test(*args, "cuda", sink_logits=sinks)
    assert np.abs(gpu - cpu).max() < tolerance


# ---- the row-wise and elementwise kernels against their CPU twins (cuda_op_test) ------------------

def op_cases():
    rng = np.random.default_rng(42)
    x = (rng.standard_normal((5, 300)) * 3).astype(np.float32)
    up = rng.standard_normal((5, 300)).astype(np.float32)
    w, bias = rng.uniform(-2, 2, 300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
    angles = rng.uniform(-np.pi, np.pi, 24)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    none = np.zeros(0, np.float32)
    heads = rng.standard_normal((6, 64)).astype(np.float32)
    return {
        "layer_norm": (x, w, bias, 1e-5), "layer_norm_no_bias": (x, w, none, 1e-5),
        "gelu": (x, none, none, 0.0), "gelu_tanh": (x, none, none, 0.0),
        "swiglu": (x, up, none, 0.0), "geglu": (x, up, none, 0.0),
        "rope_adjacent": (heads, cos, sin, 0.0), "rope_neox": (heads, cos, sin, 0.0),  # partial: 48 of 64
        "soft_cap": (x, none, none, 2.5), "clamp": (x, none, none, 1.5),
    }


def test_op_test_cpu_branch_and_arguments():
    cases = op_cases()
    x = cases["gelu"][0]
    np.testing.assert_array_equal(_core.cuda_op_test("clamp", "cpu", x, *cases["clamp"][1:]), np.clip(x, -1.5, 1.5))
    for name, (a, b, c, p) in cases.items():
        out = _core.cuda_op_test(name.replace("_no_bias", ""), "cpu", a, b, c, p)
        assert out.shape == a.shape and np.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown op 'relu'"):
        _core.cuda_op_test("relu", "cpu", x, x[0], x[0])
    with pytest.raises(ValueError, match="layer_norm: weight and bias"):
        _core.cuda_op_test("layer_norm", "cpu", x, x[0, :7], x[0, :0])
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        _core.cuda_op_test("gelu", "gpu", x, x[0], x[0])
    if not AVAILABLE:
        with pytest.raises(RuntimeError):
            _core.cuda_op_test("gelu", "cuda", x, x[0, :0], x[0, :0])


@needs_gpu
@pytest.mark.parametrize("name", list(op_cases()))
def test_op_matches_cpu_twin(name):
    a, b, c, p = op_cases()[name]
    op = name.replace("_no_bias", "")
    cpu = _core.cuda_op_test(op, "cpu", a, b, c, p)
    gpu = _core.cuda_op_test(op, "cuda", a, b, c, p)
    print(f"{name}: max |gpu - cpu| {np.abs(gpu - cpu).max():.3g}")
    # expf / erff / tanhf within a few ulp of the CPU's libm, FMA contraction on the GPU.
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6)
