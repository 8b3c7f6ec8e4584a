"""Every run-time-dispatched SIMD path against its scalar twin: the same model and stream with
SINKSTREAM_ISA=scalar and with the best ISA this CPU has (fresh processes: the choice is made once)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny_models import write_tiny_model

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


def run_with_isa(model_path: Path, out: Path, isa: str | None) -> np.ndarray:
    env = dict(os.environ)
    env.pop("SINKSTREAM_ISA", None)
    if isa:
        env["SINKSTREAM_ISA"] = isa
    subprocess.run([sys.executable, "-c", SCRIPT, str(model_path), str(out)], env=env, check=True)
    return np.load(out)


@pytest.mark.parametrize("weight_type", ["F32", "F16", "Q8_0", "Q4_1", "Q4_0", "Q5_0", "Q5_1"])
def test_simd_equals_scalar(tmp_path, weight_type):
    path = write_tiny_model(tmp_path / "m.gguf", n_embd=64, n_head=4, n_head_kv=2, n_ff=128, weight_type=weight_type,
                            qk_scale=0.15)
    scalar = run_with_isa(path, tmp_path / "scalar.npy", "scalar")
    best = run_with_isa(path, tmp_path / "best.npy", None)
    diff = np.abs(scalar - best).max()
    print(f"{weight_type}: max |simd - scalar| = {diff:.2e}")
    assert diff < 2e-3 * max(1.0, np.abs(scalar).max())
