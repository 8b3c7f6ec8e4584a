"""The async API (sinkstream/aio.py): same text as the sync API, generation off the event loop, and
cancellation that leaves the session exactly where an uninterrupted run would be."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import sinkstream
from tiny_models import write_tiny_model

GREEDY = dict(temperature=0.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("aio") / "m.gguf", n_ctx=4096)
    with sinkstream.Model(path, n_threads=1) as m:
        yield m


def _ban_eos(model):
    return {model.eos_id: float("-inf")} if model.eos_id >= 0 else None


def test_astream_and_agenerate_equal_the_sync_calls(model):
    sync = model.generate("Once upon a time", max_tokens=24, seed=3)

    async def run():
        pieces = [p async for p in model.astream("Once upon a time", max_tokens=24, seed=3)]
        return "".join(pieces), await model.agenerate("Once upon a time", max_tokens=24, seed=3)

    streamed, generated = asyncio.run(run())
    assert streamed == sync == generated


def test_session_agenerate_continues_like_generate(model):
    a, b = model.session(window=60), model.session(window=60)
    expected = [a.generate("Hello", max_tokens=10, **GREEDY), a.generate(" and", max_tokens=10, **GREEDY)]

    async def run():
        return [await b.agenerate("Hello", max_tokens=10, **GREEDY), await b.agenerate(" and", max_tokens=10, **GREEDY)]

    assert asyncio.run(run()) == expected
    assert a.n_past == b.n_past


def test_generation_runs_off_the_event_loop(model):
    """While a generation runs, the loop keeps serving other tasks between its pieces."""
    events = []

    async def ticker(stop):
        while not stop.is_set():
            events.append("tick")
            await asyncio.sleep(0)

    async def run():
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        threads = set()
        async for _ in model.session(window=60).astream("x", max_tokens=300, logit_bias=_ban_eos(model), **GREEDY):
            threads.add(threading.current_thread().name)
            events.append("piece")
        stop.set()
        await task
        return threads

    threads = asyncio.run(run())
    assert threads == {threading.main_thread().name}  # pieces arrive on the loop's thread
    first, last = events.index("piece"), len(events) - 1 - events[::-1].index("piece")
    assert "tick" in events[first:last]


def _continue_and_compare(model, session, prompt):
    """session was cancelled mid-stream: continuing it equals a reference that generated the same
    number of tokens uninterrupted."""
    stats = session.last_stats
    assert stats.stop_reason == "closed", stats.stop_reason
    n = stats.generated_tokens
    assert n > 0
    reference = model.session(window=60)
    ref_tokens = list(sinkstream.generation.stream_tokens(reference, prompt, max_tokens=n,
                                                          logit_bias=_ban_eos(model), **GREEDY))
    assert stats.tokens[:len(ref_tokens)] == ref_tokens
    assert (session.n_past, session._pending) == (reference.n_past, reference._pending)
    assert session.generate("", max_tokens=20, **GREEDY) == reference.generate("", max_tokens=20, **GREEDY)


def test_consumer_break_stops_the_worker_and_the_session_continues_exactly(model):
    session = model.session(window=60)

    async def run():
        pieces = session.astream("It was", max_tokens=None, logit_bias=_ban_eos(model), **GREEDY)
        n = 0
        async for _ in pieces:
            n += 1
            if n == 12:
                break
        await pieces.aclose()  # returns once the worker has stopped

    asyncio.run(run())
    _continue_and_compare(model, session, "It was")


def test_cancelled_task_stops_the_worker_and_the_session_continues_exactly(model):
    session = model.session(window=60)

    async def consume(seen):
        async for _ in session.astream("It was", max_tokens=None, logit_bias=_ban_eos(model), **GREEDY):
            seen.append(1)

    async def run():
        seen = []
        task = asyncio.create_task(consume(seen))
        while len(seen) < 10:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    _continue_and_compare(model, session, "It was")


def test_cancel_during_prompt_evaluation_keeps_finished_chunks(model):
    tokens = np.random.default_rng(0).integers(0, 256, size=200_000).astype(np.int32)
    session = model.session(window=60, batch_size=32)

    async def run():
        task = asyncio.create_task(session.agenerate(tokens, max_tokens=4))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    done = session.n_past
    assert 0 < done < len(tokens) and done % 32 == 0
    reference = model.session(window=60, batch_size=32)
    reference.eval(tokens[:done], logits=None)
    more = tokens[done:done + 40]
    np.testing.assert_allclose(session.eval(more, logits="all"), reference.eval(more, logits="all"), atol=1e-5)


def test_errors_are_raised_at_call_time_and_from_the_worker(model):
    with pytest.raises(ValueError, match="temperature"):
        model.astream("x", temperature=-1)
    with pytest.raises(TypeError, match="temprature"):
        model.session().astream("x", temprature=1)
    with pytest.raises(ValueError, match="empty"):
        model.session().astream(None)
    session = model.session(mode="dense", window=16)

    async def run():  # the worker's error (dense mode is full) reaches the consumer
        return await session.agenerate("x", max_tokens=40, logit_bias=_ban_eos(model))

    with pytest.raises(ValueError, match="dense mode holds at most"):
        asyncio.run(run())


def test_a_new_call_ends_an_unclosed_one_on_the_same_session(model):
    """`break` leaves the iterator to be closed later by the loop; the next call on the session
    ends it first instead of racing it, and continues exactly."""
    session = model.session(window=60)

    async def run():
        n = 0
        async for _ in session.astream("It was", max_tokens=None, logit_bias=_ban_eos(model), **GREEDY):
            n += 1
            if n == 12:
                break
        stats = session.last_stats
        text = await session.agenerate(None, max_tokens=20, **GREEDY)
        return stats, text

    stats, text = asyncio.run(run())
    assert stats.stop_reason == "closed"
    reference = model.session(window=60)
    list(sinkstream.generation.stream_tokens(reference, "It was", max_tokens=stats.generated_tokens,
                                             logit_bias=_ban_eos(model), **GREEDY))
    assert text == reference.generate("", max_tokens=20, **GREEDY)


def test_achat_equals_chat(model):
    expected = "".join(model.session(window=60).chat("Hello there", max_tokens=12, **GREEDY))
    session = model.session(window=60)

    async def run():
        first = "".join([p async for p in model.achat("Hello there", max_tokens=12, window=60, **GREEDY)])
        second = "".join([p async for p in session.achat("Hello there", max_tokens=12, **GREEDY)])
        return first, second

    assert asyncio.run(run()) == (expected, expected)
    assert session._chat_history[-1]["role"] == "assistant"
