"""Text generation on a session: prompt evaluation, the sampling loop, UTF-8 safe text, stop strings.

Works with any session object that has ``model``, ``n_past`` and ``eval(tokens, logits="last")``
(sinkstream.Session, or a test double); the model needs ``tokenize``, ``token_bytes``,
``is_end_of_generation`` and ``n_vocab`` (and ``n_tokenizer_vocab`` when the logits have padding
entries past the tokenizer's tokens: those ids are never sampled).

The session's stream and lazy evaluation
----------------------------------------
Every sampled token becomes part of the session's stream, end-of-generation tokens included. A
token is evaluated only when the next one is needed, so when generation stops (max_tokens, an
end-of-generation token, a stop string, an exception, or the consumer closing the generator) the
last sampled token has been sampled but not evaluated. It is kept in ``session._pending`` (a list
of token ids) and the next call on that session evaluates it first, in the same batch as the new
prompt. So at any moment:

    session stream = every token evaluated so far (prompt tokens + sampled tokens but the last)
    session._pending = the sampled tokens not evaluated yet (at most one)

and "stream + pending" is exactly what the session has been given and has produced. Nothing is
ever evaluated twice or lost. Statistics of the last run are left in ``session.last_stats``
(a GenerationStats), also for runs that were closed early or failed.
"""
from __future__ import annotations

import codecs
import dataclasses
import enum
import math
import numbers
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "GenerationStats",
    "SamplingParams",
    "DEFAULT",
    "resolve_sampling_params",
    "SAMPLING_DEFAULTS",
    "stream_tokens",
    "stream_text",
    "generate_text",
    "make_sampler",
    "validate_sampling_options",
    "reset_generation_state",
]

@dataclass
class GenerationStats:
    """What one generation call did and how fast (``session.last_stats`` after the stream ends)."""

    prompt_tokens: int = 0        # tokens evaluated before the first sample (pending + prompt)
    generated_tokens: int = 0     # tokens sampled, an end-of-generation token included
    prefill_seconds: float = 0.0  # time in the prompt evaluation
    decode_seconds: float = 0.0   # time sampling every token and evaluating all but the last
                                  # (time spent by the consumer between pieces is not counted)
    stop_reason: str | None = None  # "eos" | "stop" | "max_tokens" | "closed" | "interrupted" | "error"
    prompt_evaluated: bool = False  # the whole prompt (and pending tokens) reached the session
    tokens: list[int] = field(default_factory=list)  # the sampled token ids, in order

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"prompt: {self.prompt_tokens} tokens in {self.prefill_seconds:.3f} s "
                f"({self.prefill_tokens_per_second:.1f} tok/s) | generation: {self.generated_tokens} tokens in "
                f"{self.decode_seconds:.3f} s ({self.decode_tokens_per_second:.1f} tok/s), "
                f"stop: {self.stop_reason}")


