"""Hostile and broken GGUF files: each one must raise sinkstream.GGUFError (a ValueError) whose
message names the file and the exact problem. Never a crash, a hang or a giant allocation.

Files are crafted field by field with conftest.GgufBytes (the spec's layout), or with gguf-py's
writer where it can express the case (big-endian files)."""
from __future__ import annotations

import os
import re
import struct
import tempfile

import gguf
import numpy as np
import pytest

from sinkstream import GGUFError, GGUFFile

F32, Q4_1, Q8_0 = 0, 3, 8
# GGUF metadata value types (spec): used in the table below.
U8, I16, U32, I32, F32V, BOOL, STRING, ARRAY = 0, 3, 4, 5, 6, 7, 8, 9


class _Builder:
    """Set per test from the gguf_bytes fixture (conftest.GgufBytes): the case table is built from
    plain functions that run inside the test, never at import time."""
    cls = None


@pytest.fixture(autouse=True)
def _builder(gguf_bytes):
    _Builder.cls = gguf_bytes


def new(**kwargs):
    return _Builder.cls(**kwargs)


def base(**kwargs):
    """A valid start: only the architecture key."""
    b = new(**kwargs)
    b.add_kv("general.architecture", STRING, "llama")
    return b


def with_tensors(*tensors, **kwargs) -> bytes:
    """tensors: (name, dims, type_id, nbytes or data[, offset or None[, n_dims]])."""
    b = base(**kwargs)
    for name, dims, type_id, data, *rest in tensors:
        offset = rest[0] if rest else None
        n_dims = rest[1] if len(rest) > 1 else None
        b.add_tensor(name, dims, type_id, bytes(data) if isinstance(data, int) else data, offset=offset,
                     n_dims=n_dims)
    return b.build()


def header_only(version=3, n_tensors=0, n_kv=0, magic=b"GGUF", tail=b"") -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv) + tail


def kv_file(key, vtype, value=None, raw=None, n=1) -> bytes:
    b = new()
    for _ in range(n):
        b.add_kv(key, vtype, value, raw=raw)
    return b.build()


def nested_arrays(depth: int) -> bytes:
    value: tuple = (U8, [1])
    for _ in range(depth - 1):
        value = (ARRAY, [value])
    return kv_file("deep", ARRAY, value)


