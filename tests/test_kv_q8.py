"""kv_type="q8_0": the K/V cache in GGML's 8-bit blocks (34 bytes per 32 values, f16 is 64). The
stream's contract holds with it as with f16 (docs/streaming.md): chunked equals token-by-token
exactly, save/load continues bit for bit, a batched step equals the session alone, and the cache's
size is what the estimate says. How much it costs in perplexity on real text is measured on the
default model (test_default_model_kv_q8_0_perplexity_cost, and the README's figure)."""
from __future__ import annotations

import numpy as np
import pytest

import sinkstream
from sinkstream import _core
from tiny_models import write_tiny_model

HEAD_DIM = 32


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("q8") / "m.gguf", n_embd=4 * HEAD_DIM, n_head=4, n_head_kv=2,
                            n_ff=96, n_ctx=512, qk_scale=0.3)
    return sinkstream.Model(path, n_threads=2)


def stream_of(seed, n):
    return np.random.default_rng(seed).integers(0, 256, size=n).astype(np.int32)


@pytest.mark.parametrize("mode", ["streaming", "window", "dense"])
def test_chunked_equals_token_by_token(model, mode):
    kinds = {"streaming": dict(n_sink=4, window=40), "window": dict(window=44), "dense": dict(window=200)}
    tokens = stream_of(1, 150)
    chunked = model.session(mode, kv_type="q8_0", batch_size=32, **kinds[mode]).eval(tokens, logits="all")
    single = model.session(mode, kv_type="q8_0", batch_size=1, **kinds[mode])
    one_by_one = np.stack([single.eval(tokens[i:i + 1]) for i in range(len(tokens))])
    assert np.array_equal(chunked, one_by_one)
    # And it is another cache than f16: the logits move (how much on real text: the perplexity test).
    f16 = model.session(mode, kv_type="f16", batch_size=32, **kinds[mode]).eval(tokens, logits="all")
    assert np.abs(chunked - f16).max() > 0


def test_save_load_and_batched_steps(model):
    tokens = stream_of(2, 120)
    whole = model.session(n_sink=4, window=30, kv_type="q8_0").eval(tokens)
    first = model.session(n_sink=4, window=30, kv_type="q8_0")
    first.eval(tokens[:70])
    second = model.session(n_sink=4, window=30, kv_type="q8_0")
    second.load(first.save())
    assert np.array_equal(second.eval(tokens[70:]), whole)
    with pytest.raises(ValueError, match="other settings.*kv_type q8_0"):  # not for an f16 session
        model.session(n_sink=4, window=30, kv_type="f16").load(first.save())

    alone = model.session(n_sink=4, window=30, kv_type="q8_0")
    batched = model.session(n_sink=4, window=30, kv_type="q8_0")
    other = model.session(n_sink=2, window=9, kv_type="f16")
    runner = _core.BatchRunner(model._core, 2, 64, 4)
    for i in range(0, 120, 8):
        expected = alone.eval(tokens[i:i + 8])
        got = runner.step([batched._core, other._core], [tokens[i:i + 8], tokens[i:i + 3]], [True, False])
        assert np.array_equal(got[0], expected)


def test_size_and_refusals(model):
    f16 = model.session(n_sink=4, window=60, kv_type="f16", batch_size=16)
    q8 = model.session(n_sink=4, window=60, kv_type="q8_0", batch_size=16)
    assert q8.kv_bytes * 64 == f16.kv_bytes * 34  # 34 bytes per 32 values against 2 bytes a value
    assert model.session_memory(n_sink=4, window=60, kv_type="q8_0", batch_size=16)["kv_cache"] == q8.kv_bytes
    with pytest.raises(ValueError, match="'f16', 'f32' or 'q8_0'"):
        model.session(kv_type="q4_0")


def test_head_dim_that_is_not_whole_blocks_is_refused(tmp_path):
    small = sinkstream.Model(write_tiny_model(tmp_path / "m.gguf"), n_threads=1)  # head_dim 8
    with pytest.raises(ValueError, match="head_dim a multiple of 32.*head_dim is 8"):
        small.session(kv_type="q8_0")


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.ci
def test_default_model_kv_q8_0_perplexity_cost(default_model_path, tmp_path):
    """The paper's setting (4 sinks + 1,020 window) on 3,000 tokens of the King James Bible: the
    8-bit cache costs well under 1% perplexity (the README quotes 20,000 tokens)."""
    from sinkstream import texts

    model = sinkstream.Model(default_model_path)
    tokens = texts.tokenize_text(model, texts.kjv_text(), max_tokens=3000)
    ppl = {kv: float(np.exp(np.mean(sinkstream.perplexity(model, tokens, "streaming", 4, 1020, kv_type=kv))))
           for kv in ("f16", "q8_0")}
    print(ppl)
    assert ppl["q8_0"] != ppl["f16"] and abs(ppl["q8_0"] / ppl["f16"] - 1) < 0.01


def test_q8_0_is_cpu_only_for_now(model):
    with pytest.raises(ValueError, match="kv_type 'q8_0' is CPU-only"):
        _core.Session(model._core, kv_type="q8_0", device="cuda")  # the engine's check, in every build


def test_the_cli_takes_kv_type(model, monkeypatch, capsys):
    """generate --kv-type q8_0 opens its session with the 8-bit cache: the same text as a q8_0
    session, and chat's /stats reports half the f16 cache's memory."""
    from sinkstream import cli
    from sinkstream.commands import _generation_args

    monkeypatch.setattr(_generation_args, "load_model", lambda path, n_threads, device="cpu": model)
    assert cli.main(["generate", "-p", "Hello", "-n", "6", "--temperature", "0", "--window", "60",
                     "--kv-type", "q8_0"]) == 0
    expected = model.session(window=60, kv_type="q8_0").generate("Hello", max_tokens=6, temperature=0)
    assert capsys.readouterr().out.rstrip("\n") == expected.rstrip("\n")
    sizes = {}
    for kv in ("f16", "q8_0"):
        lines = ["/stats"]

        def scripted_input(prompt="", lines=lines):
            if not lines:
                raise EOFError
            return lines.pop(0)
        monkeypatch.setattr("builtins.input", scripted_input)
        assert cli.main(["chat", "--window", "60", "--kv-type", kv, "--history-file", ""]) == 0
        line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("stream position"))
        sizes[kv] = int(line.split("(")[-1].split()[0])
    assert sizes["q8_0"] * 64 == sizes["f16"] * 34
