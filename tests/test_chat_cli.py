"""`sinkstream chat` on a real (tiny) model: /save, /load, --load and /stats work on the session's
whole state, and a long prompt read with a progress bar gives the same stream as without one."""
from __future__ import annotations

import pytest

import sinkstream
from sinkstream import cli, generation
from tiny_models import write_tiny_model

CHAT = ["chat", "--temperature", "0", "-n", "6", "--history-file", "", "--mode", "streaming", "--window", "60"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("m") / "m.gguf", n_ctx=256))


def chat(monkeypatch, capsys, path, lines, *options):
    queue = list(lines)

    def fake_input(prompt=""):
        if not queue:
            raise EOFError
        return queue.pop(0)
    monkeypatch.setattr("builtins.input", fake_input)
    assert cli.main([*CHAT, *options, path]) == 0
    return capsys.readouterr()


def replies(out: str) -> list[str]:
    return [line for line in out.split("\n") if line]


def test_save_and_load_continue_the_conversation_exactly(monkeypatch, capsys, model_path, tmp_path):
    state = str(tmp_path / "chat.state")
    # One conversation: two turns, saved after the first, then the second turn again after /load.
    out = chat(monkeypatch, capsys, model_path, ["Hello there", f"/save {state}", "And then?", f"/load {state}",
                                                  "And then?"]).out
    first, second, second_again = replies(out)
    assert second_again == second
    # A new process continues from the file: the same second reply.
    out = chat(monkeypatch, capsys, model_path, ["And then?"], "--load", state).out
    assert replies(out) == [second]
    # Without the saved first turn the second reply differs (the state carried the conversation).
    fresh = replies(chat(monkeypatch, capsys, model_path, ["And then?"]).out)
    session = sinkstream.Model(model_path, n_threads=1).session(window=60)
    expected = "".join(session.chat("And then?", max_tokens=6, temperature=0))
    assert fresh == [expected.strip("\n")] and fresh != [second]


def test_load_errors_keep_the_chat_going(monkeypatch, capsys, model_path, tmp_path):
    bad = tmp_path / "bad.state"
    bad.write_bytes(b"not a state")
    result = chat(monkeypatch, capsys, model_path, [f"/load {bad}", f"/load {tmp_path / 'missing'}", "Hi"])
    assert result.err.count("/load: ") == 2 and "not a sinkstream session state" in result.err and "No such file" in result.err
    assert len(replies(result.out)) == 1


def test_stats_reports_the_stream(monkeypatch, capsys, model_path):
    err = chat(monkeypatch, capsys, model_path, ["Hi", "/stats"]).err
    line = next(x for x in err.splitlines() if x.startswith("stream position"))
    n_past = int(line.split()[2])
    assert n_past > 0 and "4 sinks + 60 window, mode streaming" in line
    assert "last reply: prompt:" in err


class RecordingBar:
    made: list["RecordingBar"] = []

    def __init__(self, total):
        self.total, self.updates, self.closed = total, [], False
        RecordingBar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


def test_progress_reads_a_long_prompt_in_chunks_with_the_same_result(monkeypatch, model_path):
    model = sinkstream.Model(model_path, n_threads=1)
    prompt = [int(t) for t in (7 + (i * 31) % 200 for i in range(700))]
    plain = model.session(window=100)
    expected = list(generation.stream_tokens(plain, prompt, max_tokens=8, temperature=0))
    RecordingBar.made.clear()
    monkeypatch.setattr(generation, "_prefill_bar", RecordingBar)
    chunked = model.session(window=100)
    assert list(generation.stream_tokens(chunked, prompt, max_tokens=8, temperature=0, progress=True)) == expected
    assert chunked.n_past == plain.n_past
    (bar,) = RecordingBar.made
    assert bar.total == 700 and bar.updates == [256, 256, 188] and bar.closed
    # A short prompt is read in one eval, without a bar.
    short = model.session(window=100)
    list(generation.stream_tokens(short, prompt[:100], max_tokens=2, temperature=0, progress=True))
    assert len(RecordingBar.made) == 1
