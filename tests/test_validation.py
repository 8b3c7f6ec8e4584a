"""Every public argument is validated: a table of bad calls, each with the exception it must raise
and words its message must contain (the argument's name and the bad value)."""
from __future__ import annotations

from pathlib import Path

import pytest

import sinkstream
from tiny_models import write_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return sinkstream.Model(write_tiny_model(tmp_path_factory.mktemp("m") / "m.gguf", n_ctx=512), n_threads=1)


@pytest.fixture(scope="module")
def session(model):
    return model.session(mode="streaming", n_sink=2, window=30)


def cases(tmp_dir):
    return [
        # Model(...)
        ("missing path", lambda m, s: sinkstream.Model(tmp_dir / "nope.gguf"), FileNotFoundError, "nope.gguf"),
        ("directory", lambda m, s: sinkstream.Model(tmp_dir), IsADirectoryError, "directory"),
        ("path type", lambda m, s: sinkstream.Model(42), TypeError, "path"),
        ("not gguf", lambda m, s: sinkstream.Model(_write(tmp_dir / "x.gguf", b"hello world" * 10)),
         sinkstream.GGUFError, "not a GGUF file"),
        ("n_threads 0", lambda m, s: sinkstream.Model(m.path, n_threads=0), ValueError, "n_threads"),
        ("n_threads str", lambda m, s: sinkstream.Model(m.path, n_threads="2"), TypeError, "n_threads"),
        # model.session(...)
        ("mode", lambda m, s: m.session(mode="sliding"), ValueError, "'sliding'"),
        ("n_sink negative", lambda m, s: m.session(n_sink=-1), ValueError, "n_sink must be >= 0, got -1"),
        ("n_sink float", lambda m, s: m.session(n_sink=2.5), TypeError, "n_sink"),
        ("window 0", lambda m, s: m.session(window=0), ValueError, "window must be >= 1, got 0"),
        ("window bool", lambda m, s: m.session(window=True), TypeError, "window"),
        ("too large", lambda m, s: m.session(n_sink=4, window=600), ValueError, "exceeds the model's training context 512"),
        ("sinks in window mode", lambda m, s: m.session(mode="window", n_sink=4), ValueError, "n_sink must be 0"),
        ("batch_size 0", lambda m, s: m.session(batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
        ("kv_type", lambda m, s: m.session(kv_type="q8_0"), ValueError, "kv_type"),
        ("session n_threads", lambda m, s: m.session(n_threads=-3), ValueError, "n_threads"),
        ("position_offset", lambda m, s: m.session(position_offset=-1), ValueError, "position_offset"),
        # session.eval(...)
        ("text tokens", lambda m, s: s.eval("hello"), TypeError, "model.tokenize"),
        ("2-D tokens", lambda m, s: s.eval([[1, 2]]), ValueError, "1-D"),
        ("float tokens", lambda m, s: s.eval([1.5, 2.0]), TypeError, "integers"),
        ("id too large", lambda m, s: s.eval([1, 5000]), ValueError, "token id 5000 is outside the vocabulary"),
        ("negative id", lambda m, s: s.eval([-1]), ValueError, "token id -1"),
        ("logits", lambda m, s: s.eval([1], logits="first"), ValueError, "logits must be"),
        ("empty with logits", lambda m, s: s.eval([], logits="last"), ValueError, "empty"),
        # save / load
        ("load type", lambda m, s: s.load(12), TypeError, "state"),
        ("load garbage", lambda m, s: s.load(b"\x00" * 64), ValueError, "not a sinkstream session state"),
    ]


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", [case[0] for case in cases(Path("unused"))])
def test_bad_argument(model, session, tmp_path, name):
    _, call, exc, words = next(case for case in cases(tmp_path) if case[0] == name)
    with pytest.raises(exc) as info:
        call(model, session)
    assert words in str(info.value), f"{name}: {info.value}"


def test_bad_arguments_leave_the_session_usable(model, session):
    before = session.n_past
    with pytest.raises(ValueError):
        session.eval([1, 2, 99999])  # the bad id is last: nothing may have been fed
    assert session.n_past == before
    assert session.eval([1, 2, 3]).shape == (model.n_vocab,)
