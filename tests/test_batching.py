"""Batched decode across sessions (cpp/runtime/batch.h, python/sinkstream/batching.py).

One pass serves several sessions, each with its own cache, mode, geometry and stream position; the
contract is that every session's logits, cache and counters are exactly those of running it alone.
The scheduler on top must give the same generations as sessions running one at a time, interleave
a long prompt with other sessions' decoding, and keep errors and cancellation to their own eval.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import sinkstream
from sinkstream import _core
from sinkstream.generation import stream_tokens
from tiny_models import FAMILIES, PAPER_FAMILIES, write_family_model, write_tiny_model

# Sessions of one batch: different modes and geometries, so their caches wrap at different times.
SESSION_KINDS = [
    dict(mode="streaming", n_sink=2, window=6),
    dict(mode="streaming", n_sink=4, window=11),
    dict(mode="window", window=7),
    dict(mode="dense", window=64),
]


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = sinkstream.Model(write_family_model(root / f"{family}.gguf", family, seed=3), n_threads=2)
        return cache[family]
    return get


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return sinkstream.Model(write_tiny_model(tmp_path_factory.mktemp("tiny") / "m.gguf", n_ctx=256), n_threads=2)


def stream_of(seed, n):
    return np.random.default_rng(seed).integers(0, 256, size=n).astype(np.int32)


@pytest.mark.parametrize("family", FAMILIES + PAPER_FAMILIES)
def test_a_batched_step_equals_each_session_alone(family, family_models):
    """Prompts of different lengths, then 40 decode steps: bit-equal logits, the same stream
    positions, key rotations and attended entries as the same sessions evaluated one by one."""
    model = family_models(family)
    alone = [model.session(**kind, batch_size=16) for kind in SESSION_KINDS]
    batched = [model.session(**kind, batch_size=16) for kind in SESSION_KINDS]
    runner = _core.BatchRunner(model._core, 2, 64, 8)
    prompts = [stream_of(i, n) for i, n in enumerate((3, 16, 9, 1))]
    expected = [s.eval(p) for s, p in zip(alone, prompts)]
    got = runner.step([s._core for s in batched], prompts, [True] * 4)
    for step in range(40):
        for i in range(4):
            assert np.array_equal(got[i], expected[i]), f"{family}: session {i} differs at step {step}"
        tokens = [np.array([int(np.argmax(e)) % 256], np.int32) for e in expected]
        expected = [s.eval(t) for s, t in zip(alone, tokens)]
        got = runner.step([s._core for s in batched], tokens, [True] * 4)
    for a, b in zip(alone, batched):
        assert (a.n_past, a.n_cached, a._core.keys_rotated, a._core.entries_attended) == \
               (b.n_past, b.n_cached, b._core.keys_rotated, b._core.entries_attended)


def test_step_logits_only_where_wanted_and_sessions_checked_first(tiny):
    a, b, c = (tiny.session(window=20, batch_size=8) for _ in range(3))
    runner = _core.BatchRunner(tiny._core, 1, 16, 4)
    out = runner.step([a._core, b._core], [stream_of(0, 3), stream_of(1, 5)], [False, True])
    assert out.shape == (1, tiny.n_vocab) and (a.n_past, b.n_past) == (3, 5)
    reference = tiny.session(window=20, batch_size=8)
    assert np.array_equal(out[0], reference.eval(stream_of(1, 5)))

    other = sinkstream.Model(tiny.path, n_threads=1).session(window=20)
    recompute = tiny.session(mode="recompute", window=20)
    bad_steps = {
        "the same session": ([a, a], [stream_of(0, 1)] * 2),
        "another model": ([a, other], [stream_of(0, 1)] * 2),
        "batch_size": ([a, b], [stream_of(0, 1), stream_of(0, 9)]),
        "recompute": ([a, recompute], [stream_of(0, 1)] * 2),
        "at most 16 tokens": ([a, b, c], [stream_of(0, 8)] * 3),
        "outside the vocabulary": ([a, b], [stream_of(0, 1), np.array([tiny.n_vocab], np.int32)]),
    }
    for words, (sessions, tokens) in bad_steps.items():
        before = [s.n_past for s in sessions]
        with pytest.raises(ValueError, match=words):
            runner.step([s._core for s in sessions], tokens, [True] * len(sessions))
        assert [s.n_past for s in sessions] == before  # nothing ran, and nobody is left busy
        a.eval(stream_of(2, 1)), b.eval(stream_of(2, 1))


SAMPLING = dict(temperature=0.9, top_k=20, top_p=0.95, min_p=0.02, repeat_penalty=1.1, repeat_last_n=16)


def test_a_step_draws_each_sessions_next_token_as_its_sampler_would(tiny):
    """In-step sampling: the token drawn (and accepted) in C++ equals a twin sampler's draw from the
    same logits, session by session; sessions without a sampler draw nothing; logits still come
    back where wanted."""
    sessions = [tiny.session(window=20, batch_size=8) for _ in range(4)]
    twins = [tiny.session(window=20, batch_size=8) for _ in range(4)]
    samplers = [_core.Sampler(tiny.n_vocab, seed=i, **SAMPLING) for i in range(3)] + [None]
    reference = [_core.Sampler(tiny.n_vocab, seed=i, **SAMPLING) for i in range(3)]
    runner = _core.BatchRunner(tiny._core, 2, 32, 4)
    prompts = [stream_of(10 + i, 2 + i) for i in range(4)]
    for step in range(12):  # past the windows: the caches wrap
        want = [False, True, False, True]
        logits, drawn, errors = runner.step([s._core for s in sessions], prompts, want, samplers)
        assert errors == [None] * 4 and drawn.dtype == np.int32 and drawn[3] == -1
        alone = [t.eval(p) for t, p in zip(twins, prompts)]
        assert np.array_equal(logits, np.stack([alone[1], alone[3]]))
        for i in range(3):
            want_token = reference[i].sample(alone[i])
            reference[i].accept(want_token)
            assert drawn[i] == want_token, (step, i)
        prompts = [np.array([t if t >= 0 else step], np.int32) for t in drawn]
    assert [s.history for s in samplers[:3]] == [r.history for r in reference]


def test_in_step_sampling_errors_stay_with_their_session(tiny):
    a, b = tiny.session(window=20), tiny.session(window=20)
    runner = _core.BatchRunner(tiny._core, 2, 8, 4)
    banned = _core.Sampler(tiny.n_vocab, seed=0, logit_bias={i: float("-inf") for i in range(tiny.n_vocab)})
    fine = _core.Sampler(tiny.n_vocab, seed=0)
    _, drawn, errors = runner.step([a._core, b._core], [stream_of(0, 2)] * 2, [False, False], [banned, fine])
    assert drawn[0] == -1 and "every token has logit -inf" in errors[0]
    assert drawn[1] >= 0 and errors[1] is None
    assert (a.n_past, b.n_past) == (2, 2)  # both sessions' tokens ran
    with pytest.raises(ValueError, match="sampler of an earlier session"):
        runner.step([a._core, b._core], [stream_of(0, 1)] * 2, [False, False], [fine, fine])
    assert (a.n_past, b.n_past) == (2, 2)
    with pytest.raises(ValueError, match="one sampler"):
        runner.step([a._core, b._core], [stream_of(0, 1)] * 2, [False, False], [fine])


def test_scheduled_generation_draws_in_the_step_unless_a_hook_wants_logits(tiny):
    """stream() on a scheduled session leaves the draws to the steps (no logits cross into Python),
    and a per-token hook (the server's logprobs) keeps the Python draw: both give the same text as
    the session alone."""
    alone = "".join(tiny.session(window=40).stream("hello", seed=5, max_tokens=20, **SAMPLING))
    with sinkstream.BatchScheduler(tiny) as scheduler:
        calls = []
        forward = scheduler._forward

        def recording_forward(step):
            calls.append([r.sampler is not None for r, _ in step])
            return forward(step)
        scheduler._forward = recording_forward
        in_step = "".join(scheduler.session(window=40).stream("hello", seed=5, max_tokens=20, **SAMPLING))
        assert sum(any(c) for c in calls) == 19  # every decode step but the first token's (prompt logits)
        calls.clear()
        hooked_session = scheduler.session(window=40)
        seen = []
        hooked_session._on_token = lambda token, logits: seen.append((token, logits.shape))
        hooked = "".join(hooked_session.stream("hello", seed=5, max_tokens=20, **SAMPLING))
        assert not any(any(c) for c in calls) and len(seen) == 20 and seen[0][1] == (tiny.n_vocab,)
        calls.clear()
        ids = []

        def ids_only(token, logits):  # the server's hook without logprobs
            ids.append((token, logits is None))
        ids_only.needs_logits = False
        ids_session = scheduler.session(window=40)
        ids_session._on_token = ids_only
        hooked_ids = "".join(ids_session.stream("hello", seed=5, max_tokens=20, **SAMPLING))
        assert sum(any(c) for c in calls) == 19 and [none for _, none in ids] == [False] + [True] * 19
    assert in_step == hooked == hooked_ids == alone


def wait_until_run_ahead(session, timeout=10.0):
    """Until the eval its scheduler queued ahead of the session's consumer has run (no-op alone)."""
    scheduler = session._scheduler
    deadline = time.monotonic() + timeout
    while scheduler is not None and time.monotonic() < deadline:
        with scheduler._lock:
            ahead = scheduler._ahead.get(session)
            if ahead is None or ahead.done_tokens:
                return
        time.sleep(0.001)


def stop_after(pieces, n):
    """The first n pieces of a stream, then the generator is closed (the consumer stops)."""
    taken = []
    for piece in pieces:
        taken.append(piece)
        if len(taken) == n:
            break
    pieces.close()
    return taken


@pytest.mark.parametrize("how", ["break", "stop string", "max_tokens", "slow consumer"])
def test_a_stopped_generation_leaves_the_stream_it_leaves_alone(tiny, how):
    """The scheduler runs each drawn token's eval ahead of the consumer (batching.py); when the
    consumer stops, that eval is taken back (Session.undo_last_token), so the session's state is
    byte for byte the state of the same generation alone: same n_past, same pending token, same
    save() blob, and the next generation continues identically."""
    options = dict(seed=3, max_tokens=12 if how == "max_tokens" else 40, **SAMPLING)

    def generate(session):
        pieces = session.stream("hello there", **options)
        if how == "break":
            return stop_after(pieces, 6)
        if how == "slow consumer":  # each step's eval has run long before the consumer asks
            taken = []
            for piece in pieces:
                wait_until_run_ahead(session)
                taken.append(piece)
                if len(taken) == 5:
                    break
            pieces.close()
            return taken
        return list(pieces)

    if how == "stop string":  # the text alone decides where it stops
        text = "".join(tiny.session(window=24).stream("hello there", **options))
        options["stop"] = text[len(text) // 2: len(text) // 2 + 2]
    alone_session = tiny.session(window=24)
    alone = generate(alone_session)
    with sinkstream.BatchScheduler(tiny) as scheduler:
        session = scheduler.session(window=24)
        got = generate(session)
        assert scheduler.stats.run_ahead > 0
        if how == "max_tokens":  # never run past it
            assert scheduler.stats.taken_back == 0
        if how == "slow consumer":  # the eval ahead had run when it stopped: undone, not dropped
            assert scheduler.stats.taken_back == 1
        # (break, stop string: the eval ahead may or may not have run by then; either way the same state)
        assert not scheduler._ahead and not scheduler._kept_draws  # nothing left behind for the session
        assert got == alone
        assert session.n_past == alone_session.n_past and session._pending == alone_session._pending
        alone_session._last_logits = None  # its draws were made in Python from logits (the steps': in C++)
        assert session.save() == alone_session.save()
        after = "".join(session.stream(" and more", seed=4, max_tokens=10, **SAMPLING))
    assert after == "".join(alone_session.stream(" and more", seed=4, max_tokens=10, **SAMPLING))


def test_reading_a_generating_session_from_another_thread_is_safe(tiny):
    """The server describes sessions (n_past) while they generate: a read counts the stream as the
    consumer has seen it, without a token run ahead, and takes nothing back (BatchScheduler.
    visible_n_past), so the generation goes on undisturbed and equals the one alone."""
    options = dict(seed=7, max_tokens=60, logit_bias={tiny.eos_id: float("-inf")}, **SAMPLING)
    alone = tiny.session(window=24)
    expected = "".join(alone.stream("hello", **options))
    with sinkstream.BatchScheduler(tiny) as scheduler:
        session = scheduler.session(window=24)
        done = threading.Event()
        seen = []

        def read():
            while not done.is_set():
                seen.append(session.n_past)
        reader = threading.Thread(target=read)
        reader.start()
        try:
            got = "".join(session.stream("hello", **options))
        finally:
            done.set()
            reader.join()
        assert scheduler.stats.run_ahead > 0 and scheduler.stats.taken_back == 0
    assert got == expected and session.n_past == alone.n_past and session._pending == alone._pending
    assert len(seen) > 10 and seen == sorted(seen) and max(seen) <= alone.n_past


def test_saving_between_two_tokens_of_a_generation_changes_nothing(tiny):
    """save() between two pieces (the generator paused) takes back the token run ahead, so the
    blob is the one alone at that point; the generation then goes on with that token's draw kept
    (the sampler has moved past it) and gives the text alone."""
    options = dict(seed=9, max_tokens=30, logit_bias={tiny.eos_id: float("-inf")}, **SAMPLING)

    def run(session):
        pieces = session.stream("hello", **options)
        head = [next(pieces) for _ in range(8)]
        wait_until_run_ahead(session)
        blob = session.save()
        return blob, "".join(head + list(pieces))
    alone = tiny.session(window=24)
    alone_blob, alone_text = run(alone)
    with sinkstream.BatchScheduler(tiny) as scheduler:
        session = scheduler.session(window=24)
        blob, text = run(session)
        assert scheduler.stats.taken_back >= 1
    assert text == alone_text
    restored = tiny.session(window=24)
    restored.load(blob)
    alone_restored = tiny.session(window=24)
    alone_restored.load(alone_blob)
    alone_restored._last_logits = None  # drawn in Python from logits alone, in the step when scheduled
    assert restored.save() == alone_restored.save()


def test_run_ahead_never_passes_an_end_of_generation_token(tiny):
    """An end-of-generation token ends the generation: the scheduler does not queue its eval, so
    nothing is taken back and the token stays pending, as alone."""
    options = dict(max_tokens=60, logit_bias={tiny.eos_id: 4.0}, **SAMPLING)
    def tokens(session, seed):
        return list(stream_tokens(session, "hi", seed=seed, **options))
    seed = next(s for s in range(50) if 4 <= len(tokens(tiny.session(window=40), s)) < 59)  # eos after a few
    alone = tiny.session(window=40)
    expected = tokens(alone, seed)
    with sinkstream.BatchScheduler(tiny) as scheduler:
        session = scheduler.session(window=40)
        assert tokens(session, seed) == expected
        assert session.last_stats.stop_reason == "eos" and session._pending == [tiny.eos_id]
        assert scheduler.stats.run_ahead > 0 and scheduler.stats.taken_back == 0
        assert session.n_past == alone.n_past


def test_undo_last_token_only_takes_back_a_one_token_batched_step(tiny):
    session = tiny.session(window=24)
    with pytest.raises(ValueError, match="undo_last_token"):
        session._core.undo_last_token()  # nothing batched yet
    runner = _core.BatchRunner(tiny._core, 1, 16, 4)
    session.eval(stream_of(5, 30))
    state = session.save()
    runner.step([session._core], [np.array([7], np.int32)], [False])
    session._core.undo_last_token()
    assert session.save() == state
    with pytest.raises(ValueError, match="undo_last_token"):
        session._core.undo_last_token()  # once
    runner.step([session._core], [np.array([7, 8], np.int32)], [False])
    with pytest.raises(ValueError, match="undo_last_token"):
        session._core.undo_last_token()  # two tokens


def generate_in_threads(make_session, prompts, **options):
    results = [None] * len(prompts)
    errors = []

    def work(i):
        try:
            session = make_session()
            results[i] = "".join(session.chat(prompts[i], seed=i, **options))
        except BaseException as e:  # reported by the test, not lost in a thread
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_scheduled_sessions_generate_what_they_generate_alone(tiny):
    prompts = [f"question {i}: " + "tell me more " * (i % 4) for i in range(6)]
    alone = [ "".join(tiny.session(window=40).chat(p, seed=i, max_tokens=24)) for i, p in enumerate(prompts)]
    with sinkstream.BatchScheduler(tiny, max_batch_tokens=64, prefill_chunk=8) as scheduler:
        batched = generate_in_threads(lambda: scheduler.session(window=40), prompts, max_tokens=24)
        assert scheduler.stats.mean_sessions_per_step > 1.5  # they really shared passes
    assert batched == alone


def test_a_long_prompt_is_fed_in_chunks_between_decode_steps(tiny):
    with sinkstream.BatchScheduler(tiny, max_batch_tokens=64, prefill_chunk=8) as scheduler:
        steps = []
        forward = scheduler._forward

        def recording_forward(step):
            steps.append({id(r.session): n for r, n in step})
            return forward(step)
        scheduler._forward = recording_forward
        decoders = [scheduler.session(window=200) for _ in range(2)]
        for d in decoders:
            d.eval(stream_of(1, 4))
        reader = scheduler.session(window=200, batch_size=64)
        stop = threading.Event()

        def decode(session):
            logits = session.eval(stream_of(2, 1))
            while not stop.is_set():
                logits = session.eval([int(np.argmax(logits)) % 256])
        threads = [threading.Thread(target=decode, args=(d,)) for d in decoders]
        for t in threads:
            t.start()
        reader.eval(stream_of(3, 160))  # while both decoders run
        stop.set()
        for t in threads:
            t.join()
    reading = [s for s in steps if id(reader) in s]
    assert sum(s[id(reader)] for s in reading) == 160
    assert all(s[id(reader)] <= 8 for s in reading)
    # Both decoders kept decoding while the prompt was read: most reading steps carry them too.
    with_both = [s for s in reading if all(id(d) in s for d in decoders)]
    assert len(with_both) >= len(reading) // 2


def test_alone_a_prompt_goes_at_the_sessions_batch_size(tiny):
    with sinkstream.BatchScheduler(tiny, max_batch_tokens=64, prefill_chunk=8) as scheduler:
        session = scheduler.session(window=200, batch_size=32)
        expected = tiny.session(window=200).eval(stream_of(4, 100))
        assert np.array_equal(session.eval(stream_of(4, 100)), expected)
        assert scheduler.stats.steps == 4  # 32 + 32 + 32 + 4


def test_errors_and_cancellation_stay_with_their_eval(tiny):
    with sinkstream.BatchScheduler(tiny, max_batch_tokens=64) as scheduler:
        full = scheduler.session(mode="dense", window=10)
        full.eval(stream_of(0, 10))
        healthy = scheduler.session(window=20)
        results = {}

        def overfill():
            try:
                full.eval(stream_of(0, 1))
            except ValueError as e:
                results["full"] = str(e)
        t = threading.Thread(target=overfill)
        t.start()
        logits = healthy.eval(stream_of(1, 5))
        t.join()
        assert "dense mode holds at most 10" in results["full"] and full.n_past == 10
        assert np.array_equal(logits, tiny.session(window=20).eval(stream_of(1, 5)))

        with pytest.raises(ValueError, match="recompute"):
            scheduler.session(mode="recompute")

        # cancel() from another thread stops a long prompt after the step in flight; the session
        # keeps what was fed and goes on.
        slow = scheduler.session(window=200, batch_size=10)
        forward, steps = scheduler._forward, []

        def cancelling_forward(step):  # another thread's cancel() arrives during the third step
            steps.append(step)
            if len(steps) == 3:
                threading.Thread(target=slow.cancel).start()
                time.sleep(0.05)
            return forward(step)
        scheduler._forward = cancelling_forward
        with pytest.raises(sinkstream.Cancelled):
            slow.eval(stream_of(2, 250))
        scheduler._forward = forward
        fed = slow.n_past
        assert fed == 30  # the step in flight finished; no step after it
        rest = slow.eval(stream_of(2, 250)[fed:])
        assert np.array_equal(rest, tiny.session(window=200).eval(stream_of(2, 250)))

        # all-token logits (not a batched step's job) run exclusively, with the same result
        together = scheduler.session(window=20)
        assert np.array_equal(together.eval(stream_of(5, 6), logits="all"),
                              tiny.session(window=20).eval(stream_of(5, 6), logits="all"))


def test_closing_the_model_closes_its_scheduler(tmp_path):
    model = sinkstream.Model(write_tiny_model(tmp_path / "m.gguf", n_ctx=256), n_threads=1)
    scheduler = sinkstream.BatchScheduler(model)
    session = scheduler.session(window=20)
    session.eval(stream_of(0, 3))
    model.close()
    assert scheduler.closed and not scheduler._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        session.eval(stream_of(0, 1))


def test_scheduler_arguments_are_checked(tiny):
    for kwargs, words in [(dict(max_batch_tokens=0), "max_batch_tokens"), (dict(max_sessions=0), "max_sessions"),
                          (dict(prefill_chunk=0), "prefill_chunk"), (dict(gather_ms=-1), "gather_ms"),
                          (dict(n_threads=0), "n_threads")]:
        with pytest.raises(ValueError, match=words):
            sinkstream.BatchScheduler(tiny, **kwargs)
    with pytest.raises(TypeError, match="sinkstream.Model"):
        sinkstream.BatchScheduler("model.gguf")
