"""Every public argument is validated: a table of bad calls, each with the exception it must raise
and words its message must contain (the argument's name and the bad value)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
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
        # past int64 nanobind only dumped its signature
        ("window 2**63", lambda m, s: m.session(window=2**63), ValueError,
         "window must be <= 9223372036854775807, got 9223372036854775808"),
        ("n_sink 2**64", lambda m, s: m.session(n_sink=2**64), ValueError, "n_sink must be <= 9223372036854775807"),
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
        # model.tokenize(...): a lone surrogate has no UTF-8 form (nanobind dumped its signature)
        ("lone surrogate", lambda m, s: m.tokenize("ab\ud800c"), ValueError, "text[2] is a lone surrogate U+D800"),
        ("lone low surrogate", lambda m, s: m.tokenize("\udcff"), ValueError, "text[0] is a lone surrogate U+DCFF"),
        # the private _core eval: an int64 array was converted silently, 2**32 + 5 becoming token 5
        ("core eval int64", lambda m, s: s._core.eval(np.array([2**32 + 5], dtype=np.int64), False, True), TypeError,
         "tokens must be an int32 array (sinkstream.Session.eval checks and converts ids), got int64"),
        ("core eval float", lambda m, s: s._core.eval(np.array([1.0]), False, True), TypeError, "got float64"),
        ("core eval strided", lambda m, s: s._core.eval(np.arange(8, dtype=np.int32)[::2], False, True), TypeError,
         "C-contiguous"),
        ("public eval int64", lambda m, s: s.eval(np.array([2**32 + 5], dtype=np.int64)), ValueError,
         "token id 4294967301 is outside the vocabulary"),
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


def test_core_eval_takes_int32_ids_as_they_are(model, session):
    session.reset()
    direct = session._core.eval(np.array([5, 7], dtype=np.int32), False, True)
    session.reset()
    assert np.array_equal(direct, session.eval([5, 7]))
    session.reset()


def test_a_surrogate_free_text_tokenizes_as_before(model):
    text = "h\u00e9llo \U0001f600 the"
    assert model.tokenize(text) == model._tokenizer.encode(text, False, True)
