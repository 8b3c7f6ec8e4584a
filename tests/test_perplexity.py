"""sinkstream.perplexity, the KJV text loader and `sinkstream ppl`, on tiny random models.

References: the NLL is recomputed independently, in float64 NumPy, from (a) one session's logits for
the whole stream and (b) the NumPy reference forward pass (reference_llama.py), which materializes
each token's attention set A(t) from streaming.md. Geometry as in test_streaming_invariants: S = 2,
W = 6, C = 8, a 40-token stream passes the cache five times.
"""
from __future__ import annotations

import math
import shutil
import sys

import numpy as np
import pytest

import sinkstream
from sinkstream import cli
from sinkstream.commands import ppl_cmd
from sinkstream.perplexity import perplexity_run, token_nll
from sinkstream import texts
from reference_llama import ReferenceLlama
from tiny_models import write_tiny_model

S, W = 2, 6
C = S + W
N = 40
GEOMETRY = {
    "streaming": dict(n_sink=S, window=W),
    "window": dict(window=C),
    "dense": dict(window=64),
    "recompute": dict(window=C),
}
N_LAYER = 2  # write_tiny_model's default


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", arch="llama", seed=11)


@pytest.fixture(scope="module")
def model(tiny_path):
    return sinkstream.Model(tiny_path, n_threads=2)


@pytest.fixture(scope="module")
def reference(tiny_path):
    return ReferenceLlama(str(tiny_path))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(5).integers(0, 256, size=N)


def nll_from_logits(logits: np.ndarray, tokens) -> np.ndarray:
    """-log softmax(logits[i])[tokens[i+1]] in float64, written directly (no shared code)."""
    z = np.asarray(logits, dtype=np.float64)[:-1]
    log_z = np.log(np.sum(np.exp(z - z.max(axis=1, keepdims=True)), axis=1)) + z.max(axis=1)
    return log_z - z[np.arange(len(z)), np.asarray(tokens)[1:]]


# The API against independent computations ---------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(GEOMETRY))
@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_nll_equals_log_softmax_of_session_logits(model, tokens, mode, chunk):
    logits = model.session(mode, **GEOMETRY[mode], kv_type="f32").eval(tokens, logits="all")
    expected = nll_from_logits(logits, tokens)
    got = sinkstream.perplexity(model, tokens, mode, **GEOMETRY[mode], kv_type="f32", chunk=chunk, batch_size=4)
    assert got.dtype == np.float64 and got.shape == (N - 1,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["streaming", "window", "dense"])
def test_nll_matches_numpy_reference(model, reference, tokens, mode):
    g = GEOMETRY[mode]
    expected = nll_from_logits(reference.logits(tokens.tolist(), mode=mode, n_sink=g.get("n_sink", 0),
                                                window=g["window"]), tokens)
    got = sinkstream.perplexity(model, tokens, mode, **g, kv_type="f32", chunk=9)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    # The modes really differ once the stream is past the cache (so the comparison means something).
    if mode != "dense":
        dense = sinkstream.perplexity(model, tokens, "dense", window=64, kv_type="f32")
        assert np.abs(got[C:] - dense[C:]).max() > 1e-2


def test_recompute_matches_reference_definition(model, reference, tokens):
    """Recompute = dense over the last C tokens, positions 0..C-1, for every token (streaming.md)."""
    logits = np.stack([reference.logits(tokens[max(0, t - C + 1):t + 1].tolist(), mode="dense")[-1]
                       for t in range(N)])
    got = sinkstream.perplexity(model, tokens, "recompute", window=C, kv_type="f32")
    np.testing.assert_allclose(got, nll_from_logits(logits, tokens), rtol=1e-4, atol=1e-3)


def test_api_defaults(model, tokens):
    """n_sink/window None take the session's defaults: streaming with 4 sinks, capacity n_ctx (512)."""
    logits = model.session("streaming").eval(tokens, logits="all")
    np.testing.assert_allclose(sinkstream.perplexity(model, tokens), nll_from_logits(logits, tokens),
                               rtol=1e-5, atol=1e-4)


