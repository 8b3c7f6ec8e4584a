"""Shared fixtures: the default model, and two ways to write small GGUF files for tests.

- make_gguf: a well-formed file written by the `gguf` package's GGUFWriter (the reference writer).
- GgufBytes: a field-by-field builder following the spec (ggml docs/gguf.md), so a test can make any
  field lie (counts, lengths, types, offsets) where GGUFWriter would refuse.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest

import sinkstream

# Test helpers (reference_llama.py, tiny_models.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def default_model_path() -> str:
    """The default model (SmolLM2-135M-Instruct Q4_1), from the user cache, fetched there once."""
    return sinkstream.default_model_path()


@pytest.fixture(scope="session")
def default_model_reader(default_model_path: str) -> gguf.GGUFReader:
    """gguf-py's own reader of the default model: an independent reference (opening takes ~2 s)."""
    return gguf.GGUFReader(default_model_path)


@pytest.fixture
def make_gguf(tmp_path: Path) -> Callable[..., Path]:
    """make_gguf(name, kv=..., tensors=..., alignment=..., setup=...) -> path of a GGUFWriter file.

    kv: {key: (value, GGUFValueType)} or {key: (value, GGUFValueType.ARRAY, element_type)}.
    tensors: {name: ndarray} (F32/F16 by dtype) or {name: (raw, GGMLQuantizationType)} for
    quantized data, raw a uint8 array shaped (..., bytes per row) as gguf.quants.quantize returns.
    setup: called with the writer before writing, for anything else.
    """

    def make(name: str = "test.gguf", *, arch: str = "llama", kv: dict[str, tuple] | None = None,
             tensors: dict[str, Any] | None = None, alignment: int | None = None,
             setup: Callable[[gguf.GGUFWriter], None] | None = None) -> Path:
        path = tmp_path / name
        writer = gguf.GGUFWriter(path, arch)
        if alignment is not None:
            writer.add_custom_alignment(alignment)
        for key, spec in (kv or {}).items():
            writer.add_key_value(key, *spec)
        for tensor_name, tensor in (tensors or {}).items():
            if isinstance(tensor, tuple):
                raw, qtype = tensor
                writer.add_tensor(tensor_name, raw, raw_dtype=qtype)
            else:
                writer.add_tensor(tensor_name, tensor)
        if setup is not None:
            setup(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    return make


class GgufBytes:
    """A GGUF image built field by field, little-endian (spec: ggml docs/gguf.md, versions 2 and 3).

    Layout: magic, u32 version, u64 tensor count, u64 kv count, kv pairs, tensor infos, padding to
    the alignment, tensor data (each tensor's offset relative to the data section start).
    """

    U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
    _SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
               U64: "<Q", I64: "<q", F64: "<d"}

    def __init__(self, version: int = 3, alignment: int = 32, magic: bytes = b"GGUF"):
        self.magic = magic
        self.version = version
        self.alignment = alignment  # padding used by build(); add general.alignment yourself
        self.kv: list[bytes] = []
        self.infos: list[bytes] = []
        self.data = bytearray()
        self.n_tensors: int | None = None  # overrides of the counts, to make them lie
        self.n_kv: int | None = None

    @staticmethod
    def string(s: str | bytes, length: int | None = None) -> bytes:
        raw = s.encode() if isinstance(s, str) else s
        return struct.pack("<Q", len(raw) if length is None else length) + raw

    @classmethod
    def value(cls, vtype: int, value: Any) -> bytes:
        """Encodes a value without its type tag; arrays are given as (element_type, [values])."""
        if vtype in cls._SCALAR:
            return struct.pack(cls._SCALAR[vtype], value)
        if vtype == cls.STRING:
            return cls.string(value)
        if vtype == cls.ARRAY:
            element_type, items = value
            return struct.pack("<IQ", element_type, len(items)) + b"".join(
                cls.value(element_type, item) for item in items)
        raise ValueError(f"unknown GGUF value type {vtype}")

    def add_kv(self, key: str | bytes, vtype: int, value: Any = None, *, raw: bytes | None = None) -> None:
        """raw: the encoded value bytes as given (for values the encoder cannot express)."""
        body = raw if raw is not None else self.value(vtype, value)
        self.kv.append(self.string(key) + struct.pack("<I", vtype) + body)

    def add_tensor(self, name: str | bytes, dims: list[int], type_id: int, data: bytes = b"", *,
                   offset: int | None = None, n_dims: int | None = None) -> int:
        """dims in ggml order (dims[0] contiguous). data is appended at the next aligned offset
        unless offset is given (then data is not stored). Returns the offset written."""
        if offset is None:
            self.data += b"\0" * (-len(self.data) % self.alignment)
            offset = len(self.data)
            self.data += data
        self.infos.append(self.string(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
                          + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", type_id, offset))
        return offset

    def header(self) -> bytes:
        n_tensors = len(self.infos) if self.n_tensors is None else self.n_tensors
        n_kv = len(self.kv) if self.n_kv is None else self.n_kv
        return self.magic + struct.pack("<IQQ", self.version, n_tensors, n_kv)

    def build(self) -> bytes:
        head = self.header() + b"".join(self.kv) + b"".join(self.infos)
        if not self.infos:
            return head
        return head + b"\0" * (-len(head) % self.alignment) + bytes(self.data)


@pytest.fixture
def gguf_bytes() -> type[GgufBytes]:
    return GgufBytes


def f32_bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape and the same float32 bit patterns (NaN payloads and -0.0 included)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture
def bits_equal() -> Callable[[np.ndarray, np.ndarray], bool]:
    return f32_bits_equal
