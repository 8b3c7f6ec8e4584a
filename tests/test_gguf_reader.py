"""GGUFFile reads what the reference writer (gguf-py's GGUFWriter) wrote: every metadata type, v2 and
v3, custom alignments, F32/F16/quantized tensors in numpy order, files over 4 GiB, and the default
model bit for bit against gguf.quants.dequantize."""
from __future__ import annotations

import os
import struct

import gguf
import numpy as np
import pytest

import sinkstream
from sinkstream import GGUFError, GGUFFile

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType


# ---- metadata -----------------------------------------------------------------------------------

SCALARS = {
    "t.u8": (255, VT.UINT8),
    "t.i8": (-128, VT.INT8),
    "t.u16": (65535, VT.UINT16),
    "t.i16": (-32768, VT.INT16),
    "t.u32": (2**32 - 1, VT.UINT32),
    "t.i32": (-(2**31), VT.INT32),
    "t.u64": (2**64 - 1, VT.UINT64),
    "t.i64": (-(2**63), VT.INT64),
    "t.f32": (0.1, VT.FLOAT32),  # not representable: must read back as float32(0.1)
    "t.f64": (0.1, VT.FLOAT64),
    "t.true": (True, VT.BOOL),
    "t.false": (False, VT.BOOL),
    "t.str": ("h\u00e9llo \u2713 \U0001F600", VT.STRING),
    "t.empty_str": ("", VT.STRING),
}
ARRAYS = {
    "a.u8": ([0, 1, 255], VT.ARRAY, VT.UINT8),
    "a.i16": ([-5, 7], VT.ARRAY, VT.INT16),
    "a.i32": ([1, -2, 3], VT.ARRAY, VT.INT32),
    "a.u64": ([2**63, 1], VT.ARRAY, VT.UINT64),
    "a.f32": ([0.5, -1.25, 0.1], VT.ARRAY, VT.FLOAT32),
    "a.f64": ([0.1, 1e300], VT.ARRAY, VT.FLOAT64),
    "a.bool": ([True, False, True], VT.ARRAY, VT.BOOL),
    "a.str": (["a", "", "\u00fc\u00df"], VT.ARRAY, VT.STRING),
    "a.nested": ([[1, 2], [3], [4, 5, 6]], VT.ARRAY),                 # array of arrays of int32
    "a.nested3": ([[[1.5]], [[2.5, 3.5], [4.5]]], VT.ARRAY),           # three levels, float32
    "a.nested_str": ([["x", "y"], ["z"]], VT.ARRAY),                   # arrays of string arrays
}


def expected_python(value, vtype):
    if vtype == VT.FLOAT32:
        return float(np.float32(value))
    return value


def test_every_metadata_value_type(make_gguf):
    path = make_gguf(kv={**SCALARS, **ARRAYS})
    md = GGUFFile(path).metadata
    assert md["general.architecture"] == "llama"
    for key, (value, vtype) in SCALARS.items():
        got = md[key]
        assert got == expected_python(value, vtype), key
        assert type(got) is type(expected_python(value, vtype)), key
    assert md["a.u8"] == [0, 1, 255] and md["a.i16"] == [-5, 7] and md["a.i32"] == [1, -2, 3]
    assert md["a.u64"] == [2**63, 1]
    assert md["a.f32"] == [0.5, -1.25, float(np.float32(0.1))]
    assert md["a.f64"] == [0.1, 1e300]
    assert md["a.bool"] == [True, False, True] and all(type(b) is bool for b in md["a.bool"])
    assert md["a.str"] == ["a", "", "\u00fc\u00df"]
    assert md["a.nested"] == [[1, 2], [3], [4, 5, 6]]
    assert md["a.nested3"] == [[[1.5]], [[2.5, 3.5], [4.5]]]
    assert md["a.nested_str"] == [["x", "y"], ["z"]]
    # File order is kept (GGUFWriter writes the architecture first, then the pairs as given).
    assert list(md) == ["general.architecture", *SCALARS, *ARRAYS]


def test_metadata_matches_gguf_reader(make_gguf):
    path = make_gguf(kv={**SCALARS, **{k: v for k, v in ARRAYS.items() if "nested" not in k}})
    ours = GGUFFile(path).metadata
    reference = gguf.GGUFReader(path)
    for key, field in reference.fields.items():
        if key.startswith("GGUF."):
            continue
        want = field.contents()
        if VT.FLOAT32 in field.types:
            want = np.float32(want).tolist()
        assert ours[key] == want, key


