"""The native module's type stub (python/sinkstream/_core.pyi, shipped in the wheel for type checkers
and editors) describes the module that was built: regenerating it gives the committed file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sinkstream

STUB = Path(sinkstream.__file__).with_name("_core.pyi")
REGENERATE = f"{Path(sys.executable).name} -m nanobind.stubgen -m sinkstream._core -o python/sinkstream/_core.pyi"


def test_the_committed_stub_matches_the_built_module(tmp_path):
    fresh = tmp_path / "_core.pyi"
    subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "sinkstream._core", "-o", str(fresh)],
                   check=True, capture_output=True, text=True)
    assert fresh.read_text() == STUB.read_text(), f"the native module changed: regenerate the stub with `{REGENERATE}`"


def test_the_stub_declares_what_the_python_layer_uses():
    text = STUB.read_text()
    for name in ("class Model", "class Session", "class Tokenizer", "def eval(", "def save(", "def load(",
                 "def session_memory(", "def default_thread_count("):
        assert name in text
