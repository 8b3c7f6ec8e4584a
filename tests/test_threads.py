"""Sessions on one shared Model run concurrently (GIL released) and give what they give alone;
one Session used from two threads at once refuses the second caller instead of corrupting."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import sinkstream
from tiny_models import write_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("m") / "m.gguf", n_layer=3, n_embd=64, n_head=4,
                            n_head_kv=2, n_ff=128, n_ctx=1024)
    return sinkstream.Model(path, n_threads=1)


def greedy_stream(model, prompt, steps, mode):
    window = 128 if mode == "dense" else 24
    session = model.session(mode=mode, window=window, n_sink=4 if mode == "streaming" else None)
    logits = session.eval(prompt, logits="last")
    out = []
    for _ in range(steps):
        token = int(np.argmax(logits))
        out.append(token)
        logits = session.eval([token], logits="last")
    return out, logits


def test_concurrent_sessions_match_solo_runs(model):
    rng = np.random.default_rng(0)
    jobs = [(rng.integers(0, 256, size=int(rng.integers(5, 40))).tolist(), ["streaming", "window", "dense"][i % 3])
            for i in range(6)]
    solo = [greedy_stream(model, prompt, 60, mode) for prompt, mode in jobs]
    results = [None] * len(jobs)
    errors = []

    def worker(i):
        try:
            results[i] = greedy_stream(model, *jobs[i][:1], 60, jobs[i][1])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (tokens, logits), (solo_tokens, solo_logits) in zip(results, solo):
        assert tokens == solo_tokens
        np.testing.assert_array_equal(logits, solo_logits)


def test_one_session_two_threads_is_refused(model):
    """A second thread's call while the first is inside the engine is refused and feeds nothing.
    The second call has to land while the first runs: if the first finished before it (a fast or
    idle machine), the attempt proves nothing and is made again with a longer first call."""
    refused = False
    for attempt in range(4):
        session = model.session(mode="streaming", n_sink=4, window=60, batch_size=8)
        big = np.random.default_rng(1).integers(0, 256, size=30_000 * 4**attempt).astype(np.int32)
        outcome = {}

        def long_eval():
            try:
                session.eval(big, logits=None)
                outcome["first"] = "done"
            except Exception as e:  # pragma: no cover
                outcome["first"] = e

        t = threading.Thread(target=long_eval)
        t.start()
        while session.n_past == 0 and t.is_alive():  # until the first call is inside the engine
            time.sleep(0.001)
        try:
            session.eval([1, 2, 3], logits=None)
            second_fed = 3                            # the first call had already returned
        except ValueError as e:
            assert "already in use by another thread" in str(e)
            second_fed = 0
        t.join()
        assert outcome["first"] == "done"
        assert session.n_past == len(big) + second_fed  # a refused call fed nothing
        if second_fed == 0:
            refused = True
            break
    assert refused, "the first call always finished before the second thread's call"


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
@pytest.mark.parametrize("isa", ["scalar", None])
def test_decode_attention_spread_over_threads_gives_the_same_bits(tmp_path, kv_type, isa):
    """Decoding one token deep in a stream (|A(t)| > 256) spreads its attention over the threads in
    pieces of A(t) (llama.cc attend_across_threads); prefill gives each (token, KV head) to one
    thread. Both must produce identical logits, with the ring wrapped and sinks separate."""
    path = write_tiny_model(tmp_path / "m.gguf", n_layer=2, n_embd=64, n_head=6, n_head_kv=2, n_ff=96,
                            n_ctx=2048, qk_scale=0.3)
    tokens = np.random.default_rng(1).integers(0, 256, size=900)
    script = f"""
import sys, numpy as np, sinkstream
model = sinkstream.Model(sys.argv[1])
tokens = np.load(sys.argv[2])
kw = dict(mode="streaming", n_sink=5, window=595, kv_type="{kv_type}")
chunked = model.session(n_threads=1, batch_size=128, **kw).eval(tokens, logits="all")[600:]
spread = model.session(n_threads=2, **kw)
spread.eval(tokens[:600], logits=None)
stepped = np.stack([spread.eval([int(t)], logits="last") for t in tokens[600:]])
np.save(sys.argv[3], np.stack([chunked, stepped]))
"""
    np.save(tmp_path / "tokens.npy", tokens)
    env = dict(os.environ)
    env.pop("SINKSTREAM_ISA", None)
    if isa:
        env["SINKSTREAM_ISA"] = isa
    subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "tokens.npy"), str(tmp_path / "out.npy")],
                   env=env, check=True)
    chunked, stepped = np.load(tmp_path / "out.npy")
    assert np.isfinite(chunked).all()
    assert np.array_equal(chunked, stepped), f"max difference {np.abs(chunked - stepped).max():.3g}"
