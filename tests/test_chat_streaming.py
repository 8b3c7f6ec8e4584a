"""Multi-turn streaming chat: one Session for a whole conversation, at constant memory, with no
resets; the conversation's first tokens stay as the attention sinks; save/load parks and resumes
it exactly."""
from __future__ import annotations

import pytest

import sinkstream
from sinkstream import _core
from tiny_models import write_tiny_model

N_SINK, WINDOW = 4, 60


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return sinkstream.Model(write_tiny_model(tmp_path_factory.mktemp("m") / "m.gguf", n_ctx=256), n_threads=1)


def converse(session, turns, first=0):
    return ["".join(session.chat(f"turn {i}: tell me more", max_tokens=8, temperature=0.8, seed=i))
            for i in range(first, first + turns)]


def test_two_hundred_turns_at_constant_memory(model):
    session = model.session(mode="streaming", n_sink=N_SINK, window=WINDOW)
    kv_bytes = session.kv_bytes
    converse(session, 20)
    heap_before = _core.heap_bytes_in_use()
    converse(session, 180, first=20)
    heap_after = _core.heap_bytes_in_use()
    assert session.kv_bytes == kv_bytes
    assert session.n_past > 20 * (N_SINK + WINDOW)     # the stream went round the cache many times
    assert session.n_cached == N_SINK + WINDOW
    assert len(session._chat_history) == 400          # 200 user + 200 assistant messages, no reset
    if heap_before >= 0:
        # The engine allocates nothing per token; only the conversation's text grows (~50 KB here).
        assert heap_after - heap_before < 512 * 1024


def test_conversation_parks_and_resumes_exactly(model, tmp_path):
    straight = model.session(mode="streaming", n_sink=N_SINK, window=WINDOW)
    expected = converse(straight, 12)

    first = model.session(mode="streaming", n_sink=N_SINK, window=WINDOW)
    got = converse(first, 7)
    first.save(tmp_path / "chat.state")
    del first
    resumed = model.session(mode="streaming", n_sink=N_SINK, window=WINDOW)
    resumed.load(tmp_path / "chat.state")
    got += converse(resumed, 5, first=7)
    assert got == expected
    assert resumed.n_past == straight.n_past