def test_token_nll_is_float64_log_softmax():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((70, 300)) * 30).astype(np.float32)   # 70 rows: spans row blocks
    targets = rng.integers(0, 300, size=70)
    z = logits.astype(np.float64)
    expected = np.array([-(z[r, targets[r]] - math.log(sum(math.exp(v - z[r].max()) for v in z[r])) - z[r].max())
                         for r in range(70)])
    np.testing.assert_allclose(token_nll(logits, targets), expected, rtol=1e-12)


# Strided positions: the recompute baseline on a subset, honestly -------------------------------
@pytest.mark.parametrize("mode", sorted(GEOMETRY))
def test_positions_subset_equals_full_run(model, tokens, mode):
    positions = [0, 3, 4, 5, 9, 20, 21, 38]
    full = sinkstream.perplexity(model, tokens, mode, **GEOMETRY[mode], kv_type="f32")
    part = sinkstream.perplexity(model, tokens, mode, **GEOMETRY[mode], kv_type="f32", positions=positions, chunk=4)
    np.testing.assert_allclose(part[positions], full[positions], rtol=1e-5, atol=1e-4)
    others = np.setdiff1d(np.arange(N - 1), positions)
    assert np.isnan(part[others]).all()


def test_recompute_work_is_only_for_requested_positions(model, tokens, monkeypatch):
    """Each evaluated position t >= C re-encodes C tokens (C keys rotated per layer); the others
    cost nothing past the first C tokens. Read from the engine's work counters."""
    sessions = []
    original = sinkstream.Session.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        sessions.append(self)

    monkeypatch.setattr(sinkstream.Session, "__init__", recording_init)
    positions = np.arange(0, N - 1, 5)                     # 0, 5, ..., 35
    run = perplexity_run(model, tokens, "recompute", window=C, positions=positions)
    assert run.n_evaluated == len(positions)
    (session,) = sessions
    fed = N - 1                                           # the last token is never fed
    assert session.n_past == fed
    past_cache = int((positions >= C).sum())
    assert session._core.keys_rotated == N_LAYER * (C + C * past_cache)

    sessions.clear()
    perplexity_run(model, tokens, "recompute", window=C)
    assert sessions[0]._core.keys_rotated == N_LAYER * (C + C * (fed - C))


def test_logits_are_requested_in_bounded_chunks(model, tokens, monkeypatch):
    calls = []
    original = sinkstream.Session.eval

    def recording_eval(self, toks, logits="last"):
        calls.append((len(toks), logits))
        return original(self, toks, logits=logits)

    monkeypatch.setattr(sinkstream.Session, "eval", recording_eval)
    sinkstream.perplexity(model, tokens, "streaming", **GEOMETRY["streaming"], chunk=6)
    assert sum(n for n, _ in calls) == N - 1
    assert all(n <= 6 and logits == "all" for n, logits in calls)
    calls.clear()
    sinkstream.perplexity(model, tokens, "streaming", **GEOMETRY["streaming"], chunk=6, positions=[30])
    assert [logits for _, logits in calls] == [None] * 5 + ["all"] + [None]   # chunks 0-5, ..., 30-35, 36-38


# Progress ------------------------------------------------------------------------------------------
def test_progress_callback_reports_running_ppl(model, tokens):
    seen = []
    nll = sinkstream.perplexity(model, tokens, "window", window=C, chunk=10,
                                progress=lambda done, total, ppl: seen.append((done, total, ppl)))
    assert [d for d, _, _ in seen] == [10, 20, 30, 39] and all(t == N - 1 for _, t, _ in seen)
    for done, _, ppl in seen:
        assert ppl == pytest.approx(math.exp(nll[:done].mean()), rel=1e-9)


def test_progress_bar(model, tokens, capsys):
    sinkstream.perplexity(model, tokens, "window", window=C, progress=True)
    assert "ppl=" in capsys.readouterr().err


