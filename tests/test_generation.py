"""The generation loop on a scripted fake session: text pieces, UTF-8, stop strings, EOS,
max_tokens, the lazy last token, early close, BOS, validation, statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest

from generation_fakes import FakeModel, FakeSession
from sinkstream.generation import GenerationStats, generate_text, stream_text, stream_tokens

GREEDY = dict(temperature=0.0)


def run(session, prompt, **opts):
    return list(stream_text(session, prompt, **{**GREEDY, **opts}))


@pytest.fixture
def model():
    return FakeModel()


# ---- the basic loop ------------------------------------------------------------------------------

def test_greedy_stream_follows_the_script_and_stops_at_eos(model):
    s = FakeSession(model)
    s.say("Hello", " world", "<|im_end|>", "Hello")
    pieces = run(s, "Hi")
    assert pieces == ["Hello", " world"]
    prompt = model.tokenize("Hi")
    # The EOS was sampled but not evaluated: it waits in _pending; nothing after it was sampled.
    assert s.fed == prompt + model.ids("Hello", " world")
    assert s._pending == model.ids("<|im_end|>")
    st = s.last_stats
    assert isinstance(st, GenerationStats)
    assert (st.stop_reason, st.prompt_tokens, st.generated_tokens) == ("eos", len(prompt), 3)
    assert st.tokens == model.ids("Hello", " world", "<|im_end|>")
    assert st.prompt_evaluated


def test_every_eval_after_the_prompt_is_one_token(model):
    s = FakeSession(model)
    s.say("Hello", " world", "\n", "<|im_end|>")
    run(s, "Hi")
    assert s.eval_calls == [model.tokenize("Hi"), model.ids("Hello"), model.ids(" world"), model.ids("\n")]


def test_stream_tokens_yields_ids_without_eos(model):
    s = FakeSession(model)
    s.say("Hello", " world", "<|endoftext|>")
    assert list(stream_tokens(s, "Hi", **GREEDY)) == model.ids("Hello", " world")


def test_max_tokens(model):
    s = FakeSession(model)
    s.say("Hello", " world", "\n", "Hello")
    assert run(s, "Hi", max_tokens=2) == ["Hello", " world"]
    assert s.last_stats.stop_reason == "max_tokens"
    assert s.fed == model.tokenize("Hi") + model.ids("Hello")
    assert s._pending == model.ids(" world")


def test_max_tokens_zero_only_evaluates_the_prompt(model):
    s = FakeSession(model)
    assert run(s, "Hi", max_tokens=0) == []
    assert s.fed == model.tokenize("Hi") and not s._pending
    assert s.last_stats.generated_tokens == 0 and s.last_stats.prompt_evaluated


def test_no_limit(model):
    s = FakeSession(model)
    s.say(*["Hello"] * 300, "<|im_end|>")
    assert generate_text(s, "Hi", max_tokens=None, **GREEDY) == "Hello" * 300


def test_generate_text_joins(model):
    s = FakeSession(model)
    s.say("Hello", " world", "<|im_end|>")
    assert generate_text(s, "Hi", **GREEDY) == "Hello world"


def test_token_id_prompt_is_fed_verbatim(model):
    s = FakeSession(model)
    s.say("Hello", "<|im_end|>")
    prompt = model.ids("<bos>", "user", "\n")
    assert run(s, prompt) == ["Hello"]
    assert s.eval_calls[0] == prompt
    s2 = FakeSession(model)
    s2.say("Hello", "<|im_end|>")
    assert run(s2, np.array(prompt, dtype=np.int32)) == ["Hello"]
    assert s2.eval_calls[0] == prompt


# ---- UTF-8 ---------------------------------------------------------------------------------------

def test_emoji_split_into_four_byte_tokens_is_one_piece(model):
    s = FakeSession(model)
    s.say("Hello", b"\xf0", b"\x9f", b"\x98", b"\x80", "!", "<|im_end|>")
    seen = []
    for piece in stream_text(s, "Hi", **GREEDY):
        seen.append((piece, s.n_past))
    # The emoji appears only once its 4th byte was sampled (the 4th byte is the pending token then).
    prompt_len = len(model.tokenize("Hi"))
    assert seen == [("Hello", prompt_len), ("\U0001F600", prompt_len + 4), ("!", prompt_len + 5)]


def test_two_byte_char_split(model):
    s = FakeSession(model)
    s.say(b"\xc3", b"\xa9", "é", "<|im_end|>")
    assert run(s, "Hi") == ["é", "é"]


def test_invalid_bytes_become_replacement_characters(model):
    s = FakeSession(model)
    s.say(b"\xff", "Hello", b"\xc3", "!", "<|im_end|>")
    assert "".join(run(s, "Hi")) == "\ufffdHello\ufffd!"


def test_incomplete_sequence_at_the_end_is_flushed_as_replacement(model):
    s = FakeSession(model)
    s.say("Hello", b"\xf0", b"\x9f", "<|im_end|>")
    assert "".join(run(s, "Hi")) == "Hello\ufffd"
    s2 = FakeSession(model)
    s2.say("Hello", b"\xf0", b"\x9f")
    assert "".join(run(s2, "Hi", max_tokens=3)) == "Hello\ufffd"


# ---- stop strings --------------------------------------------------------------------------------

def stream_with_positions(s, prompt, **opts):
    return [(piece, s.n_past) for piece in stream_text(s, prompt, **{**GREEDY, **opts})]


@pytest.mark.parametrize("tokens, stop, expected", [
    (["Hello", "ST", "OP", " world"], ["STOP"], "Hello"),
    (["Hello", "S", "T", "O", "P", " world"], ["STOP"], "Hello"),
    (["aSTOPb", " world"], ["STOP"], "a"),
    (["STOP", "Hello"], ["STOP"], ""),
    (["Hello", " world", "\n"], ["world"], "Hello "),
    (["Hello", " world"], ["xyz", "lo w"], "Hel"),
    (["Hello", " world"], ["o wor", "llo"], "He"),  # the earliest occurrence wins
    (["Hello", b"\xf0", b"\x9f", b"\x98", b"\x80", " world"], ["\U0001F600"], "Hello"),
    (["Hello", "ST", " world", "<|im_end|>"], ["STOP"], "HelloST world"),  # a prefix that never completes
    (["Hello", "S", "<|im_end|>"], ["STOP"], "HelloS"),  # held text is released at EOS
])
def test_stop_strings(model, tokens, stop, expected):
    s = FakeSession(model)
    s.say(*tokens)
    assert "".join(run(s, "Hi", stop=stop, max_tokens=len(tokens))) == expected


def test_stop_string_hold_back_is_minimal_and_released_promptly(model):
    s = FakeSession(model)
    s.say("Hello", "S", "x", "ST", "ST", "OP", "Hello")
    got = stream_with_positions(s, "Hi", stop="STOP")
    p = len(model.tokenize("Hi"))
    # "S" is held until "x" shows it cannot start STOP; then "ST" is held, released when the next
    # "ST" arrives (the older one can no longer start STOP), and the last "ST" + "OP" is the stop.
    assert got == [("Hello", p), ("Sx", p + 2), ("ST", p + 4)]
    assert s.last_stats.stop_reason == "stop"
    # The stop tokens are in the stream: the last one pending.
    assert s.fed == model.tokenize("Hi") + model.ids("Hello", "S", "x", "ST", "ST")
    assert s._pending == model.ids("OP")


def test_single_string_stop_and_no_stop(model):
    s = FakeSession(model)
    s.say("Hello", " world", "<|im_end|>")
    assert run(s, "Hi", stop="world") == ["Hello", " "]
    s = FakeSession(model)
    s.say("Hello", " world", "<|im_end|>")
    assert run(s, "Hi", stop=None) == ["Hello", " world"]


# ---- early close and the pending token -----------------------------------------------------------

def test_early_close_leaves_the_last_token_pending_and_the_next_call_flushes_it(model):
    s = FakeSession(model)
    s.say("Hello", " world", "\n", "Hello")
    gen = stream_text(s, "Hi", **GREEDY)
    assert next(gen) == "Hello"
    assert next(gen) == " world"
    gen.close()
    prompt = model.tokenize("Hi")
    assert s.fed == prompt + model.ids("Hello")
    assert s._pending == model.ids(" world")
    assert s.last_stats.stop_reason == "closed"
    assert s.last_stats.generated_tokens == 2
    # The next call evaluates the pending token together with its prompt, in one eval.
    s.script = model.ids("Hello", "<|im_end|>")
    assert run(s, " is") == ["Hello"]
    assert s.eval_calls[-2] == model.ids(" world") + model.tokenize(" is", add_bos=False)
    assert s.fed == prompt + model.ids("Hello", " world") + model.tokenize(" is", add_bos=False) + model.ids("Hello")
    assert s._pending == model.ids("<|im_end|>")


def test_break_in_a_for_loop_is_the_same_as_close(model):
    s = FakeSession(model)
    s.say("Hello", " world", "\n")
    gen = stream_text(s, "Hi", **GREEDY)
    for piece in gen:
        break
    del gen
    assert s._pending == model.ids("Hello") and s.fed == model.tokenize("Hi")


def test_empty_prompt_continues_from_the_pending_token(model):
    s = FakeSession(model)
    s.say("Hello", " world", "\n", "<|im_end|>")
    assert run(s, "Hi", max_tokens=1) == ["Hello"]
    assert run(s, "", max_tokens=1) == [" world"]
    assert run(s, []) == ["\n"]
    assert s.eval_calls[1:3] == [model.ids("Hello"), model.ids(" world")]


def test_empty_prompt_after_prompt_only_call_uses_the_fresh_logits(model):
    s = FakeSession(model)
    s.say("Hello", "<|im_end|>")
    assert run(s, "Hi", max_tokens=0) == []
    assert run(s, "") == ["Hello"]


def test_eval_error_keeps_the_token_pending(model):
    s = FakeSession(model)
    s.say("Hello", " world", "\n")
    s.fail_on_eval = 2  # the eval of " world" (calls: prompt, "Hello", " world")
    gen = stream_text(s, "Hi", **GREEDY)
    with pytest.raises(RuntimeError, match="eval failed"):
        list(gen)
    assert s.fed == model.tokenize("Hi") + model.ids("Hello")
    assert s._pending == model.ids(" world")
    assert s.last_stats.stop_reason == "error"


def test_keyboard_interrupt_is_recorded(model):
    s = FakeSession(model)
    s.say("Hello", " world", "\n")
    s.fail_on_eval = 1
    s.fail_with = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        list(stream_text(s, "Hi", **GREEDY))
    assert s.last_stats.stop_reason == "interrupted"
    assert s._pending == model.ids("Hello")


def test_interrupt_after_the_eval_reached_the_session_does_not_duplicate(model):
    """A KeyboardInterrupt raised after the tokens were fed (n_past moved) clears them from pending."""

    class InterruptAfterFeeding(FakeSession):
        def eval(self, tokens, logits="last"):
            out = super().eval(tokens, logits)
            if len(self.eval_calls) == 2:  # the eval of the first sampled token
                raise KeyboardInterrupt
            return out

    s = InterruptAfterFeeding(model)
    s.say("Hello", " world", "\n")
    with pytest.raises(KeyboardInterrupt):
        list(stream_text(s, "Hi", **GREEDY))
    assert s.fed == model.tokenize("Hi") + model.ids("Hello")
    assert s._pending == []


def test_validation_happens_at_call_time_and_nothing_is_fed(model):
    s = FakeSession(model)
    with pytest.raises(ValueError, match="temperature"):
        stream_text(s, "Hi", temperature=-1)
    assert s.fed == [] and not getattr(s, "_pending", None)


# ---- BOS -----------------------------------------------------------------------------------------

def test_bos_only_at_the_start_of_the_stream():
    model = FakeModel(add_bos_default=True)
    bos = model.id("<bos>")
    s = FakeSession(model)
    s.say("Hello", "<|im_end|>", "Hello", "<|im_end|>")
    run(s, "Hi")
    assert s.eval_calls[0][0] == bos
    run(s, "Hi")
    assert bos not in s.eval_calls[-2]  # second prompt (with the pending EOS first): no BOS
    with pytest.raises(ValueError, match="add_bos=True.*already holds"):
        run(s, "Hi", add_bos=True)


def test_add_bos_false_and_true_at_the_start():
    model = FakeModel(add_bos_default=True)
    s = FakeSession(model)
    s.say("Hello", "<|im_end|>")
    run(s, "Hi", add_bos=False)
    assert s.eval_calls[0] == model.tokenize("Hi", add_bos=False)
    model2 = FakeModel(add_bos_default=False)
    s2 = FakeSession(model2)
    s2.say("Hello", "<|im_end|>")
    run(s2, "Hi", add_bos=True)
    assert s2.eval_calls[0][0] == model2.id("<bos>")


def test_special_is_passed_to_the_tokenizer(model):
    s = FakeSession(model)
    s.say("<|im_end|>")
    run(s, "<|im_start|>user", special=False)
    assert model.id("<|im_start|>") not in s.eval_calls[0]
    s2 = FakeSession(model)
    s2.say("<|im_end|>")
    run(s2, "<|im_start|>user")
    assert s2.eval_calls[0] == model.ids("<|im_start|>", "user")


# ---- sampling options reach the sampler ----------------------------------------------------------

def test_seed_makes_sampling_reproducible(model):
    def sample(seed):
        s = FakeSession(model)
        s.flat = True
        return list(stream_tokens(s, "Hi", temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed, max_tokens=30))
    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_huge_top_k_and_window_mean_all(model):
    s = FakeSession(model)
    s.say("Hello", "<|im_end|>")
    assert run(s, "Hi", top_k=10**12, repeat_last_n=10**12, repeat_penalty=1.1, temperature=0.5) == ["Hello"]


def test_logit_bias_reaches_the_sampler(model):
    s = FakeSession(model)
    s.say("Hello", "<|im_end|>")
    assert run(s, "Hi", logit_bias={model.id("Hello"): -math.inf, model.id("é"): 40.0}, max_tokens=1) == ["é"]


def test_prompt_tokens_count_for_the_repeat_penalty(model):
    # The script's token has logit 30; "é" has 0 but a bias of 20. A repeat penalty of 2 on the
    # script token (seen in the prompt) brings it to 15 < 20.
    s = FakeSession(model)
    s.say("Hello", "<|im_end|>")
    opts = dict(logit_bias={model.id("é"): 20.0}, max_tokens=1)
    assert run(s, "Hello", repeat_penalty=2.0, **opts) == ["é"]
    s2 = FakeSession(model)
    s2.say("Hello", "<|im_end|>")
    assert run(s2, "Hello", repeat_penalty=2.0, repeat_last_n=0, **opts) == ["Hello"]


# ---- statistics ----------------------------------------------------------------------------------

def test_stats(model):
    s = FakeSession(model)
    s.say("Hello", " world", "<|im_end|>")
    run(s, "Hi there")
    st = s.last_stats
    assert st.prompt_tokens == len(model.tokenize("Hi there"))
    assert st.generated_tokens == 3
    assert st.prefill_seconds > 0 and st.decode_seconds > 0
    assert st.prefill_tokens_per_second == pytest.approx(st.prompt_tokens / st.prefill_seconds)
    assert st.decode_tokens_per_second == pytest.approx(3 / st.decode_seconds)
    assert "tok/s" in st.summary() and "eos" in st.summary()
    assert GenerationStats().decode_tokens_per_second == 0.0


# ---- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("opts, error, words", [
    (dict(max_tokens=-1), ValueError, ["max_tokens", "-1"]),
    (dict(max_tokens=2.5), TypeError, ["max_tokens", "2.5"]),
    (dict(max_tokens=True), TypeError, ["max_tokens"]),
    (dict(temperature=-0.5), ValueError, ["temperature", "-0.5"]),
    (dict(temperature=math.nan), ValueError, ["temperature", "nan"]),
    (dict(temperature="hot"), TypeError, ["temperature", "hot"]),
    (dict(top_k=-1), ValueError, ["top_k", "-1"]),
    (dict(top_k=1.5), TypeError, ["top_k", "1.5"]),
    (dict(top_p=0.0), ValueError, ["top_p", "0.0"]),
    (dict(top_p=1.01), ValueError, ["top_p", "1.01"]),
    (dict(min_p=-0.1), ValueError, ["min_p", "-0.1"]),
    (dict(min_p=2), ValueError, ["min_p", "2"]),
    (dict(repeat_penalty=0), ValueError, ["repeat_penalty", "0"]),
    (dict(repeat_last_n=-2), ValueError, ["repeat_last_n", "-2"]),
    (dict(frequency_penalty=math.inf), ValueError, ["frequency_penalty", "inf"]),
    (dict(presence_penalty=None), TypeError, ["presence_penalty", "None"]),
    (dict(logit_bias={10**6: 1.0}), ValueError, ["logit_bias", "1000000"]),
    (dict(logit_bias={"a": 1.0}), TypeError, ["logit_bias", "'a'"]),
    (dict(logit_bias={1: math.nan}), ValueError, ["logit_bias[1]", "nan"]),
    (dict(logit_bias={1: math.inf}), ValueError, ["logit_bias[1]", "inf"]),
    (dict(logit_bias=[1, 2]), TypeError, ["logit_bias"]),
    (dict(seed=-1), ValueError, ["seed", "-1"]),
    (dict(seed=2**64), ValueError, ["seed"]),
    (dict(seed="x"), TypeError, ["seed", "'x'"]),
    (dict(stop=[""]), ValueError, ["stop"]),
    (dict(stop=[1]), TypeError, ["stop", "1"]),
    (dict(stop=5), TypeError, ["stop", "5"]),
    (dict(add_bos="yes"), TypeError, ["add_bos", "yes"]),
    (dict(special=None), TypeError, ["special", "None"]),
])
def test_bad_options(model, opts, error, words):
    s = FakeSession(model)
    with pytest.raises(error) as info:
        stream_text(s, "Hi", **opts)
    for word in words:
        assert word in str(info.value), f"{info.value!r} does not mention {word!r}"
    assert s.fed == []


@pytest.mark.parametrize("prompt, error, words", [
    ("", ValueError, ["empty"]),
    ([], ValueError, ["empty"]),
    (b"Hi", TypeError, ["bytes"]),
    (42, TypeError, ["prompt", "int"]),
    ([1, -1], ValueError, ["prompt[1]", "-1"]),
    ([1, 10**6], ValueError, ["prompt[1]", "1000000"]),
    ([1, "a"], TypeError, ["prompt[1]", "'a'"]),
    (np.zeros((2, 2), dtype=np.int32), TypeError, ["prompt"]),
    (np.zeros(3, dtype=np.float32), TypeError, ["prompt"]),
])
def test_bad_prompts(model, prompt, error, words):
    with pytest.raises(error) as info:
        stream_text(FakeSession(model), prompt)
    for word in words:
        assert word in str(info.value)


def test_add_bos_true_with_token_ids_is_an_error(model):
    with pytest.raises(ValueError, match="add_bos=True applies to text prompts"):
        stream_text(FakeSession(model), [1, 2], add_bos=True)


def test_empty_prompt_without_anything_to_continue_from(model):
    s = FakeSession(model)
    s.fed = [5, 6]  # tokens fed by someone else: there are no logits to continue from
    with pytest.raises(ValueError, match="empty"):
        run(s, "")