# ---- validation ----------------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_option(name: str, value: Any, *, minimum: int | None = None) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _float_option(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
                  low_open: bool = False, high_open: bool = False, what: str = "") -> float:
    if not _is_real(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    x = float(value)
    ok = math.isfinite(x) and (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if not ok:
        raise ValueError(f"{name} must be {what or 'finite'}, got {value!r}")
    return x


# Defaults of every sampling/generation option: SamplingParams below is their one definition.
class _Default(enum.Enum):
    """The type of DEFAULT: "not given here" (the value comes from the SamplingParams in effect)."""

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


#: Marks a keyword argument of stream/generate/chat as not given: the value comes from ``params``
#: (or from SamplingParams' defaults when there is none).
DEFAULT = _Default.DEFAULT


def _check_logit_bias_items(logit_bias: Any, n_vocab: int | None) -> dict[int, float]:
    bias: dict[int, float] = {}
    if logit_bias is None:
        return bias
    if not hasattr(logit_bias, "items"):
        raise TypeError(f"logit_bias must be a dict {{token_id: bias}}, got {logit_bias!r}")
    for token, value in logit_bias.items():
        if not _is_int(token):
            raise TypeError(f"logit_bias keys must be token ids (int), got {token!r}")
        if token < 0 or (n_vocab is not None and token >= n_vocab):
            raise ValueError(f"logit_bias token id {token} is outside the vocabulary "
                             f"[0, {n_vocab if n_vocab is not None else 'n_vocab'})")
        if not _is_real(value) or math.isnan(value) or value == math.inf:
            raise ValueError(f"logit_bias[{token}] must be a number or -inf, got {value!r}")
        bias[int(token)] = float(value)
    return bias


@dataclass(frozen=True)
class SamplingParams:
    """Every sampling and generation option, with its one default. Immutable; checked on creation
    (a bad value raises ValueError, a wrong type TypeError, both naming the option).

    ``model.stream(prompt, params)``, ``session.generate(prompt, params)``, ``session.chat(...,
    params)``; keyword arguments of those calls override single fields (``model.stream(prompt,
    params, seed=2)``). ``params.replace(top_k=0)`` is a copy with fields changed.

    max_tokens: the most tokens to sample (None: no limit; an end-of-generation token also stops).
    temperature: 0 = greedy. top_k: 0 = off. top_p: in (0, 1], 1 = off. min_p: in [0, 1], 0 = off.
    repeat_penalty: > 0, 1 = off; over the last ``repeat_last_n`` tokens (prompt included), as do
    frequency_penalty and presence_penalty (0 = off). logit_bias: {token_id: bias} added to the
    logits (-inf bans a token; ids are checked against the model's vocabulary when used).
    seed: None = a fresh random seed per call. stop: strings that end generation (never yielded;
    a str is one stop string).
    """

    max_tokens: int | None = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1  # small models loop without it (1.0: off, as llama.cpp's default)
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] | None = None
    seed: int | None = None
    stop: str | Sequence[str] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.max_tokens is not None:
            set_(self, "max_tokens", _int_option("max_tokens", self.max_tokens, minimum=0))
        set_(self, "temperature", _float_option("temperature", self.temperature, low=0.0, what=">= 0 (0 = greedy)"))
        set_(self, "top_k", _int_option("top_k", self.top_k, minimum=0))
        set_(self, "top_p", _float_option("top_p", self.top_p, low=0.0, high=1.0, low_open=True,
                                          what="in (0, 1] (1 = off)"))
        set_(self, "min_p", _float_option("min_p", self.min_p, low=0.0, high=1.0, what="in [0, 1] (0 = off)"))
        set_(self, "repeat_penalty", _float_option("repeat_penalty", self.repeat_penalty, low=0.0, low_open=True,
                                                   what="> 0 (1 = off)"))
        set_(self, "repeat_last_n", _int_option("repeat_last_n", self.repeat_last_n, minimum=0))
        set_(self, "frequency_penalty", _float_option("frequency_penalty", self.frequency_penalty))
        set_(self, "presence_penalty", _float_option("presence_penalty", self.presence_penalty))
        bias = _check_logit_bias_items(self.logit_bias, None)
        set_(self, "logit_bias", types.MappingProxyType(bias) if bias else None)
        if self.seed is not None:
            if not _is_int(self.seed):
                raise TypeError(f"seed must be an int or None, got {self.seed!r}")
            if not 0 <= self.seed < 2**64:
                raise ValueError(f"seed must be in [0, 2**64), got {self.seed!r}")
            set_(self, "seed", int(self.seed))
        set_(self, "stop", _validate_stop(self.stop))

    def replace(self, **changes: Any) -> "SamplingParams":
        """A copy with the given fields changed (checked like the constructor)."""
        return _with_overrides(self, changes)

    def sampler_options(self) -> dict[str, Any]:
        """The fields as keyword arguments of validate_sampling_options / make_sampler (no stop)."""
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v)
                for f in dataclasses.fields(self) if f.name != "stop"}


_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))

# The defaults as a dict (the CLI reads them from here); derived from SamplingParams.
SAMPLING_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(SamplingParams)
                                     if f.name != "stop"}