def test_empty_array_and_array_of_empty_arrays(tmp_path, gguf_bytes):
    b = gguf_bytes()
    b.add_kv("empty", b.ARRAY, (b.U32, []))
    b.add_kv("empty_inner", b.ARRAY, (b.ARRAY, [(b.STRING, []), (b.STRING, ["q"])]))
    path = tmp_path / "empty_arrays.gguf"
    path.write_bytes(b.build())
    g = GGUFFile(path)
    assert g.metadata == {"empty": [], "empty_inner": [[], ["q"]]}
    assert g.tensors == []


# ---- versions, alignment -------------------------------------------------------------------------

def test_v2_and_v3_read_the_same(make_gguf, tmp_path, bits_equal):
    # v2 and v3 share the little-endian layout (v2 made counts and lengths 64-bit; v3 only added
    # big-endian files), so a v2 file is the v3 file with the version field set to 2.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    v3 = make_gguf("v3.gguf", kv={"x.n": (7, VT.UINT32), "x.s": (["a", "b"], VT.ARRAY, VT.STRING)},
                   tensors={"w": w})
    image = bytearray(v3.read_bytes())
    assert struct.unpack_from("<I", image, 4)[0] == 3
    struct.pack_into("<I", image, 4, 2)
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(bytes(image))
    g2, g3 = GGUFFile(v2), GGUFFile(v3)
    assert (g2.version, g3.version) == (2, 3)
    assert g2.metadata == g3.metadata
    assert g2.metadata["x.n"] == 7 and g2.metadata["x.s"] == ["a", "b"]
    assert g2.tensors == g3.tensors
    assert bits_equal(g2.tensor("w"), w) and bits_equal(g3.tensor("w"), w)


@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
def test_custom_alignment(make_gguf, alignment, bits_equal):
    rng = np.random.default_rng(alignment)
    tensors = {f"t{i}": rng.standard_normal(n).astype(np.float32) for i, n in enumerate([3, 17, 5])}
    path = make_gguf(alignment=alignment, tensors=tensors)
    g = GGUFFile(path)
    assert g.alignment == alignment and g.metadata["general.alignment"] == alignment
    assert g.data_offset % alignment == 0
    reference = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for info in g.tensors:
        assert (info.offset - g.data_offset) % alignment == 0
        assert info.offset == reference[info.name].data_offset
        assert bits_equal(g.tensor(info.name), tensors[info.name])