def big_endian_file() -> bytes:
    # gguf-py writes real big-endian files (v3): magic bytes "GGUF", every number big-endian.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "be.gguf")
        w = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
        w.add_tensor("w", np.zeros(4, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(path, "rb") as f:
            return f.read()


def alignment_file(value, vtype=U32) -> bytes:
    b = base()
    b.add_kv("general.alignment", vtype, value)
    b.add_tensor("w", [8], F32, bytes(32))
    return b.build()


def huge_uint8_array() -> bytes:
    # 16 Mi one-byte elements: a 16 MiB file whose values would take ~1.6 GiB once decoded.
    n = 1 << 24
    return kv_file("big", ARRAY, raw=struct.pack("<IQ", U8, n) + bytes(n))


def kv_count_one_too_many() -> bytes:
    b = base()
    b.n_kv = 2
    return b.build()


def tensor_count_one_too_many() -> bytes:
    b = base()
    b.add_tensor("w", [8], F32, bytes(32))
    b.n_tensors = 2
    return b.build()


def offset_not_multiple_of_custom_alignment() -> bytes:
    b = base(alignment=64)
    b.add_kv("general.alignment", U32, 64)
    b.add_tensor("w", [8], F32, offset=32)
    return b.build()


# (id, file bytes, regex the message must contain after the file name)
CASES = [
    ("empty-file", lambda: b"", r"the file is empty"),
    ("not-gguf-short", lambda: b"PK", r"not a GGUF file"),
    ("bad-magic", lambda: header_only(magic=b"GGUG"), r"not a GGUF file"),
    ("gguf-lowercase-magic", lambda: header_only(magic=b"gguf"), r"not a GGUF file"),
    ("version-0", lambda: header_only(version=0), r"unsupported GGUF version 0"),
    ("version-1", lambda: header_only(version=1), r"GGUF version 1 is not supported"),
    ("version-99", lambda: header_only(version=99), r"unsupported GGUF version 99"),
    ("big-endian", big_endian_file, r"big-endian GGUF is not supported"),
    ("big-endian-crafted", lambda: b"GGUF" + struct.pack(">IQQ", 3, 0, 0), r"big-endian GGUF is not supported"),
    ("tensor-count-too-large", lambda: header_only(n_tensors=1 << 40), r"tensor count 1099511627776 does not fit"),
    ("tensor-count-max", lambda: header_only(n_tensors=2**64 - 1), r"tensor count \d+ does not fit"),
    ("kv-count-too-large", lambda: header_only(n_kv=1 << 40), r"metadata count 1099511627776 does not fit"),
    ("kv-count-one-too-many", kv_count_one_too_many, r"file truncated while reading a metadata key"),
    ("tensor-count-one-too-many", tensor_count_one_too_many, r"tensor 1 has an empty name"),  # reads the padding
    ("key-length-huge", lambda: header_only(n_kv=1, tail=struct.pack("<Q", 2**62) + b"x" * 16),
     r"metadata key has an implausible length 4611686018427387904"),
    ("key-length-past-end", lambda: header_only(n_kv=1, tail=struct.pack("<Q", 1000) + b"x" * 16),
     r"file truncated while reading a metadata key: need 1000 bytes"),
    ("string-value-length-huge", lambda: kv_file("s", STRING, raw=struct.pack("<Q", 2**64 - 1) + b"abc"),
     r"string value has an implausible length 18446744073709551615"),
    ("string-value-past-end", lambda: kv_file("s", STRING, raw=struct.pack("<Q", 100) + b"abc"),
     r"file truncated while reading a string value: need 100 bytes, 3 left"),
    ("array-length-huge", lambda: kv_file("a", ARRAY, raw=struct.pack("<IQ", U32, 2**60) + bytes(8)),
     r"metadata key 'a': array length 1152921504606846976 does not fit"),
    ("array-of-strings-length-huge", lambda: kv_file("a", ARRAY, raw=struct.pack("<IQ", STRING, 2**40)),
     r"metadata key 'a': array length 1099511627776 does not fit"),
    ("array-string-element-past-end",
     lambda: kv_file("a", ARRAY, raw=struct.pack("<IQQ", STRING, 1, 50) + b"xy"),
     r"file truncated while reading a string value"),
    ("arrays-nested-too-deep", lambda: nested_arrays(9), r"metadata key 'deep': arrays nested deeper than 8"),
    ("unknown-value-type", lambda: kv_file("k", 13, raw=bytes(8)), r"metadata key 'k' has unknown value type 13"),
    ("unknown-value-type-max", lambda: kv_file("k", 2**32 - 1, raw=bytes(8)), r"unknown value type 4294967295"),
    ("unknown-array-element-type", lambda: kv_file("k", ARRAY, raw=struct.pack("<IQ", 77, 1) + bytes(8)),
     r"metadata key 'k': unknown array element type 77"),
    ("bool-not-0-or-1", lambda: kv_file("flag", BOOL, raw=b"\x02"), r"metadata key 'flag': bool value is 2, not 0 or 1"),
    ("bool-in-array-not-0-or-1", lambda: kv_file("flags", ARRAY, raw=struct.pack("<IQ", BOOL, 2) + b"\x01\xff"),
     r"metadata key 'flags': bool value is 255"),
    ("duplicate-key", lambda: kv_file("a.b", U32, 1, n=2), r"duplicate metadata key 'a\.b'"),
    ("empty-key", lambda: kv_file("", U32, 1), r"metadata pair 0 has an empty key"),
    ("key-not-utf8", lambda: kv_file(b"bad\xff", U32, 1), r"metadata pair 0 has a key that is not valid UTF-8"),
    ("key-with-nul", lambda: kv_file(b"a\x00b", U32, 1), r"not valid UTF-8"),
    ("metadata-decodes-too-big", huge_uint8_array, r"would need more than 1024 MiB of memory"),
    ("duplicate-tensor-name", lambda: with_tensors(("w", [8], F32, 32), ("w", [8], F32, 32)),
     r"duplicate tensor name 'w'"),
    ("empty-tensor-name", lambda: with_tensors(("", [8], F32, 32)), r"tensor 0 has an empty name"),
    ("tensor-name-not-utf8", lambda: with_tensors((b"w\xc0\xaf", [8], F32, 32)),
     r"tensor 0 has a name that is not valid UTF-8"),
    ("n-dims-0", lambda: with_tensors(("w", [], F32, 32)), r"tensor 'w' has 0 dimensions \(1 to 4 allowed\)"),
    ("n-dims-5", lambda: with_tensors(("w", [1, 1, 1, 1, 8], F32, 32)), r"tensor 'w' has 5 dimensions"),
    ("n-dims-huge", lambda: with_tensors(("w", [8], F32, 32, None, 2**31)), r"tensor 'w' has 2147483648 dimensions"),
    ("zero-dim", lambda: with_tensors(("w", [8, 0], F32, 32)), r"tensor 'w' dimension 1 is 0"),
    ("dim-above-int64", lambda: with_tensors(("w", [2**63], F32, 32)), r"tensor 'w' dimension 0 is 9223372036854775808"),
    ("dims-product-overflows", lambda: with_tensors(("w", [2**32, 2**32], F32, 32)),
     r"tensor 'w' element count overflows 64 bits"),
    ("dims-product-overflows-4d", lambda: with_tensors(("w", [2**16, 2**16, 2**16, 2**16], F32, 32)),
     r"tensor 'w' element count overflows 64 bits"),
    ("byte-size-overflows", lambda: with_tensors(("w", [2**31, 2**31], F32, 32)),
     r"tensor 'w' needs 4611686018427387904 blocks of 4 bytes \(F32\), more than the file's"),
    ("unknown-tensor-type", lambda: with_tensors(("w", [8], 1000, 32)), r"tensor 'w' has unknown type id 1000"),
    ("removed-tensor-type-q4_2", lambda: with_tensors(("w", [32], 4, 32)), r"tensor 'w' has unknown type id 4"),
    ("row-not-multiple-of-block", lambda: with_tensors(("w", [48, 2], Q4_1, 60)),
     r"tensor 'w' row length 48 is not a multiple of the Q4_1 block size 32"),
    ("offset-not-aligned", lambda: with_tensors(("w", [8], F32, 32, 4)),
     r"tensor 'w' offset 4 is not a multiple of the alignment 32"),
    ("offset-not-aligned-custom", offset_not_multiple_of_custom_alignment,
     r"tensor 'w' offset 32 is not a multiple of the alignment 64"),
    ("offset-beyond-file", lambda: with_tensors(("w", [8], F32, 32), ("v", [8], F32, 0, 1 << 40)),
     r"tensor 'v' data \(offset 1099511627776, 32 bytes\) lies outside the data section of 32 bytes"),
    ("offset-near-2-64", lambda: with_tensors(("w", [8], F32, 32, 2**64 - 32)),
     r"tensor 'w' data \(offset 18446744073709551584, 32 bytes\) lies outside the data section"),
    ("size-beyond-file", lambda: with_tensors(("w", [8], F32, 16)),
     r"tensor 'w' data \(offset 0, 32 bytes\) lies outside the data section of 16 bytes"),
    ("tensors-but-no-data", lambda: with_tensors(("w", [8], F32, 0)), r"lies outside the data section of 0 bytes"),
    ("overlapping-tensors", lambda: with_tensors(("a", [16], F32, 64), ("b", [8], F32, 0, 32)),
     r"tensors 'a' and 'b' overlap in the data section"),
    ("same-offset-tensors", lambda: with_tensors(("a", [8], F32, 32), ("b", [8], F32, 0, 0)),
     r"tensors '[ab]' and '[ab]' overlap"),
    ("alignment-not-power-of-two", lambda: alignment_file(48), r"general\.alignment is 48, not a power of two"),
    ("alignment-zero", lambda: alignment_file(0), r"general\.alignment is 0, not a power of two"),
    ("alignment-huge", lambda: alignment_file(1 << 30), r"general\.alignment is 1073741824, not a power of two up to 1 MiB"),
    ("alignment-negative", lambda: alignment_file(-32, I32), r"general\.alignment is -32"),
    ("alignment-is-string", lambda: alignment_file("32", STRING), r"general\.alignment is a string, expected an integer"),
    ("alignment-is-float", lambda: alignment_file(32.0, F32V), r"general\.alignment is a float32, expected an integer"),
]


@pytest.mark.parametrize("name, make, message", CASES, ids=[c[0] for c in CASES])
def test_malformed_file_raises_gguf_error(tmp_path, name, make, message):
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(make())
    with pytest.raises(GGUFError) as e:
        GGUFFile(path)
    text = str(e.value)
    assert isinstance(e.value, ValueError)
    assert text.startswith(f"{path}: "), text
    assert re.search(message, text), f"{message!r} not in {text!r}"


def valid_small_file() -> bytes:
    """A valid file touching every section: scalars, a string, nested arrays, two tensors."""
    b = base()
    b.add_kv("llama.block_count", U32, 2)
    b.add_kv("x.eps", F32V, 1e-5)
    b.add_kv("x.flag", BOOL, 1)
    b.add_kv("x.tokens", ARRAY, (STRING, ["<s>", "hi"]))
    b.add_kv("x.nested", ARRAY, (ARRAY, [(I16, [1, 2]), (I16, [3])]))
    b.add_tensor("a", [4, 2], F32, np.arange(8, dtype=np.float32).tobytes())
    b.add_tensor("b", [32], Q8_0, bytes(34))
    return b.build()


def test_the_truncation_base_file_is_valid(tmp_path):
    path = tmp_path / "valid.gguf"
    path.write_bytes(valid_small_file())
    g = GGUFFile(path)
    assert g.metadata["x.tokens"] == ["<s>", "hi"] and g.metadata["x.nested"] == [[1, 2], [3]]
    assert [t.name for t in g.tensors] == ["a", "b"]
    assert np.array_equal(g.tensor("a"), np.arange(8, dtype=np.float32).reshape(2, 4))


def test_truncated_at_every_byte(tmp_path):
    image = valid_small_file()
    for cut in range(len(image)):  # every prefix shorter than the file, from 0 bytes up
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(image[:cut])
        with pytest.raises(GGUFError) as e:
            GGUFFile(path)
        text = str(e.value)
        assert text.startswith(f"{path}: "), text
        assert re.search(r"truncated|empty|does not fit|outside the data section", text), (cut, text)
        path.unlink()


def test_random_corruption_never_crashes(tmp_path):
    # Flip random bytes of the valid file: each result either parses or raises GGUFError.
    image = valid_small_file()
    rng = np.random.default_rng(1234)
    path = tmp_path / "corrupt.gguf"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        corrupt = bytearray(image)
        for pos in rng.integers(0, len(image), size=int(rng.integers(1, 4))):
            corrupt[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(corrupt))
        try:
            g = GGUFFile(path)
            g.metadata
            for t in g.tensors:
                g.tensor(t.name)
            outcomes["ok"] += 1
        except GGUFError as e:
            assert str(e).startswith(f"{path}: ")
            outcomes["error"] += 1
    assert outcomes["error"] > 0 and outcomes["ok"] > 0
