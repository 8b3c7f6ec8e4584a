"""streaming.md invariant 1 on Gemma 3 270M, whose local layers slide over 512 tokens: chunked prefill
equals token by token past the local window and past the cache, bit for bit.

Bit for bit needs the scalar kernels (SINKSTREAM_ISA=scalar, set before the engine starts, hence a
subprocess): the SIMD attention kernels block rows from the start of each run of slots, and where a
ring wraps depends on its size, which depends on the batch size, so SIMD sums round differently per
chunking. Gemma 3 270M turns such 1e-7 differences into logit changes of ~1 (every matmul rounds its
input to 8 bits, and a flipped rounding is a jump of 1/127; tests/test_gemma3_oracle.py shows the
SIMD and scalar engines are equally close to llama.cpp). The ring logic is what this test checks;
the SIMD kernels are checked against float64 on every ring shape in tests/test_attention.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.ci]

SCRIPT = r"""
import json, sys
import numpy as np
import sinkstream
from sinkstream import _core

assert _core.cpu_features()["active_isa"] == "scalar"
model = sinkstream.Model(sys.argv[1], n_threads=2)
rng = np.random.default_rng(0)
columns = rng.choice(model.n_vocab, size=256, replace=False)

def fingerprints(session, tokens, chunk, first_compared):
    # Logits of the positions from first_compared on (the output head over 262K tokens is most of
    # the scalar engine's time); every earlier position's state flows into them anyway.
    rows = []
    for i in range(0, len(tokens), chunk):
        if i + chunk <= first_compared:
            session.eval(tokens[i:i + chunk], logits=None)
            continue
        logits = session.eval(tokens[i:i + chunk], logits="all").astype(np.float64)[max(0, first_compared - i):]
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        rows.append(np.concatenate([logits[:, columns], top, lse[:, None]], axis=1))
    return np.concatenate(rows)

out = {}
# Streaming, 4 sinks + 300: past the cache (304) and past the local window (512), where the sinks
# leave the local layers but stay in the global ones.
tokens = rng.integers(0, 20000, size=560).tolist()
make = lambda batch: model.session(mode="streaming", n_sink=4, window=300, batch_size=batch)
one = fingerprints(make(1), tokens, 1, 288)
out["streaming"] = float(np.abs(fingerprints(make(64), tokens, 64, 288) - one).max())
# Dense over 560 tokens: the global layers never evict, the local layers' rings wrap at 512.
tokens = rng.integers(0, 20000, size=560).tolist()
make = lambda batch: model.session(mode="dense", window=2048, batch_size=batch)
one = fingerprints(make(1), tokens, 1, 500)
out["dense"] = float(np.abs(fingerprints(make(256), tokens, 256, 500) - one).max())
print(json.dumps(out))
"""


def test_chunked_equals_token_by_token_past_the_local_window():
    from gemma3_model import gemma3_path

    path = gemma3_path()
    env = dict(os.environ, SINKSTREAM_ISA="scalar")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    differences = json.loads(result.stdout.strip().splitlines()[-1])
    print(differences)
    assert differences == {"streaming": 0.0, "dense": 0.0}
