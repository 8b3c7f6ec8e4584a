"""Async front end (asyncio) over the same engine: ``Model.astream / agenerate / achat`` and the
``Session`` equivalents (docs/api.md, "Async").

Generation never runs on the event loop: each call runs the ordinary (synchronous) generator in a
worker thread, which hands the pieces to the loop through an ``asyncio.Queue``. The options are
checked when ``astream()`` is called (the synchronous generator is built there), and nothing runs
until the first ``async for`` step.

Cancellation: when the consumer stops early (``break``, ``aclose()``, an exception, or its task is
cancelled, e.g. a server whose client went away), the worker is asked to stop: it stops before the
next token, and a prompt evaluation in progress is interrupted between two chunks through
``Session.cancel()`` (the chunks already evaluated stay, as with Ctrl-C). The async generator
returns only after the worker has finished, so the session is consistent and idle again: its
stream holds everything evaluated, the last sampled token stays pending (see generation.py), and a
later call continues it exactly as an uninterrupted one would.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["iterate_in_thread", "astream", "agenerate", "achat", "model_astream", "model_agenerate", "model_achat"]

_SESSION_OPTIONS = ("mode", "n_sink", "window")


async def iterate_in_thread(items: Iterator[T], session: Any = None, *, interrupt_prompt: bool = True,
                            stop: threading.Event | None = None) -> AsyncIterator[T]:
    """Runs the iterator `items` in a worker thread and yields its items on the event loop.

    session: the sinkstream.Session the iterator generates on (None: none to interrupt). When the
    consumer goes away, the worker stops before its next item and, if interrupt_prompt, an
    evaluation in progress on the session is cancelled between chunks (Session.cancel); with
    interrupt_prompt=False a prompt being evaluated is finished first (a chat turn whose prompt
    must be fed whole). stop: an event the caller may also set to stop the worker (a timeout).
    An exception in the worker is raised here; a Cancelled that the stop itself caused is not.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
    finished: asyncio.Future[None] = loop.create_future()
    stop = stop if stop is not None else threading.Event()

    def post(*item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def done() -> None:
        if not finished.done():
            finished.set_result(None)

    def work() -> None:
        error: BaseException | None = None
        try:
            for item in items:
                if stop.is_set():
                    break
                post(False, item)
                if stop.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            error = e
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException as e:  # noqa: BLE001
                    error = error or e
            if error is not None and stop.is_set() and _is_cancelled(error):
                error = None
            post(True, error)
            try:
                loop.call_soon_threadsafe(done)
            except RuntimeError:
                pass

    if session is not None:
        # A call still running on this session (an iterator left unclosed after `break`: its
        # aclose() is only scheduled) ends first, as if its consumer had stopped.
        previous = getattr(session, "_aio_worker", None)
        if previous is not None and not previous[1].done():
            previous[0].set()
            await _wait_for_worker(session, previous[1], interrupt_prompt)
        session._aio_worker = (stop, finished)
    thread = threading.Thread(target=work, name="sinkstream-aio", daemon=True)
    thread.start()
    try:
        while True:
            last, value = await queue.get()
            if last:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        await _wait_for_worker(session, finished, interrupt_prompt)


async def _wait_for_worker(session: Any, finished: asyncio.Future[None], interrupt_prompt: bool) -> None:
    """Waits until a stopped worker has finished, so the session is idle; a cancellation while
    waiting is raised only afterwards."""
    cancelled_again = False
    while not finished.done():
        if interrupt_prompt and session is not None and not session.closed:
            # Repeated: a request made just before an evaluation starts is cleared by it.
            session.cancel()
        try:
            await asyncio.wait({finished}, timeout=0.05)
        except asyncio.CancelledError:
            cancelled_again = True  # wait for the worker anyway: the session must be idle
    if cancelled_again:
        raise asyncio.CancelledError()


def _is_cancelled(error: BaseException) -> bool:
    from ._core import Cancelled

    return isinstance(error, Cancelled)


async def _join(pieces: AsyncIterator[str]) -> str:
    return "".join([piece async for piece in pieces])


# -- Session ---------------------------------------------------------------------------------------

def astream(session: Any, prompt: Any = None, params: Any = None, **options: Any) -> AsyncIterator[str]:
    """Session.astream: Session.stream's pieces, asynchronously (same arguments, checked now)."""
    return iterate_in_thread(session.stream(prompt, params, **options), session)


async def agenerate(session: Any, prompt: Any = None, params: Any = None, **options: Any) -> str:
    """Session.agenerate: the joined text of astream."""
    return await _join(astream(session, prompt, params, **options))


def achat(session: Any, messages: Any, params: Any = None, **options: Any) -> AsyncIterator[str]:
    """Session.achat: one chat turn's pieces, asynchronously. A chat prompt is fed whole before a
    cancellation takes effect (a half-fed turn could not be continued)."""
    return iterate_in_thread(session.chat(messages, params, **options), session, interrupt_prompt=False)


# -- Model: a fresh session per call ----------------------------------------------------------------

def _fresh_session(model: Any, options: dict[str, Any]) -> Any:
    return model.session(**{k: options.pop(k) for k in _SESSION_OPTIONS if k in options})


def model_astream(model: Any, prompt: Any, params: Any = None, **options: Any) -> AsyncIterator[str]:
    """Model.astream: Model.stream asynchronously (mode, n_sink, window pick the fresh session)."""
    return astream(_fresh_session(model, options), prompt, params, **options)


async def model_agenerate(model: Any, prompt: Any, params: Any = None, **options: Any) -> str:
    return await _join(model_astream(model, prompt, params, **options))


def model_achat(model: Any, messages: Any, params: Any = None, **options: Any) -> AsyncIterator[str]:
    """Model.achat: a chat turn on a fresh session."""
    return achat(_fresh_session(model, options), messages, params, **options)
