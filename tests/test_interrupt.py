"""Ctrl-C and cancellation during a long eval stop it between chunks and leave the session consistent."""
from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

import sinkstream
from tiny_models import write_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # Big enough that a long eval takes a while, small enough to stay a unit test.
    path = write_tiny_model(tmp_path_factory.mktemp("m") / "m.gguf", n_layer=4, n_embd=128, n_head=8,
                            n_head_kv=4, n_ff=256, n_ctx=4096)
    return sinkstream.Model(path, n_threads=1)


def _long_eval(session, tokens, interrupter):
    timer = threading.Timer(0.05, interrupter)
    timer.start()
    try:
        start = time.perf_counter()
        with pytest.raises((KeyboardInterrupt, sinkstream.Cancelled)):
            session.eval(tokens, logits=None)
        return time.perf_counter() - start
    finally:
        timer.cancel()


@pytest.mark.parametrize("how", ["sigint", "request_cancel"])
def test_interrupted_eval_keeps_finished_chunks(model, how):
    tokens = np.random.default_rng(0).integers(0, 256, size=200_000).astype(np.int32)
    session = model.session(mode="streaming", n_sink=4, window=60, batch_size=32)
    interrupter = (lambda: signal.raise_signal(signal.SIGINT)) if how == "sigint" else session._core.request_cancel
    _long_eval(session, tokens, interrupter)
    done = session.n_past
    assert 0 < done < len(tokens) and done % 32 == 0
    # Consistent: continuing gives exactly what an uninterrupted session gives.
    more = tokens[done:done + 40]
    expected = model.session(mode="streaming", n_sink=4, window=60, batch_size=32)
    expected.eval(tokens[:done], logits=None)
    np.testing.assert_allclose(session.eval(more, logits="all"), expected.eval(more, logits="all"), atol=1e-5)


def test_ctrl_c_stops_sinkstream_generate_promptly(tmp_path):
    """Ctrl-C in `sinkstream generate` stops within about one token: the process exits with 130
    and prints its statistics."""
    import subprocess
    import sys

    path = write_tiny_model(tmp_path / "m.gguf", n_ctx=512)
    eos = sinkstream.Model(path).eos_id  # banned, so the stream only ends by Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "sinkstream", "generate", str(path), "-p", "Once upon a time",
                             "-n", "-1", "--mode", "streaming", "--window", "60", "--threads", "1",
                             "--logit-bias", f"{eos}=-1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.read(1)  # generation has started
        assert first != ""
        proc.send_signal(signal.SIGINT)
        sent = time.perf_counter()
        _, err = proc.communicate(timeout=30)
        waited = time.perf_counter() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "tok/s" in err
    print(f"stopped {waited * 1000:.0f} ms after Ctrl-C")
    # A token of this model takes about a millisecond; the bound leaves room for a loaded machine
    # (printing the statistics and the interpreter's exit), not for generating on.
    assert waited < 5.0, f"stopped {waited:.1f} s after Ctrl-C"