# Argument validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mode="sliding"), ValueError, "mode must be one of"),
    (dict(mode="window", n_sink=4), ValueError, "n_sink must be 0"),
    (dict(window=0), ValueError, "window must be >= 1"),
    (dict(n_sink=-1), ValueError, "n_sink must be >= 0"),
    (dict(window=2.5), TypeError, "window must be an int"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(chunk=0), ValueError, "chunk must be >= 1"),
    (dict(chunk=True), TypeError, "chunk must be an int"),
    (dict(kv_type="q8"), ValueError, "kv_type must be"),
    (dict(progress="yes"), TypeError, "progress must be"),
    (dict(positions=[0, 39]), ValueError, r"positions: index 39 is outside 0\.\.38"),
    (dict(positions=[-1]), ValueError, "positions: index -1"),
    (dict(positions=[1.0]), TypeError, "positions must be integers"),
    (dict(positions=[[1]]), ValueError, "positions must be 1-D"),
    (dict(mode="dense", window=20), ValueError, "dense mode holds at most 20 tokens"),
])
def test_argument_validation(model, tokens, kwargs, error, match):
    with pytest.raises(error, match=match):
        sinkstream.perplexity(model, tokens, **kwargs)


@pytest.mark.parametrize("bad, error, match", [
    ([5], ValueError, "at least 2"),
    ([], ValueError, "at least 2"),
    ("some text", TypeError, "not text"),
    ([[1, 2], [3, 4]], ValueError, "tokens must be 1-D"),
    ([1.0, 2.0], TypeError, "tokens must be integers"),
    ("n_vocab", ValueError, "is outside the vocabulary"),
    ([-1, 2], ValueError, "token id -1"),
])
def test_token_validation(model, bad, error, match):
    if bad == "n_vocab":  # the first id past the vocabulary, and the message names it and the range
        bad, match = [1, model.n_vocab], rf"token id {model.n_vocab} is outside the vocabulary \(0\.\.{model.n_vocab - 1}\)"
    with pytest.raises(error, match=match):
        sinkstream.perplexity(model, bad)


def test_model_must_be_a_model(tokens):
    with pytest.raises(TypeError, match="model must be a sinkstream.Model"):
        sinkstream.perplexity("tiny.gguf", tokens)


