"""Every run-time-dispatched SIMD path against its scalar twin and against the NumPy reference:
the same model and stream with SINKSTREAM_ISA=scalar / avx2 / the best this CPU has (fresh
processes: the choice is made once per process)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sinkstream import _core
from tiny_models import write_tiny_model

HERE = Path(__file__).parent
SCRIPT = """
import sys, numpy as np, sinkstream
model = sinkstream.Model(sys.argv[1], n_threads=2)
tokens = np.random.default_rng(0).integers(0, 256, size=90)
out = []
for mode, kw in [("streaming", dict(n_sink=3, window=29)), ("dense", dict(window=128))]:
    for kv in ("f16", "f32"):
        out.append(model.session(mode=mode, kv_type=kv, batch_size=16, **kw).eval(tokens, logits="all"))
np.save(sys.argv[2], np.stack(out))
"""


def isa_env(isa: str | None) -> dict:
    env = dict(os.environ)
    env.pop("SINKSTREAM_ISA", None)
    if isa:
        env["SINKSTREAM_ISA"] = isa
    return env


def available_isas() -> list[str]:
    return _core.cpu_features()["levels"]


@pytest.mark.parametrize("weight_type", ["F32", "F16"])
def test_simd_equals_scalar_with_float_weights(tmp_path, weight_type):
    """Float weights: the ISAs differ in summation order only."""
    path = write_tiny_model(tmp_path / "m.gguf", n_embd=64, n_head=4, n_head_kv=2, n_ff=128, weight_type=weight_type,
                            qk_scale=0.15)
    results = {}
    for isa in available_isas():
        subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(tmp_path / f"{isa}.npy")], env=isa_env(isa),
                       check=True)
        results[isa] = np.load(tmp_path / f"{isa}.npy")
    scale = max(1.0, np.abs(results["scalar"]).max())
    for isa, got in results.items():
        diff = np.abs(got - results["scalar"]).max()
        print(f"{weight_type} {isa}: max |simd - scalar| = {diff:.2e} (logit scale {scale:.1f})")
        assert diff < 2e-3 * scale


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_each_isa_matches_the_reference(isa):
    """Quantized weights: each path against the NumPy reference, which rounds matmul inputs and the
    half-precision cache exactly as specified (so differences are summation order only)."""
    if isa not in available_isas():
        pytest.skip(f"this CPU has no {isa}")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(HERE / "test_forward_reference.py")], env=isa_env(isa), cwd=HERE.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
