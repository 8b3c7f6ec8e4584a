"""GenerationEngine: the one place where the server's generations run.

Interface (kept narrow so the inside can become a batched scheduler without touching the app):

    engine = GenerationEngine(max_concurrent=2, max_queue=64, timeout=600.0, metrics=Metrics())
    async for item in engine.run(GenerationRequest(session, prompt=... | messages=..., params=...)):
        item is a Chunk(text, tokens) ... and the last item is always a Finish(...)
    engine.begin_shutdown()      # no new requests; running ones stop at their next token
    engine.active / engine.waiting

run() owns, for one request: admission (at most max_concurrent generations at once; at most
max_queue waiting, beyond that QueueFull), the timeout (queue wait + generation, from the call;
in the queue it raises RequestTimeout, during generation it ends the stream with
Finish.stop_reason == "timeout"), and cancellation (the consumer closing the iterator or its task
being cancelled stops the generation before its next token; run() returns only after the session
is idle and consistent). Errors in the request (bad options, a chat template that refuses the
messages) raise ValueError/TypeError before the first item; the caller holds the session
exclusively for the call (the app's SessionStore does). Today each generation runs in a worker
thread (sinkstream.aio.iterate_in_thread) on its own session.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Sequence

import numpy as np

from ..aio import iterate_in_thread
from ..generation import SamplingParams
from .metrics import Metrics


@dataclass
class GenerationRequest:
    session: Any                                   # a sinkstream.Session, held by the caller
    params: SamplingParams
    prompt: str | Sequence[int] | None = None      # continue the stream with this (a completion) ...
    messages: list[dict[str, str]] | None = None   # ... or one chat turn with these new messages
    logprobs: int | None = None                    # None: none; k >= 0: the chosen token's + k alternatives
    add_bos: bool | None = None
    timeout: float | None = None                   # seconds; None: the engine's


@dataclass
class TokenInfo:
    token: int
    piece: bytes                                   # the token's bytes
    logprob: float | None = None                   # log p(token) under the model (before sampling options)
    top: list[tuple[int, bytes, float]] = field(default_factory=list)  # (token, bytes, logprob), best first


@dataclass
class Chunk:
    text: str                                      # UTF-8 complete; stop strings never appear
    tokens: list[TokenInfo]                        # the tokens sampled since the previous chunk


@dataclass
class Finish:
    stop_reason: str          # "eos" | "stop" | "max_tokens" | "timeout" | "shutdown" | "closed" | ...
    prompt_tokens: int        # tokens evaluated before the first sample (a pending token included)
    completion_tokens: int    # tokens sampled (an end-of-generation token included)
    time_to_first_token: float | None  # seconds from run() to the first text
    seconds: float            # seconds from run() to the end


class QueueFull(Exception):
    """max_queue requests are already waiting."""


class RequestTimeout(Exception):
    """The request waited in the queue past its timeout."""


class ShuttingDown(Exception):
    """The engine takes no new requests (begin_shutdown)."""


class GenerationEngine:
    def __init__(self, *, max_concurrent: int = 1, max_queue: int = 64, timeout: float | None = None,
                 metrics: Metrics | None = None):
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queue >= 0")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.timeout = timeout
        self.metrics = metrics or Metrics()
        self._slots: asyncio.Semaphore | None = None  # made on first use, in the serving loop
        self._stops: set[threading.Event] = set()
        self.active = 0
        self.waiting = 0
        self.closing = False

    def begin_shutdown(self) -> None:
        """Refuses new requests and stops the running ones at their next token (their sessions stay
        consistent and are saved by the store). Safe to call from a signal handler."""
        self.closing = True
        for stop in list(self._stops):
            stop.set()

    async def run(self, request: GenerationRequest) -> AsyncIterator[Chunk | Finish]:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        timeout = self.timeout if request.timeout is None else request.timeout
        if self.waiting >= self.max_queue and self._slots.locked():
            raise QueueFull(f"{self.waiting} requests are already waiting (max_queue {self.max_queue})")
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), None if timeout is None else max(timeout, 0.0))
        except asyncio.TimeoutError:
            self.metrics.count("timeouts")
            raise RequestTimeout(f"the request waited {timeout:g} s for a generation slot") from None
        finally:
            self.waiting -= 1
        self.metrics.observe(self.metrics.queue_wait, time.monotonic() - start)
        stop = threading.Event()
        timed_out = threading.Event()
        self._stops.add(stop)
        self.active += 1
        timer = None
        if timeout is not None:
            def expire() -> None:
                timed_out.set()
                stop.set()
            timer = loop.call_at(loop.time() + timeout - (time.monotonic() - start), expire)
        session = request.session
        first: float | None = None
        last = None
        finished = False
        try:
            if self.closing:
                raise ShuttingDown("the server is shutting down")
            chunks = _chunks(request, self.metrics)
            async for chunk in iterate_in_thread(chunks, session, interrupt_prompt=request.messages is None,
                                                 stop=stop):
                now = time.monotonic()
                if chunk.text:
                    if first is None:
                        first = now - start
                        self.metrics.observe(self.metrics.ttft, first)
                    elif last is not None:
                        self.metrics.observe(self.metrics.inter_token, now - last)
                    last = now
                yield chunk
            finished = True
            stats = session.last_stats
            reason = stats.stop_reason if stats is not None else None
            if timed_out.is_set():
                reason = "timeout"
                self.metrics.count("timeouts")
            elif stop.is_set() and self.closing:
                reason = "shutdown"
            yield Finish(reason or "closed", stats.prompt_tokens if stats else 0,
                         stats.generated_tokens if stats else 0, first, time.monotonic() - start)
        finally:
            if not finished:
                self.metrics.count("cancelled")
            if timer is not None:
                timer.cancel()
            self._stops.discard(stop)
            self.active -= 1
            self._slots.release()
            self.metrics.observe(self.metrics.request_seconds, time.monotonic() - start)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _chunks(request: GenerationRequest, metrics: Metrics) -> Iterator[Chunk]:
    """Runs in the worker thread: the session's text pieces with the tokens behind each."""
    session = request.session
    model = session.model
    known = model.n_tokenizer_vocab
    sampled: list[TokenInfo] = []
    k = request.logprobs

    def on_token(token: int, logits: np.ndarray) -> None:
        info = TokenInfo(token, model.token_bytes(token))
        if k is not None:
            logp = _log_softmax(logits[:known])
            info.logprob = float(logp[token])
            if k > 0:
                best = np.argpartition(-logp, min(k, known - 1))[:k]
                best = best[np.argsort(-logp[best], kind="stable")]
                info.top = [(int(t), model.token_bytes(int(t)), float(logp[t])) for t in best]
        sampled.append(info)
        metrics.tokens(1)

    on_token.needs_logits = k is not None  # type: ignore[attr-defined]  # else the batched step may draw
    session._on_token = on_token
    try:
        if request.messages is not None:
            pieces = session.chat(request.messages, request.params, add_bos=request.add_bos)
        else:
            pieces = session.stream(request.prompt, request.params, add_bos=request.add_bos)
        try:
            for text in pieces:
                tokens = sampled[:]
                del sampled[:]
                yield Chunk(text, tokens)
        finally:
            pieces.close()
            stats = session.last_stats
            if stats is not None:
                metrics.tokens(0, stats.prompt_tokens)
    finally:
        session._on_token = None