# Texts -----------------------------------------------------------------------------------------
def test_load_text_file(tmp_path):
    (tmp_path / "a.txt").write_text("héllo\nworld\n", encoding="utf-8")
    assert texts.load_text(tmp_path / "a.txt") == "héllo\nworld\n"
    with pytest.raises(FileNotFoundError, match="text file not found"):
        texts.load_text(tmp_path / "missing.txt")
    with pytest.raises(IsADirectoryError):
        texts.load_text(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        texts.load_text(tmp_path / "empty.txt")


def test_kjv_without_bible_command_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(texts.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y bible-kjv"):
        texts.kjv_text(cache=tmp_path)


@pytest.mark.skipif(shutil.which("bible") is None,
                    reason="Debian's bible-kjv is not installed (apt-get install -y bible-kjv)")
def test_kjv_text_from_bible_command(tmp_path, monkeypatch):
    text = texts.kjv_text(cache=tmp_path)
    lines = text.splitlines()
    assert len(lines) == 31102                          # verses in the KJV (Genesis 1:1 .. Revelation 22:21)
    assert lines[0] == "In the beginning God created the heaven and the earth."
    assert lines[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert not any(line.startswith(("Ge1:", "Rev22:")) for line in lines)
    # Cached: a second call needs no `bible` command.
    assert (tmp_path / texts.KJV_CACHE_FILE).read_text(encoding="utf-8") == text
    monkeypatch.setattr(texts.shutil, "which", lambda name: None)
    assert texts.kjv_text(cache=tmp_path) == text
    monkeypatch.setenv("SINKSTREAM_CACHE", str(tmp_path))
    assert texts.load_text("kjv") == text


class WordTokenizer:
    """A stand-in tokenizer whose tokens depend on what follows (like BPE's whitespace handling):
    runs of whitespace attach to the next word, and a word is split in 3-character pieces."""

    def tokenize(self, text, add_bos=None, special=True):
        import re

        ids = []
        for match in re.finditer(r"\s*\S+|\s+", text):
            piece = match.group()
            ids += [hash(piece[i:i + 3]) % 1000 for i in range(0, len(piece), 3)]
        return ids


def test_tokenize_text_prefix_equals_full_tokenization():
    rng = np.random.default_rng(0)
    words = ["a", "the", "beginning", "  spaced", "\n", "\n\n", "x" * 50]
    text = " ".join(rng.choice(words, size=5000).tolist())
    full = WordTokenizer().tokenize(text)
    for max_tokens in (2, 10, 333, 2000, len(full), len(full) + 10):
        assert texts.tokenize_text(WordTokenizer(), text, max_tokens) == full[:max_tokens]
    assert texts.tokenize_text(WordTokenizer(), text) == full
    with pytest.raises(ValueError, match="max_tokens must be an int >= 2"):
        texts.tokenize_text(WordTokenizer(), text, 1)


# The CLI -------------------------------------------------------------------------------------------
def test_running_log_ppl_is_a_sliding_nan_mean():
    rng = np.random.default_rng(1)
    nll = rng.random(50)
    nll[rng.random(50) < 0.4] = np.nan
    nll[:3] = np.nan
    got = ppl_cmd.running_log_ppl(nll, 7)
    for i in range(50):
        window = nll[max(0, i - 6):i + 1]
        window = window[~np.isnan(window)]
        if window.size:
            assert got[i] == pytest.approx(window.mean(), rel=1e-12)
        else:
            assert np.isnan(got[i])


def test_shared_positions_ppl_uses_only_positions_every_mode_evaluated():
    nan = np.nan
    curves = {"dense": np.array([1.0, 2.0, 3.0]),                    # stops early (training context)
              "recompute": np.array([4.0, nan, 6.0, nan, 8.0]),      # strided
              "streaming": np.array([0.5, 1.5, 2.5, 3.5, 4.5])}
    count, shared = ppl_cmd.shared_positions_ppl(curves)
    assert count == 2  # positions 0 and 2
    assert shared["dense"] == pytest.approx(np.exp(2.0))
    assert shared["recompute"] == pytest.approx(np.exp(5.0))
    assert shared["streaming"] == pytest.approx(np.exp(1.5))


def test_parse_modes():
    assert ppl_cmd.parse_modes(None) == ["streaming"]
    assert ppl_cmd.parse_modes(["streaming,window", "recompute", "window"]) == ["streaming", "window", "recompute"]
    with pytest.raises(ValueError, match="unknown mode 'stream'"):
        ppl_cmd.parse_modes(["stream"])


def read_table(stdout: str) -> dict[str, list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["mode", "cache", "tokens", "evaluated", "ppl", "ms/token"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_cli_outputs_equal_the_api(model, tiny_path, tokens, tmp_path, capsys):
    np.save(tmp_path / "tokens.npy", tokens)
    prefix = tmp_path / "out" / "run"
    argv = ["ppl", str(tiny_path), "--tokens", str(tmp_path / "tokens.npy"), "--mode", "streaming,window",
            "--mode", "recompute", "--n-sink", str(S), "--window", str(W), "--recompute-stride", "3",
            "--out", str(prefix), "--quiet", "--threads", "2"]
    assert cli.main(argv) == 0
    table = read_table(capsys.readouterr().out)
    expected = {
        "streaming": sinkstream.perplexity(model, tokens, "streaming", n_sink=S, window=W),
        "window": sinkstream.perplexity(model, tokens, "window", window=C),
        "recompute": sinkstream.perplexity(model, tokens, "recompute", window=C, positions=range(0, N - 1, 3)),
    }
    for mode, nll in expected.items():
        np.testing.assert_array_equal(np.load(f"{prefix}.{mode}.npy"), nll)
        csv = np.loadtxt(f"{prefix}.{mode}.csv", delimiter=",", skiprows=1)
        np.testing.assert_array_equal(csv[:, 0], np.arange(N - 1))
        np.testing.assert_array_equal(csv[:, 1], tokens[1:])
        np.testing.assert_array_equal(csv[:, 2], nll)
        row = table[mode]
        assert row[2] == str(N) and row[3] == str(int((~np.isnan(nll)).sum()))
        assert float(row[4]) == pytest.approx(math.exp(np.nanmean(nll)), abs=1e-4)
    assert table["streaming"][1] == f"{S}+{W}" and table["window"][1] == str(C)
    assert table["recompute"][3] == str(len(range(0, N - 1, 3)))


def test_cli_dense_stops_at_training_context(tiny_path, tmp_path, capsys):
    long = np.random.default_rng(2).integers(0, 256, size=600)     # the tiny model's n_ctx is 512
    np.save(tmp_path / "long.npy", long)
    assert cli.main(["ppl", str(tiny_path), "--tokens", str(tmp_path / "long.npy"), "--mode", "dense",
                     "--max-tokens", "550", "--quiet", "--stride", "50"]) == 0
    out, err = capsys.readouterr()
    assert "dense mode stops at the training context" in err
    assert read_table(out)["dense"][2] == "513"


def test_cli_plot(tiny_path, tokens, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "tokens.npy", tokens)
    png = tmp_path / "curves.png"
    assert cli.main(["ppl", str(tiny_path), "--tokens", str(tmp_path / "tokens.npy"), "--mode",
                     "streaming,window,dense", "--n-sink", str(S), "--window", str(W), "--plot", str(png),
                     "--plot-window", "8", "--quiet"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_plot_without_matplotlib(tiny_path, tokens, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    np.save(tmp_path / "tokens.npy", tokens)
    assert cli.main(["ppl", str(tiny_path), "--tokens", str(tmp_path / "tokens.npy"), "--plot",
                     str(tmp_path / "x.png")]) == 1
    assert "pip install 'sinkstream[plot]'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["--mode", "bogus"], "unknown mode 'bogus'"),
    (["--window", "0"], "--window must be >= 1"),
    (["--stride", "0"], "--stride must be >= 1"),
    (["--max-tokens", "1"], "--max-tokens must be >= 2"),
])
def test_cli_argument_errors(tiny_path, tokens, tmp_path, capsys, argv, match):
    np.save(tmp_path / "tokens.npy", tokens)
    assert cli.main(["ppl", str(tiny_path), "--tokens", str(tmp_path / "tokens.npy"), *argv]) == 1
    assert match in capsys.readouterr().err


def test_cli_bad_token_file(tiny_path, tmp_path, capsys):
    np.save(tmp_path / "floats.npy", np.zeros(5))
    assert cli.main(["ppl", str(tiny_path), "--tokens", str(tmp_path / "floats.npy")]) == 1
    assert "expected a 1-D integer array" in capsys.readouterr().err


def test_cli_text_file(model, tiny_path, tmp_path, capsys):
    """--text: the file is tokenized as the API does, and the NLL equals perplexity()'s."""
    text = "In the beginning God created the heaven and the earth.\n" * 4
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    prefix = tmp_path / "run"
    assert cli.main(["ppl", str(tiny_path), "--text", str(tmp_path / "t.txt"), "--mode", "streaming",
                     "--n-sink", str(S), "--window", str(W), "--max-tokens", "100", "--out", str(prefix),
                     "--quiet"]) == 0
    ids = model.tokenize(text, special=False)[:100]
    expected = sinkstream.perplexity(model, ids, "streaming", n_sink=S, window=W)
    np.testing.assert_array_equal(np.load(f"{prefix}.streaming.npy"), expected)
    assert read_table(capsys.readouterr().out)["streaming"][2] == str(len(ids))
