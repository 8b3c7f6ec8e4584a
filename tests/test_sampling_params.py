"""SamplingParams, the typed signatures of stream/generate/chat, Session prompt=None, and
Model.close() / the context manager (issue 18)."""
from __future__ import annotations

import dataclasses
import inspect
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sinkstream
from sinkstream.generation import SAMPLING_DEFAULTS, GenerationStats, SamplingParams
from tiny_models import write_family_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_family_model(tmp_path_factory.mktemp("sp") / "llama.gguf", "llama", seed=11)


@pytest.fixture
def model(model_path: Path):
    with sinkstream.Model(model_path, n_threads=1) as m:
        yield m


# ---- SamplingParams ---------------------------------------------------------------------------

def test_defaults_are_defined_once():
    params = SamplingParams()
    assert sinkstream.SamplingParams is SamplingParams
    assert {k: getattr(params, k) for k in SAMPLING_DEFAULTS} == SAMPLING_DEFAULTS
    assert params.stop == ()
    # The keyword signatures do not repeat the defaults: not given means "from params".
    for fn in (sinkstream.Model.stream, sinkstream.Model.generate, sinkstream.Session.stream,
               sinkstream.Session.generate, sinkstream.Session.chat):
        sig = inspect.signature(fn)
        for name in [f.name for f in dataclasses.fields(SamplingParams)]:
            assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, (fn, name)
            assert sig.parameters[name].default is sinkstream.DEFAULT, (fn, name)