# ---- tensor data ---------------------------------------------------------------------------------

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 5)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float_tensors_round_trip_in_numpy_order(make_gguf, dtype, bits_equal):
    rng = np.random.default_rng(1)
    tensors = {f"t{i}": rng.standard_normal(shape).astype(dtype) for i, shape in enumerate(SHAPES)}
    tensors["specials"] = np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 6e-8], dtype=dtype)
    path = make_gguf(tensors=tensors)
    g = GGUFFile(path)
    reference = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert [t.name for t in g.tensors] == list(tensors)
    for info in g.tensors:
        arr = tensors[info.name]
        assert info.shape == arr.shape
        assert info.dtype == ("F32" if dtype == np.float32 else "F16")
        assert info.nbytes == arr.nbytes
        assert info.offset == reference[info.name].data_offset
        got = g.tensor(info.name)
        assert got.dtype == np.float32 and got.shape == arr.shape
        assert bits_equal(got, arr.astype(np.float32))


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_1, QT.BF16])
def test_quantized_tensor_equals_gguf_dequantize(make_gguf, qtype, bits_equal):
    rng = np.random.default_rng(2)
    values = rng.standard_normal((3, 64)).astype(np.float32)
    raw = gguf.quants.quantize(values, qtype)
    path = make_gguf(tensors={"q": (raw, qtype)})
    g = GGUFFile(path)
    (info,) = g.tensors
    assert info.dtype == qtype.name and info.shape == (3, 64) and info.nbytes == raw.nbytes
    assert bits_equal(g.tensor("q"), gguf.quants.dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", [QT.Q8_1, QT.I32])
def test_type_we_cannot_dequantize_names_tensor_and_type(make_gguf, qtype):
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.zeros((2, 2 * block_bytes), dtype=np.uint8)
    path = make_gguf(tensors={"odd.weight": (raw, qtype)})
    g = GGUFFile(path)  # opening and listing work: only converting to float32 is refused
    assert g.tensors[0].dtype == qtype.name
    with pytest.raises(GGUFError, match=rf"odd\.weight.*{qtype.name}.*cannot dequantize") as e:
        g.tensor("odd.weight")
    assert str(path) in str(e.value)


def test_missing_tensor_name_is_a_key_error(make_gguf):
    g = GGUFFile(make_gguf(tensors={"a": np.zeros(4, np.float32)}))
    with pytest.raises(KeyError, match="no tensor named 'b'"):
        g.tensor("b")


def test_file_without_tensors(make_gguf):
    g = GGUFFile(make_gguf(kv={"k": (1, VT.INT32)}))
    assert g.tensors == [] and g.metadata["k"] == 1


def test_file_over_4_gib_is_sparse_and_fast(tmp_path, gguf_bytes, bits_equal):
    # One small tensor at offset 0 and one 5 GiB into the data section: 64-bit offsets all the way.
    # The gap is a hole made by truncate(), so no disk is used and nothing reads it.
    near = np.arange(8, dtype=np.float32)
    far = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    far_offset = 5 << 30
    b = gguf_bytes()
    b.add_kv("general.architecture", b.STRING, "llama")
    b.add_tensor("near", [8], 0, near.tobytes())
    b.add_tensor("far", [4, 3], 0, offset=far_offset)
    image = b.build()
    data_start = len(image) - len(near.tobytes())
    path = tmp_path / "big.gguf"
    with open(path, "wb") as f:
        f.write(image)
        f.truncate(data_start + far_offset)
        f.seek(data_start + far_offset)
        f.write(far.tobytes())
    assert os.path.getsize(path) > 5 << 30
    assert os.stat(path).st_blocks * 512 < 1 << 20  # sparse: the hole takes no disk
    g = GGUFFile(path)
    far_info = next(t for t in g.tensors if t.name == "far")
    assert far_info.offset == data_start + far_offset and far_info.shape == (3, 4)
    assert bits_equal(g.tensor("far"), far) and bits_equal(g.tensor("near"), near)


# ---- paths ---------------------------------------------------------------------------------------

def test_missing_path_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        GGUFFile(tmp_path / "nope.gguf")
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        GGUFFile(tmp_path)
    # The native layer refuses a directory too (a path that changes under us between the checks).
    with pytest.raises(GGUFError, match="is a directory"):
        sinkstream._core.GgufFile.open(str(tmp_path))


def test_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(GGUFError, match=rf"{fifo}.*not a regular file"):
        GGUFFile(fifo)


def test_path_like_and_bytes_paths(make_gguf):
    path = make_gguf(kv={"k": (3, VT.UINT8)})
    assert GGUFFile(path).metadata["k"] == 3
    assert GGUFFile(os.fsencode(path)).metadata["k"] == 3


# ---- the default model ---------------------------------------------------------------------------

@pytest.mark.model
def test_default_model_every_tensor_bit_for_bit(default_model_path, default_model_reader, bits_equal):
    g = GGUFFile(default_model_path)
    assert g.metadata["general.architecture"] == "llama"
    assert len(g.tensors) == 272 == len(default_model_reader.tensors)
    ours = {t.name: t for t in g.tensors}
    for ref in default_model_reader.tensors:
        info = ours[ref.name]
        assert info.dtype == ref.tensor_type.name
        assert info.offset == ref.data_offset and info.nbytes == ref.n_bytes
        want = gguf.quants.dequantize(ref.data, ref.tensor_type)
        got = g.tensor(ref.name)
        assert got.shape == want.shape == info.shape, ref.name
        assert bits_equal(got, want), ref.name


@pytest.mark.model
def test_default_model_metadata_matches_gguf_reader(default_model_path, default_model_reader):
    md = GGUFFile(default_model_path).metadata
    keys = [k for k in default_model_reader.fields if not k.startswith("GGUF.")]
    assert list(md) == keys
    for key in keys:
        field = default_model_reader.fields[key]
        want = field.contents()
        if VT.FLOAT32 in field.types:
            want = np.float32(want).tolist()
        assert md[key] == want, key


def test_a_missing_tensor_is_named_with_suggestions(tmp_path):
    # It used to be a bare KeyError from the native reader, its message quoted.
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 2), np.float32))
    w.add_tensor("output_norm.weight", np.ones(2, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(path)
    with pytest.raises(sinkstream.TensorNotFoundError) as info:
        f.tensor("token_emb.weight")
    assert str(info.value) == f"{path}: no tensor named 'token_emb.weight'; did you mean 'token_embd.weight'?"
    assert isinstance(info.value, GGUFError) and isinstance(info.value, ValueError)
    assert isinstance(info.value, KeyError)  # a lookup by name, as before
    with pytest.raises(GGUFError, match="no tensor named 'nope' \\(it has 2 tensors, e.g. 'token_embd.weight', "
                                        "'output_norm.weight'; see .tensors\\)"):
        f.tensor("nope")
    with pytest.raises(TypeError, match="tensor name must be a str, got int"):
        f.tensor(3)
    assert f.tensor("output_norm.weight").tolist() == [1.0, 1.0]
