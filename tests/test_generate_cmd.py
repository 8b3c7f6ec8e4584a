"""`sinkstream generate` and `sinkstream chat` driven with a scripted fake model."""
from __future__ import annotations

import io

import pytest

from generation_fakes import FakeModel, FakeSession
from sinkstream import cli
from sinkstream.chat_template import render_chat
from sinkstream.commands import _generation_args


class ScriptedModel(FakeModel):
    """FakeModel whose sessions follow one shared script; remembers how it was opened."""

    def __init__(self, *pieces, **kwargs):
        super().__init__(**kwargs)
        self.script = self.ids(*pieces)
        self.opened_with = None
        self.session_kwargs = None
        self.fail_on_eval = None
        self.fail_with = None

    def session(self, **kwargs):
        self.session_kwargs = kwargs
        s = FakeSession(self, script=self.script, **kwargs)
        if self.fail_on_eval is not None:
            s.fail_on_eval, s.fail_with = self.fail_on_eval, self.fail_with
        self.sessions.append(s)
        return s


@pytest.fixture
def use_model(monkeypatch):
    def install(model):
        def load_model(path, n_threads):
            model.opened_with = (path, n_threads)
            return model
        monkeypatch.setattr(_generation_args, "load_model", load_model)
        return model
    return install


def test_generate_streams_text_then_speed(use_model, capsys):
    model = use_model(ScriptedModel("Hello", " world", "<|im_end|>"))
    assert cli.main(["generate", "-p", "Hi", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "Hello world\n"
    assert "prompt: 2 tokens" in err and "generation: 3 tokens" in err and err.count("tok/s") == 2
    assert model.opened_with == (None, None)
    assert model.session_kwargs == {"mode": "streaming"}
    assert model.sessions[0].fed == model.tokenize("Hi") + model.ids("Hello", " world")


def test_generate_session_and_model_options(use_model, capsys):
    model = use_model(ScriptedModel("Hello", "<|im_end|>"))
    assert cli.main(["generate", "m.gguf", "-p", "Hi", "--mode", "dense", "--n-sink", "2", "--window", "16",
                     "--threads", "3", "--temperature", "0"]) == 0
    assert model.opened_with == ("m.gguf", 3)
    assert model.session_kwargs == {"mode": "dense", "n_sink": 2, "window": 16}


def test_generate_sampling_options_and_stop(use_model, capsys):
    use_model(ScriptedModel("Hello", "ST", "OP", " world", "<|im_end|>"))
    assert cli.main(["generate", "-p", "Hi", "--temperature", "0", "--stop", "STOP", "--stop", "zzz"]) == 0
    out, err = capsys.readouterr()
    assert out == "Hello\n" and "stop: stop" in err


def test_generate_max_tokens_and_unlimited(use_model, capsys):
    use_model(ScriptedModel(*["Hello"] * 300, "<|im_end|>"))
    assert cli.main(["generate", "-p", "Hi", "--temperature", "0", "-n", "2"]) == 0
    assert capsys.readouterr().out == "HelloHello\n"
    use_model(ScriptedModel(*["Hello"] * 300, "<|im_end|>"))
    assert cli.main(["generate", "-p", "Hi", "--temperature", "0", "--max-tokens", "-1"]) == 0
    assert capsys.readouterr().out == "Hello" * 300 + "\n"


def test_generate_logit_bias(use_model, capsys):
    model = use_model(ScriptedModel("Hello", "<|im_end|>"))
    assert cli.main(["generate", "-p", "Hi", "--temperature", "0", "-n", "1",
                     "--logit-bias", f"{model.id('Hello')}=-inf", "--logit-bias", f"{model.id('é')}=5"]) == 0
    assert capsys.readouterr().out == "é\n"
    with pytest.raises(SystemExit):
        cli.main(["generate", "-p", "Hi", "--logit-bias", "nonsense"])


def test_generate_prompt_from_stdin_and_file(use_model, capsys, monkeypatch, tmp_path):
    model = use_model(ScriptedModel("Hello", "<|im_end|>"))
    monkeypatch.setattr("sys.stdin", io.StringIO("From stdin"))
    assert cli.main(["generate", "-p", "-", "--temperature", "0"]) == 0
    assert model.sessions[-1].eval_calls[0] == model.tokenize("From stdin")
    f = tmp_path / "prompt.txt"
    f.write_text("From a file é", encoding="utf-8")
    model.script = model.ids("Hello", "<|im_end|>")
    assert cli.main(["generate", "--file", str(f), "--temperature", "0"]) == 0
    assert model.sessions[-1].eval_calls[0] == model.tokenize("From a file é")


def test_generate_errors(use_model, capsys):
    use_model(ScriptedModel("Hello", "<|im_end|>"))
    assert cli.main(["generate", "-p", "Hi", "--top-p", "2"]) == 1
    assert "top_p" in capsys.readouterr().err
    assert cli.main(["generate", "-p", ""]) == 1
    assert "empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["generate"])  # a prompt is required


def test_generate_ctrl_c_prints_what_it_has_and_the_speed(use_model, capsys):
    model = ScriptedModel("Hello", " world", "\n")
    model.fail_on_eval, model.fail_with = 2, KeyboardInterrupt()
    use_model(model)
    assert cli.main(["generate", "-p", "Hi", "--temperature", "0"]) == 130
    out, err = capsys.readouterr()
    assert out == "Hello world\n" and "stop: interrupted" in err


def feed_input(monkeypatch, lines):
    queue = list(lines)

    def fake_input(prompt=""):
        if not queue:
            raise EOFError
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item
    monkeypatch.setattr("builtins.input", fake_input)


def test_chat_keeps_one_session_for_the_conversation(use_model, capsys, monkeypatch):
    model = use_model(ScriptedModel("Hello", "<|im_end|>", " 4", "<|im_end|>"))
    feed_input(monkeypatch, ["Hi", "What is 2+2?", ""])
    assert cli.main(["chat", "--system", "Be brief.", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "Hello\n 4\n\n"  # the empty line is ignored; end of input ends the prompt's line
    assert err.count("tok/s") == 4  # prompt and generation speed after each reply
    assert len(model.sessions) == 1
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "What is 2+2?"}]
    s = model.sessions[0]
    assert model.detokenize(s.fed + s._pending) == render_chat(None, history) + " 4<|im_end|>"


@pytest.mark.parametrize("ending", [["/exit"], ["/quit"], []])
def test_chat_endings(use_model, capsys, monkeypatch, ending):
    model = use_model(ScriptedModel("Hello", "<|im_end|>"))
    feed_input(monkeypatch, ["Hi"] + ending + (["never read"] if ending else []))
    assert cli.main(["chat", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("Hello\n")
    assert "never read" not in model.detokenize(model.sessions[0].fed)


def _conversation(model, *messages):
    """What the session holds after these (user, assistant) exchanges, rendered by the template."""
    history = []
    for user, reply in messages:
        history += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return history


def test_chat_ignores_empty_lines_and_ctrl_c_at_the_prompt(use_model, capsys, monkeypatch):
    model = use_model(ScriptedModel("Hello", "<|im_end|>", " 4", "<|im_end|>"))
    feed_input(monkeypatch, ["", "   ", KeyboardInterrupt(), "Hi", "", "2+2?", "/exit"])
    assert cli.main(["chat", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "\nHello\n 4\n"  # the newline after ^C, then the replies
    s = model.sessions[0]
    history = _conversation(model, ("Hi", "Hello")) + [{"role": "user", "content": "2+2?"}]
    assert model.detokenize(s.fed + s._pending) == render_chat(None, history) + " 4<|im_end|>"


def test_chat_multi_line_messages(use_model, capsys, monkeypatch):
    model = use_model(ScriptedModel("Hello", "<|im_end|>", " 4", "<|im_end|>"))
    feed_input(monkeypatch, ["first line \\", "second line", '"""', "a", "", "  b", '"""', "/exit"])
    assert cli.main(["chat", "--temperature", "0"]) == 0
    s = model.sessions[0]
    history = (_conversation(model, ("first line \nsecond line", "Hello"))
               + [{"role": "user", "content": "a\n\n  b"}])
    assert model.detokenize(s.fed + s._pending) == render_chat(None, history) + " 4<|im_end|>"


def test_chat_reset_starts_a_new_conversation_with_the_system_message(use_model, capsys, monkeypatch):
    model = use_model(ScriptedModel("Hello", "<|im_end|>", " 4", "<|im_end|>"))
    feed_input(monkeypatch, ["Hi", "/reset", "2+2?", "/exit"])
    assert cli.main(["chat", "--system", "Be brief.", "--temperature", "0"]) == 0
    assert "new stream" in capsys.readouterr().err
    s = model.sessions[0]
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert model.detokenize(s.fed + s._pending) == render_chat(None, history) + " 4<|im_end|>"


def test_chat_unknown_command_and_usage(use_model, capsys, monkeypatch):
    model = use_model(ScriptedModel("Hello", "<|im_end|>"))
    feed_input(monkeypatch, ["/sav", "/save", "/exit"])
    assert cli.main(["chat", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "unknown command /sav" in err and "usage: /save FILE" in err
    assert model.sessions[0].fed == []  # no command reached the model as a message


def test_chat_ctrl_c_stops_the_reply_and_the_conversation_goes_on(use_model, capsys, monkeypatch):
    model = ScriptedModel("Hello", " world", "\n", " 4", "<|im_end|>")
    model.fail_on_eval, model.fail_with = 2, KeyboardInterrupt()
    use_model(model)
    feed_input(monkeypatch, ["Hi", "2+2?", "/exit"])
    assert cli.main(["chat", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert "[reply stopped]" in err
    s = model.sessions[0]
    # The interrupted reply ("Hello", its " world" still pending) is part of the conversation.
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello world"},
               {"role": "user", "content": "2+2?"}]
    assert model.detokenize(s.fed + s._pending) == render_chat(None, history) + "\n 4<|im_end|>"


def test_generate_chat_renders_the_prompt_as_a_user_message(use_model, capsys):
    model = use_model(ScriptedModel("Hello", "<|im_end|>"))
    assert cli.main(["generate", "--chat", "--system", "Be brief.", "-p", "Hi", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "Hello\n"
    s = model.sessions[0]
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert model.detokenize(s.fed + s._pending) == render_chat(None, history) + "Hello<|im_end|>"
    assert cli.main(["generate", "--system", "Be brief.", "-p", "Hi"]) == 1
    assert "--system needs --chat" in capsys.readouterr().err
