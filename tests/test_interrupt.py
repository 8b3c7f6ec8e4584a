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
