"""A chat template comes from the model file: rendering it is bounded in output size, time and
call depth, and every failure is a ChatTemplateError naming the cause (issue 17, item 4). Real
templates render exactly as an unlimited sandbox renders them, and fast."""
from __future__ import annotations

import json
import resource
import time

import pytest

from generation_fakes import FakeModel, FakeSession
from chat_templates_real import LLAMA31_TOOLS, QWEN25_TOOLS, RECURSIVE_SCHEMA
from sinkstream.chat_template import (CHATML_TEMPLATE, GEMMA_TEMPLATE, ChatTemplateError, TemplateLimits,
                                      _tojson, chat_turn, render_chat)

MESSAGES = [{"role": "user", "content": "hi"}]
FAST = TemplateLimits(seconds=1.0)

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather at a place.\nIn Celsius.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "array", "items": {"type": "integer"}},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}}}}}}]


def _conversation(turns: int) -> list[dict]:
    out = [{"role": "system", "content": "You are terse. Ünïcödé ✓"}]
    for i in range(turns):
        out.append({"role": "user", "content": f"question {i}: what is {i} + {i}?"})
        if i % 3 == 1:
            out.append({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                "name": "get_weather", "arguments": {"city": "Paris", "days": [i]}}}]})
            out.append({"role": "tool", "content": json.dumps({"temp": i})})
        out.append({"role": "assistant", "content": f"  {2 * i}  "})
    return out


def _unlimited(template: str, messages, **variables) -> str:
    # The renderer before limits: the plain immutable sandbox with transformers' settings.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(ValueError(m))
    return env.from_string(template).render(messages=messages, **variables)