def _with_overrides(params: SamplingParams | None, changes: Mapping[str, Any]) -> SamplingParams:
    """params (None: the defaults) with the options in changes that are not DEFAULT; an unknown
    option raises TypeError naming it (and the known ones)."""
    if params is not None and not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a sinkstream.SamplingParams or None, got {type(params).__name__}"
                        + (" (pass options by keyword, or as SamplingParams(**options))"
                           if isinstance(params, Mapping) else ""))
    unknown = [k for k in changes if k not in _FIELDS]
    if unknown:
        raise TypeError(f"unknown sampling option {unknown[0]!r}; the options are: {', '.join(_FIELDS)}")
    given = {k: v for k, v in changes.items() if v is not DEFAULT}
    if params is None:
        return SamplingParams(**given)
    return dataclasses.replace(params, **given) if given else params


def resolve_sampling_params(params: SamplingParams | None = None, **options: Any) -> SamplingParams:
    """The SamplingParams in effect for a call: ``params`` (None: defaults) overridden by the
    keyword options that are given (not DEFAULT). Unknown options raise TypeError."""
    return _with_overrides(params, options)


def validate_sampling_options(n_vocab: int, **options: Any) -> dict[str, Any]:
    """Checks types and ranges of sampling options (those of SamplingParams but stop; missing ones
    take its defaults) and logit_bias ids against n_vocab; returns them normalized
    (ValueError/TypeError name the option)."""
    return _sampler_options(resolve_sampling_params(None, **options), n_vocab)


def _sampler_options(params: SamplingParams, n_vocab: int) -> dict[str, Any]:
    opts = params.sampler_options()
    _check_logit_bias_items(opts["logit_bias"], n_vocab)
    return opts


def _validate_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    try:
        stops = tuple(stop)
    except TypeError:
        raise TypeError(f"stop must be a string or a sequence of strings, got {stop!r}") from None
    for s in stops:
        if not isinstance(s, str):
            raise TypeError(f"stop strings must be str, got {s!r}")
        if not s:
            raise ValueError("stop strings must not be empty, got ''")
    return stops


def _validate_prompt(model: Any, prompt: Any, add_bos: Any, special: Any) -> None:
    if add_bos is not None and not isinstance(add_bos, bool):
        raise TypeError(f"add_bos must be True, False or None, got {add_bos!r}")
    if not isinstance(special, bool):
        raise TypeError(f"special must be True or False, got {special!r}")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, (bytes, bytearray)):
        raise TypeError("prompt must be a str or a sequence of token ids, got bytes (decode it first)")
    if isinstance(prompt, np.ndarray):
        if prompt.ndim != 1 or not np.issubdtype(prompt.dtype, np.integer):
            raise TypeError(f"prompt array must be 1-D integer token ids, got {prompt.dtype} {prompt.shape}")
        ids = prompt.tolist()
    elif isinstance(prompt, (list, tuple)):
        ids = list(prompt)
    else:
        raise TypeError(f"prompt must be a str or a sequence of token ids, got {type(prompt).__name__}")
    n_vocab = model.n_vocab
    for i, t in enumerate(ids):
        if not _is_int(t):
            raise TypeError(f"prompt[{i}] must be a token id (int), got {t!r}")
        if not 0 <= t < n_vocab:
            raise ValueError(f"prompt[{i}] = {t} is outside the vocabulary [0, {n_vocab})")
    if add_bos:
        raise ValueError("add_bos=True applies to text prompts; a token-id prompt is fed as given")


def _pending_of(session: Any) -> list[int]:
    return list(getattr(session, "_pending", None) or [])


def _at_stream_start(session: Any) -> bool:
    return session.n_past == 0 and not _pending_of(session)