def test_frozen_and_normalized():
    params = SamplingParams(stop="\n\n", logit_bias={3: -1}, seed=5, temperature=1)
    assert params.stop == ("\n\n",)
    assert params.temperature == 1.0 and isinstance(params.temperature, float)
    assert dict(params.logit_bias or {}) == {3: -1.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 2  # type: ignore[misc]
    changed = params.replace(top_k=0)
    assert changed.top_k == 0 and params.top_k == 40 and changed.seed == 5
    assert SamplingParams(stop=["a", "b"]) == SamplingParams(stop=("a", "b"))


@pytest.mark.parametrize("option, value, error", [
    ("temperature", -0.1, ValueError), ("top_p", 0.0, ValueError), ("top_p", 1.5, ValueError),
    ("min_p", -1, ValueError), ("top_k", -1, ValueError), ("max_tokens", -1, ValueError),
    ("repeat_penalty", 0, ValueError), ("repeat_last_n", -1, ValueError), ("seed", -1, ValueError),
    ("seed", 2**64, ValueError), ("logit_bias", {-1: 0.0}, ValueError), ("logit_bias", {1: float("nan")}, ValueError),
    ("stop", [""], ValueError), ("temperature", float("nan"), ValueError),
    ("temperature", "hot", TypeError), ("top_k", 1.5, TypeError), ("max_tokens", True, TypeError),
    ("stop", [1], TypeError), ("seed", 1.0, TypeError), ("logit_bias", [1, 2], TypeError),
])
def test_invalid_values_name_the_option(option, value, error):
    with pytest.raises(error, match=option):
        SamplingParams(**{option: value})
    with pytest.raises(error, match=option):
        SamplingParams().replace(**{option: value})


def test_unknown_option_and_wrong_params_type(model):
    with pytest.raises(TypeError, match="max_tokenz"):
        model.generate("hi", max_tokenz=3)  # type: ignore[call-arg]
    session = model.session()
    with pytest.raises(TypeError, match="max_tokenz"):
        session.stream("hi", max_tokenz=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="max_tokenz"):
        SamplingParams().replace(max_tokenz=3)
    with pytest.raises(TypeError, match="SamplingParams"):
        model.generate("hi", {"max_tokens": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logit_bias token id"):  # checked against the vocabulary
        model.generate("hi", SamplingParams(logit_bias={model.n_vocab: 1.0}, max_tokens=1))
    with pytest.raises(ValueError, match="temperature"):  # checked before generating
        model.stream("hi", temperature=-1)


def test_params_and_keywords_agree(model):
    opts = dict(max_tokens=6, temperature=0.9, top_k=20, seed=3)
    by_keywords = model.generate("hello", **opts)
    assert model.generate("hello", SamplingParams(**opts)) == by_keywords
    # keywords override single fields of params
    assert model.generate("hello", SamplingParams(max_tokens=6, temperature=0.9, top_k=20, seed=99), seed=3) \
        == by_keywords
    session = model.session()
    assert session.generate("hello", SamplingParams(**opts)) == by_keywords
    assert isinstance(session.last_stats, GenerationStats)
    assert session.last_stats.generated_tokens <= 6


# ---- Session prompt=None ----------------------------------------------------------------------

def test_session_prompt_none_continues(model):
    params = SamplingParams(max_tokens=4, temperature=0.0, logit_bias={model.eos_id: float("-inf")})
    whole = model.session()
    whole.generate("hello", params.replace(max_tokens=8))
    assert whole.last_stats is not None
    expected = whole.last_stats.tokens
    session = model.session()
    with pytest.raises(ValueError, match="empty"):
        session.generate(None, params)  # nothing to continue from
    session.generate("hello", params)
    assert session.last_stats is not None
    first = session.last_stats.tokens
    session.generate(None, params)  # continues from the pending token: greedy = one longer run
    assert first + session.last_stats.tokens == expected
    assert session.last_stats.prompt_tokens == 1  # only the pending token was fed


# ---- close() and the context manager ----------------------------------------------------------

def _mapped(path: Path) -> bool:
    with open("/proc/self/maps") as f:
        return str(path) in f.read()


def test_close_releases_the_model_and_its_sessions(model_path: Path):
    with sinkstream.Model(model_path, n_threads=1) as model:
        assert not model.closed
        session = model.session()
        pieces = session.stream("hello", max_tokens=5, seed=1)
        next(pieces, None)
        if sys.platform.startswith("linux"):
            assert _mapped(model_path)
    assert model.closed and session.closed
    if sys.platform.startswith("linux"):  # unmapped although the model, a session and a generator live on
        assert not _mapped(model_path)
    for use in (lambda: model.tokenize("hi"), lambda: model.generate("hi"), lambda: model.session(),
                lambda: model.n_vocab, lambda: session.eval([1]), lambda: session.generate("hi"),
                lambda: session.n_past, lambda: next(pieces)):
        with pytest.raises(RuntimeError, match="closed"):
            use()
    model.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        model.__enter__()
    assert model.path == str(model_path)


def test_close_leaves_other_models_alone(model_path: Path):
    a = sinkstream.Model(model_path, n_threads=1)
    b = sinkstream.Model(model_path, n_threads=1)
    session_b = b.session()
    a.close()
    assert not b.closed and not session_b.closed
    assert len(b.generate("hi", max_tokens=2, seed=1)) >= 0
    session_b.eval([1, 2])
    b.close()


# ---- mypy --strict on a user script ---------------------------------------------------------------

USER_SCRIPT = '''
import sinkstream


def main(path: str) -> str:
    params = sinkstream.SamplingParams(temperature=0.7, top_p=0.95, max_tokens=128, stop=["\\n\\n"])
    with sinkstream.Model(path) as model:
        text = model.generate("Once", params, seed=1)
        for piece in model.stream("Once", OPTION=3, temperature=0.5):
            text += piece
        session = model.session()
        text += session.generate("x", max_tokens=3)
        text += session.generate(None, params)
        for piece in session.chat("hi", params, stop="\\n"):
            text += piece
        stats: sinkstream.GenerationStats | None = session.last_stats
        if stats is not None:
            text += stats.summary()
    model.close()
    return text


async def main_async(session: sinkstream.Session) -> str:
    text = await session.agenerate("x", OPTION=3)
    async for piece in session.astream(None, temperature=0.5):
        text += piece
    async for piece in session.achat("hi", max_tokens=4):
        text += piece
    return text
'''


def _mypy(tmp_path: Path, option: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy")
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT.replace("OPTION", option))
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
                           str(tmp_path / "cache"), str(script)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)


def test_mypy_strict_passes_a_correct_script(tmp_path: Path):
    result = _mypy(tmp_path, "max_tokens")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_catches_a_misspelled_option(tmp_path: Path):
    result = _mypy(tmp_path, "max_tokenz")
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Unexpected keyword argument "max_tokenz"' in result.stdout, result.stdout
    assert result.stdout.count("error:") == 2, result.stdout  # in stream() and in its async twin agenerate()
