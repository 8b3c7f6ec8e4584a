"""GGUFFile: inspect a GGUF file (metadata, tensor table, dequantized tensors) without loading a model."""
from __future__ import annotations

import errno
import os
from typing import Any, NamedTuple

import numpy as np

from . import _core


class TensorNotFoundError(_core.GGUFError, KeyError):
    """GGUFFile.tensor() of a name the file does not have: a GGUFError (ValueError) and, as a
    lookup by name, a KeyError."""

    __str__ = Exception.__str__  # the message as written (KeyError's would quote it)


class TensorInfo(NamedTuple):
    name: str
    shape: tuple[int, ...]  # numpy order: the contiguous axis last
    dtype: str              # GGML type name, e.g. "Q4_1"
    offset: int             # absolute byte offset of the data in the file
    nbytes: int


class GGUFFile:
    """A memory-mapped, validated GGUF file. Raises GGUFError (a ValueError) naming any problem."""

    def __init__(self, path: str | os.PathLike[str]):
        path = os.fsdecode(path)
        # Python's own exceptions for a missing path or a directory; everything about the bytes
        # (empty, truncated, lying counts, ...) is a GGUFError from the native parser.
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "GGUF file not found", path)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "expected a GGUF file, got a directory", path)
        self.path = path
        self._file = _core.GgufFile.open(path)
        self._metadata: dict[str, Any] | None = None
        self._tensors: list[TensorInfo] | None = None

    @property
    def version(self) -> int:
        return self._file.version

    @property
    def alignment(self) -> int:
        return self._file.alignment

    @property
    def data_offset(self) -> int:
        """Absolute byte offset of the tensor data section."""
        return self._file.data_offset

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = self._file.metadata()
        return self._metadata

    @property
    def tensors(self) -> list[TensorInfo]:
        if self._tensors is None:
            self._tensors = [
                TensorInfo(name, tuple(reversed(dims)), type_name, offset, nbytes)
                for name, dims, type_name, _type_id, offset, nbytes in self._file.tensor_infos()
            ]
        return self._tensors

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, numpy axis order (token_embd -> (n_vocab, n_embd)).
        Raises TensorNotFoundError (a GGUFError and a KeyError) for a name the file lacks."""
        if not isinstance(name, str):
            raise TypeError(f"tensor name must be a str, got {type(name).__name__}")
        names = [t.name for t in self.tensors]
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, names, n=3)
            if close:
                hint = f"; did you mean {', '.join(map(repr, close))}?"
            elif names:
                hint = f" (it has {len(names)} tensors, e.g. {', '.join(map(repr, names[:3]))}; see .tensors)"
            else:
                hint = " (it has no tensors)"
            raise TensorNotFoundError(f"{self.path}: no tensor named {name!r}{hint}")
        return self._file.tensor_f32(name)

    def __repr__(self) -> str:
        arch = self.metadata.get("general.architecture", "?")
        return f"GGUFFile({self.path!r}, arch={arch!r}, tensors={len(self.tensors)})"