def _prompt_ids(session: Any, prompt: Any, add_bos: bool | None, special: bool) -> list[int]:
    """Tokenizes a text prompt; BOS (add_bos=None: the model's default) only starts a stream."""
    if not isinstance(prompt, str):
        return [int(t) for t in (prompt.tolist() if isinstance(prompt, np.ndarray) else prompt)]
    if _at_stream_start(session):
        bos = add_bos
    else:
        if add_bos:
            raise ValueError(f"add_bos=True, but the session already holds {session.n_past} tokens: "
                             f"a BOS token only starts a stream (use a new session or reset())")
        bos = False
    if not prompt:
        return []
    return [int(t) for t in session.model.tokenize(prompt, add_bos=bos, special=special)]


def reset_generation_state(session: Any) -> None:
    """Forgets what the generation layer keeps on a session (pending token, cached logits, chat
    record and history, last stats). Session.reset() should call it."""
    for name in ("_pending", "_last_logits", "_chat_record", "_chat_history", "last_stats"):
        if hasattr(session, name):
            setattr(session, name, [] if name == "_pending" else None)


def _known_tokens(model: Any) -> int:
    """The ids generation may produce: the tokenizer's, which can be fewer than the logits' entries."""
    return int(getattr(model, "n_tokenizer_vocab", model.n_vocab))


def _sampler_from(n_vocab: int, opts: dict[str, Any], n_allowed: int | None = None):
    from ._core import Sampler

    kwargs = {k: v for k, v in opts.items() if k != "max_tokens"}
    # Past the vocabulary (top_k) or past 2**31 tokens (the window) the options mean "all".
    kwargs["top_k"] = min(kwargs["top_k"], n_vocab)
    kwargs["repeat_last_n"] = min(kwargs["repeat_last_n"], 2**31 - 1)
    return Sampler(n_vocab, n_allowed=n_vocab if n_allowed is None else n_allowed, **kwargs)


def make_sampler(n_vocab: int, n_allowed: int | None = None, **options: Any):
    """A sinkstream._core.Sampler from validated options (max_tokens is ignored). n_allowed: only
    ids below it are drawn (a model's n_tokenizer_vocab when its embedding has padding rows)."""
    if n_allowed is not None:
        n_allowed = _int_option("n_allowed", n_allowed, minimum=1)
        if n_allowed > n_vocab:
            raise ValueError(f"n_allowed must be <= n_vocab ({n_vocab}), got {n_allowed}")
    return _sampler_from(n_vocab, validate_sampling_options(n_allowed or n_vocab, **options), n_allowed)


# ---- the token loop ------------------------------------------------------------------------------

# A prompt longer than this is fed in chunks of this many tokens when a progress bar is wanted (the
# same logits as one eval: chunking never changes a stream, docs/streaming.md invariant 2).
PROGRESS_CHUNK = 256