REAL = {"chatml": CHATML_TEMPLATE, "gemma": GEMMA_TEMPLATE, "qwen2.5 tools": QWEN25_TOOLS,
        "llama3.1 tools": LLAMA31_TOOLS, "recursive schema": RECURSIVE_SCHEMA}


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_real_templates_render_identically(name, tools):
    messages = _conversation(12)
    if name in ("chatml", "gemma"):
        messages = [m for m in messages if "tool_calls" not in m and m["role"] != "tool"]
    variables = dict(add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    if tools is not None or name == "recursive schema":
        variables["tools"] = TOOLS
    expected = _unlimited(REAL[name], messages, **variables)
    assert render_chat(REAL[name], messages, **variables) == expected
    assert len(expected) > 200


@pytest.mark.parametrize("name", ["chatml", "qwen2.5 tools", "llama3.1 tools"])
def test_long_conversations_render_fast(name):
    # A long streaming chat renders its whole history every turn: 3,000 turns (~300 KB of text,
    # several MB with long replies) must stay well inside the limits and quick.
    messages = _conversation(3000)
    if name == "chatml":
        messages = [m for m in messages if "tool_calls" not in m and m["role"] != "tool"]
    messages.append({"role": "user", "content": "x" * 3_000_000})  # larger than max_chars by itself
    render_chat(QWEN25_TOOLS, MESSAGES, tools=TOOLS)  # compiled and warm
    start = time.perf_counter()
    text = render_chat(REAL[name], messages, tools=TOOLS)
    limited = time.perf_counter() - start
    start = time.perf_counter()
    assert text == _unlimited(REAL[name], messages, tools=TOOLS, add_generation_prompt=True, bos_token="",
                              eos_token="")
    unlimited = time.perf_counter() - start  # includes compiling
    assert limited < max(1.0, 5 * unlimited), (limited, unlimited)


# Each: (template, words the ChatTemplateError must contain). Without limits these allocate GBs,
# hang, or escape as other exceptions.
HOSTILE = {
    "repeat 10 GB": ("{{ 'a' * 10**10 }}", "`*` repetition would have about 10,000,000,000 characters"),
    "repeat beyond ssize_t": ("{{ 'a' * 10**20 }}", "`*` repetition"),  # was OverflowError
    "huge power": ("{{ 7 ** 1000000000 }}", "a power would be an integer of about"),
    "nested loops with output": ("{% for a in range(100000) %}{% for b in range(100000) %}xy{% endfor %}{% endfor %}",
                                 "the rendered text would have about"),
    "50 MB of output": ("{% for i in range(100000) %}{{ 'a' * 500 }}{% endfor %}", "the rendered text"),
    "doubling ~": ("{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                   "{% endfor %}", "`~` concatenation"),
    "doubling +": ("{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                   "{% endfor %}", "`+` concatenation"),
    "doubling list": ("{% set ns = namespace(s=[0]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}", "`+` concatenation"),
    "doubling block set": ("{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set t %}{{ ns.s }}{{ ns.s }}"
                           "{% endset %}{% set ns.s = t %}{% endfor %}", "more than the limit"),
    "recursive macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nest deeper than the limit of"),
    "recursive loop": ("{% for m in [1] recursive %}{{ loop([1]) }}{% endfor %}", "nest deeper than the limit of"),
    "center": ("{{ 'a' | center(10**10) }}", "an argument of the filter 'center' is 10,000,000,000"),
    "ljust": ("{{ 'a'.ljust(10**10) }}", "a call argument is 10,000,000,000"),
    "format width": ("{{ '{:>9999999999}'.format(1) }}", "format(): a width or precision is 9,999,999,999"),
    "percent width": ("{{ '%0999999999d' % 1 }}", "%-formatting: a width or precision is 999,999,999"),
    "join of shared strings": ("{% set x = 'a' * 1000000 %}{{ ([x] * 1000) | join }}", "the filter 'join'"),
    "str.join of shared strings": ("{% set x = 'a' * 1000000 %}{{ ''.join([x] * 1000) }}", "str.join()"),
    "printed nested list": ("{% set x = 'a' * 100000 %}{{ [[x] * 100] * 100 }}", "the value of an expression"),
    "tojson of shared strings": ("{% set x = 'a' * 100000 %}{{ ([[x] * 100] * 100) | tojson }}",
                                 "the filter 'tojson'"),
    "replace ''": ("{% set x = 'a' * 100000 %}{{ x.replace('', x) }}", "str.replace()"),
    "replace filter": ("{% set x = 'a' * 100000 %}{{ x | replace('a', x) }}", "the filter 'replace'"),
    "indent": ("{% set x = 'a\n' * 500000 %}{{ x | indent(1000) }}", "the filter 'indent'"),
    "empty loops": ("{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}",
                    "ran longer than the time limit of 1 s"),
    "large items made on the fly, joined": ("{{ range(1000) | map('center', 1000000) | join }}",
                                            "the items the filter 'join' takes"),
    "large items made on the fly, listed": ("{{ range(1000) | map('center', 1000000) | list | length }}",
                                            "the items the filter 'list' takes"),
    "namespace holding itself": ("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", "more than the limit"),
    "TypeError": ("{{ 'a' + 1 }}", "TypeError: can only concatenate str"),
    "ZeroDivisionError": ("{{ 1 / 0 }}", "ZeroDivisionError"),
    "deep nesting": ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nests too deeply"),  # was RecursionError
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_templates_fail_with_a_named_cause(name):
    template, words = HOSTILE[name]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError) as info:
        render_chat(template, MESSAGES, limits=FAST)
    assert words in str(info.value), str(info.value)
    assert time.perf_counter() - start < 4.0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # Linux: KiB
    assert grown_mib < 200, f"{name}: peak memory grew by {grown_mib:.0f} MiB"


def test_limits_are_configurable_and_scale_with_the_input():
    template = "{{ messages[0].content * 3 }}"
    big = [{"role": "user", "content": "x" * 1_000_000}]
    assert len(render_chat(template, big)) == 3_000_000  # 1 MiB + 4 x the input allows it
    with pytest.raises(ChatTemplateError, match="`\\*` repetition"):
        render_chat(template, big, limits=TemplateLimits(max_chars=0, chars_per_input_char=2))
    with pytest.raises(ChatTemplateError, match="nest deeper than the limit of 3"):
        render_chat("{% macro f(n) %}{{ f(n + 1) if n < 5 }}{% endmacro %}{{ f(0) }}", MESSAGES,
                    limits=TemplateLimits(max_depth=3))
    with pytest.raises(TypeError, match="limits"):
        render_chat(None, MESSAGES, limits={"seconds": 1})


def test_a_timeout_leaves_no_pending_interrupt():
    with pytest.raises(ChatTemplateError, match="time limit"):
        render_chat("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", MESSAGES,
                    limits=TemplateLimits(seconds=0.2))
    # Renders that end around their deadline (either way) leave no interrupt to hit later code.
    for _ in range(200):
        try:
            render_chat(None, MESSAGES, limits=TemplateLimits(seconds=0.0002))
        except ChatTemplateError as e:
            assert "time limit" in str(e)
    for _ in range(1000):
        time.sleep(0.0001)  # a pending interrupt would be raised here
    assert render_chat(None, MESSAGES) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("value", [42, b"{{ messages }}", ["{{ messages }}"], {"default": "x"}])
def test_a_template_that_is_not_a_string(value):
    with pytest.raises(ChatTemplateError, match=f"must be a str, got {type(value).__name__}"):
        render_chat(value, MESSAGES)


@pytest.mark.parametrize("value", [42, ["{{ messages }}"]])
def test_a_model_whose_chat_template_metadata_is_not_a_string(value):
    session = FakeSession(FakeModel(chat_template=value))
    with pytest.raises(ChatTemplateError, match=f"tokenizer.chat_template must be a string, got {type(value).__name__}"):
        chat_turn(session, "hi")
    assert session.n_past == 0


def test_a_real_model_with_a_non_string_template_fails_clearly(tmp_path):
    import sinkstream
    from tiny_models import write_tiny_model

    model = sinkstream.Model(write_tiny_model(tmp_path / "m.gguf"), n_threads=1)
    model._metadata = dict(model.metadata, **{"tokenizer.chat_template": 42})  # as a GGUF may hold it
    session = model.session(mode="streaming", n_sink=2, window=60)
    with pytest.raises(ChatTemplateError, match="the model's tokenizer.chat_template must be a string, got int 42"):
        session.chat("hi", max_tokens=2)  # used to be a jinja TypeError
    assert session.n_past == 0


def test_cyclic_variables_do_not_break_the_input_measure():
    ns_like = {"a": []}
    ns_like["a"].append(ns_like)  # a cycle in a variable passed to the template
    assert render_chat("{{ messages[0].content }}{{ extra.a | length }}", MESSAGES, extra=ns_like) == "hi1"
