"""The whole system prompt as attention sinks (Model.chat_session; llama.cpp users know it as n_keep).

A streaming session keeps its first n_sink tokens forever. Making n_sink the token length of the
conversation's opening (the rendered system prompt, up to where the first user message's text
starts) keeps the instructions in view however long the conversation runs, at the same constant
memory: the window behind them rolls as usual.
"""
from __future__ import annotations

from typing import Any

__all__ = ["system_prompt_tokens", "system_prompt_sinks", "chat_session"]

MIN_SINKS = 4  # never fewer sinks than a streaming session's default


def _first_turn_tokens(model: Any, messages: list[dict[str, str]]) -> list[int]:
    """The tokens chat() feeds for a conversation's first turn (the same BOS rule as chat_turn)."""
    from .chat_template import render_for_model

    rendered = render_for_model(model, messages, add_generation_prompt=True)
    bos = getattr(model, "bos_token", "") or ""
    return model.tokenize(rendered, add_bos=False if bos and rendered.startswith(bos) else None)


def system_prompt_tokens(model: Any, system_prompt: str) -> int:
    """How many tokens open every conversation that starts with this system prompt: the common
    token prefix of two first turns that differ only in the user's text."""
    if not isinstance(system_prompt, str) or not system_prompt:
        raise ValueError(f"system_prompt must be a non-empty str, got {system_prompt!r}")
    system = {"role": "system", "content": system_prompt}
    a = _first_turn_tokens(model, [system, {"role": "user", "content": "a"}])
    b = _first_turn_tokens(model, [system, {"role": "user", "content": "b"}])
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def system_prompt_sinks(model: Any, system_prompt: str) -> int:
    """n_sink that keeps the whole system prompt: its token count, at least MIN_SINKS."""
    return max(system_prompt_tokens(model, system_prompt), MIN_SINKS)


def chat_session(model: Any, system_prompt: str, *, keep_system_prompt: bool = True, **options: Any) -> Any:
    """A streaming session for a conversation that opens with system_prompt (see Model.chat_session)."""
    for name in ("mode", "n_sink"):
        if name in options:
            raise TypeError(f"chat_session() picks {name} itself (streaming, n_sink = the system prompt's "
                            f"length with keep_system_prompt=True); pass window and the other session options")
    if not isinstance(system_prompt, str) or not system_prompt:
        raise ValueError(f"system_prompt must be a non-empty str, got {system_prompt!r}")
    n_sink = system_prompt_sinks(model, system_prompt) if keep_system_prompt else None
    session = model.session("streaming", n_sink, **options)
    session._chat_history = [{"role": "system", "content": system_prompt}]
    return session
