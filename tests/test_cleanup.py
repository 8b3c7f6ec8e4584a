"""Cleanup: breaking out of stream(), and dropping sessions and models, release everything; once all
of a model's sessions are gone its file is no longer mapped (it can be replaced or deleted)."""
from __future__ import annotations

import gc
import shutil

import sinkstream
from tiny_models import write_tiny_model


def mapped(path) -> bool:
    with open("/proc/self/maps") as f:
        return str(path) in f.read()


def test_model_file_released_after_sessions_are_gone(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf")
    model = sinkstream.Model(path, n_threads=1)
    sessions = [model.session(mode="streaming", n_sink=2, window=20) for _ in range(3)]
    for s in sessions:
        stream = s.stream("hello there", max_tokens=50, temperature=0.8, seed=1)
        next(stream)
        stream.close()                      # broken out of after one piece
        assert s.eval([1, 2, 3]).shape == (model.n_vocab,)  # and the session is still usable
    _ = model.metadata                      # opens the file a second time for inspection
    assert mapped(path)
    del model, sessions, s, stream
    gc.collect()
    assert not mapped(path)
    shutil.move(path, tmp_path / "moved.gguf")  # nothing holds it


def test_session_holds_its_model(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf")
    session = sinkstream.Model(path, n_threads=1).session(mode="window", window=16)
    gc.collect()
    # No name refers to the Model any more; the session keeps it (and its weights) alive.
    assert session.eval([5, 6, 7], logits="all").shape[0] == 3
    del session
    gc.collect()
    assert not mapped(path)