def _prefill_bar(total: int) -> Any:
    """A tqdm bar on stderr for reading a prompt: shown only when stderr is a terminal and only
    once the prompt has taken half a second (short prompts print nothing)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="reading prompt", unit="tok", file=sys.stderr, delay=0.5, leave=False,
                dynamic_ncols=True, disable=not sys.stderr.isatty())


def _eval_in_chunks(session: Any, tokens: list[int]):
    bar = _prefill_bar(len(tokens))
    try:
        for start in range(0, len(tokens) - PROGRESS_CHUNK, PROGRESS_CHUNK):
            session.eval(tokens[start:start + PROGRESS_CHUNK], logits=None)
            bar.update(PROGRESS_CHUNK)
        last = tokens[(len(tokens) - 1) // PROGRESS_CHUNK * PROGRESS_CHUNK:]
        logits = session.eval(last, logits="last")
        bar.update(len(last))
        return logits
    finally:
        bar.close()


def _eval(session: Any, tokens: list[int], progress: bool = False):
    """Evaluates tokens (with a progress bar for a long prompt when ``progress``); afterwards (even
    on error) session._pending drops those that reached the session, judged by how far n_past
    moved, so a KeyboardInterrupt never duplicates a token."""
    n_before = session.n_past
    try:
        if progress and len(tokens) > PROGRESS_CHUNK:
            logits = _eval_in_chunks(session, tokens)
        else:
            logits = session.eval(tokens, logits="last")
    finally:
        fed = session.n_past - n_before
        pending = _pending_of(session)
        session._pending = pending[min(max(fed, 0), len(pending)):]
    logits = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1)
    session._last_logits = (session.n_past, logits)
    return logits, fed


def _draws_in_step(session: Any) -> bool:
    samples_in_step = getattr(session, "_samples_in_step", None)  # sinkstream.Session's
    return samples_in_step is not None and samples_in_step()


def _eval_and_draw(session: Any, sampler: Any, draws_left: int | None) -> int:
    """Feeds the pending token through the session's BatchScheduler, whose step also draws (and the
    sampler accepts) the next token: the per-token work leaves Python. draws_left: how many more
    tokens this generation may draw after this one (None: no limit), so the scheduler can run the
    drawn token's eval ahead of us (batching.py; _token_loop ends with session._settle()).
    Afterwards (even on error) session._pending drops the tokens that reached the session."""
    pending = _pending_of(session)
    fed = 0

    def count(n: int) -> None:
        nonlocal fed
        fed = n

    try:
        return session._eval_sample(pending, sampler, draws_left, count)
    finally:
        session._pending = pending[min(max(fed, 0), len(pending)):]


def stream_tokens(session: Any, prompt: str | Sequence[int] | np.ndarray | None = None,
                  params: SamplingParams | None = None, *, add_bos: bool | None = None, special: bool = True,
                  progress: bool = False, **options: Any) -> Iterator[int]:
    """Evaluates the prompt on the session, then samples token by token, yielding token ids.

    prompt: text (tokenized with ``special``; ``add_bos=None`` = the model's default, applied only
    when the session's stream is empty) or a sequence of token ids (fed as given). An empty prompt
    (or None) is allowed only when the session can continue (it holds a pending token or fresh
    logits). params: a SamplingParams (None: the defaults); keyword ``options`` (SamplingParams'
    fields) override it. Stops after ``max_tokens`` samples (None: no limit) or at an
    end-of-generation token, which is not yielded but stays pending in the session (see the module
    docstring). Options are checked here, before the first ``next()``; the prompt is evaluated on
    the first ``next()``. ``stop`` is ignored here (see stream_text). progress: a bar on stderr
    while a long prompt is read (only when stderr is a terminal and reading takes > 0.5 s).
    """
    model = session.model
    known = _known_tokens(model)
    opts = _sampler_options(resolve_sampling_params(params, **options), known)
    if prompt is None:
        prompt = []
    _validate_prompt(model, prompt, add_bos, special)
    if len(prompt) == 0 and _at_stream_start(session):
        raise ValueError("the prompt is empty and the session holds no tokens: nothing to condition on")
    sampler = _sampler_from(model.n_vocab, opts, known)
    return _token_loop(session, prompt, add_bos, special, sampler, opts["max_tokens"], opts["repeat_last_n"],
                       bool(progress))


def _token_loop(session, prompt, add_bos, special, sampler, limit, repeat_last_n, progress) -> Iterator[int]:
    model = session.model
    stats = GenerationStats()
    session.last_stats = stats
    clock = time.perf_counter
    try:
        start = clock()
        pending = _pending_of(session)
        feed = pending + _prompt_ids(session, prompt, add_bos, special)
        if feed:
            logits, fed = _eval(session, feed, progress)
            stats.prompt_tokens = fed
        else:
            cached = getattr(session, "_last_logits", None)
            if cached is None or cached[0] != session.n_past or session.n_past == 0:
                raise ValueError("the prompt is empty and the session has no pending token or fresh logits "
                                 "to continue from")
            logits = cached[1]
        stats.prompt_evaluated = True
        # Penalties see the context too (as llama.cpp's samplers accept prompt tokens).
        for token in feed[max(0, len(feed) - repeat_last_n):] if repeat_last_n > 0 else ():
            sampler.accept(token)
        stats.prefill_seconds = clock() - start

        while limit is None or stats.generated_tokens < limit:
            resumed = clock()
            if stats.generated_tokens > 0 and _draws_in_step(session):
                left = None if limit is None else limit - stats.generated_tokens - 1
                token = _eval_and_draw(session, sampler, left)
                logits = None  # they stayed in the engine
            else:
                if stats.generated_tokens > 0:
                    logits, _ = _eval(session, _pending_of(session))
                token = int(sampler.sample(logits))
                sampler.accept(token)
            stats.tokens.append(token)
            stats.generated_tokens += 1
            session._pending = [token]
            stats.decode_seconds += clock() - resumed
            # (token, the logits it was sampled from, or None when the batched step drew it: a hook
            # with needs_logits = False allows that): aio/server
            on_token = getattr(session, "_on_token", None)
            if on_token is not None:
                on_token(token, logits)
            if model.is_end_of_generation(token):
                stats.stop_reason = "eos"
                return
            yield token
        stats.stop_reason = "max_tokens"
    except GeneratorExit:
        stats.stop_reason = "closed"
        raise
    except KeyboardInterrupt:
        stats.stop_reason = "interrupted"
        raise
    except BaseException:
        stats.stop_reason = "error"
        raise
    finally:
        # A token drawn in a batched step may already be running ahead of us: the stream must end
        # with it pending, as the module docstring says (BatchScheduler.drop_run_ahead).
        settle = getattr(session, "_settle", None)
        if settle is not None:
            settle(generation_ended=True)


# ---- text ----------------------------------------------------------------------------------------

def _split_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """(safe to emit, to hold back, stop found). Holds back only the longest tail of text that is
    still the start of some stop string; at a stop string, emits what precedes the earliest one."""
    if not stops:
        return text, "", False
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        return text[: min(found)], "", True
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:k]):
                keep = k
                break
    return text[: len(text) - keep], text[len(text) - keep:], False


def stream_text(session: Any, prompt: str | Sequence[int] | np.ndarray | None = None,
                params: SamplingParams | None = None, *, add_bos: bool | None = None, special: bool = True,
                progress: bool = False, **options: Any) -> Iterator[str]:
    """Generates on the session, yielding text pieces as soon as they are final.

    Pieces are decoded incrementally from the tokens' bytes: a character split across tokens is
    yielded once complete; invalid bytes become U+FFFD (never an exception). ``stop`` strings end
    generation and are never yielded, even when split across tokens: only text that could still
    begin a stop string is held back, and it is released as soon as it cannot. The tokens that
    produced a stop string stay in the session's stream (the last one pending).

    Closing the generator early (break, .close(), an exception in the consumer) leaves the session
    consistent: its stream holds the prompt plus every sampled token but the last, which is kept
    in ``session._pending`` and evaluated first by the next call on the session. Statistics are in
    ``session.last_stats`` once the generator has finished or been closed. Prompt, params,
    progress and options: see stream_tokens.
    """
    resolved = resolve_sampling_params(params, **options)
    tokens = stream_tokens(session, prompt, resolved, add_bos=add_bos, special=special, progress=progress)
    return _text_loop(session, tokens, tuple(resolved.stop))


def _text_loop(session: Any, tokens: Iterator[int], stops: tuple[str, ...]) -> Iterator[str]:
    model = session.model
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held = ""
    stopped = False
    try:
        for token in tokens:
            held += decoder.decode(model.token_bytes(token))
            emit, held, stopped = _split_at_stop(held, stops)
            if emit:
                yield emit
            if stopped:
                break
        else:
            # No more tokens: incomplete trailing bytes become U+FFFD, and the held-back text can
            # no longer grow into a stop string.
            held += decoder.decode(b"", final=True)
            emit, held, stopped = _split_at_stop(held, stops)
            emit += held
            if emit:
                yield emit
    finally:
        tokens.close()  # type: ignore[attr-defined]
        if stopped and getattr(session, "last_stats", None) is not None:
            session.last_stats.stop_reason = "stop"


def generate_text(session: Any, prompt: str | Sequence[int] | np.ndarray | None = None,
                  params: SamplingParams | None = None, **options: Any) -> str:
    """stream_text joined into one string (same options)."""
    return "".join(stream_text(session, prompt, params, **options))
