"""Continuous batching: many sessions' evals run as shared forward passes.

A decode step reads every weight of the model to produce one token; N streams decoding alone read
the weights N times per step. A BatchScheduler collects the evals that its sessions' threads ask
for and runs them together (``_core.BatchRunner``: one pass, each session attending over its own
sink cache with its own mode, geometry and stream position), so the weights are read once for all
of them. Results are exactly those of each session running alone (docs/streaming.md invariant 2:
chunking never changes a stream), so everything built on ``Session.eval`` (stream, generate, chat,
save/load) works unchanged on a scheduled session, from as many threads as there are sessions.

How a step is made (``BatchScheduler._next_step``):
- sessions join and leave between steps; each waiting eval contributes tokens to the next step:
  decode evals (one token) first, then prompts in chunks of ``prefill_chunk`` tokens, so a long
  prompt never stalls the others' decoding; alone, a prompt goes at the session's batch_size;
- after a step, the scheduler waits up to ``gather_ms`` for the sessions it has just served to
  come back with their next token (they are sampling it), so streams stay in step together;
- at most ``max_batch_tokens`` tokens and ``max_sessions`` sessions per step; the rest wait for the
  next step, oldest first.

Running ahead of the consumer (generation through ``eval(..., sampler)``): when a step has drawn a
generating session's next token, the scheduler queues that token's eval for the next step at once,
while the session's thread is still handing the token to its consumer, so the step does not wait
for N Python threads to come back. The thread then finds its eval already queued or done. When the
consumer stops instead (a stop string, closing the generator), ``drop_run_ahead`` takes the eval
back: not run yet, it is dropped; run, the session undoes that one token (``undo_last_token``:
exact, its K/V rows are never read). So the stream is always what it would be without running
ahead: the last drawn token stays pending (generation.py). The scheduler never runs past a token
the consumer cannot take (an end-of-generation token, max_tokens), and at most one token ahead.

    with sinkstream.BatchScheduler(model) as scheduler:
        sessions = [scheduler.session() for _ in range(8)]
        # each session used from its own thread: session.stream(...), session.chat(...)
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core

if TYPE_CHECKING:
    from .model import Model, Session

# How long a waiting eval sleeps between looks at Python signals (Ctrl-C reaches a waiting thread).
_WAIT_SLICE_S = 0.05
_NO_RECOMPUTE = ("a recompute-mode session re-encodes its whole window for every token and cannot join a batch: "
                 "use model.session(mode='recompute')")


@dataclass(eq=False)
class _Request:
    """One Session.eval waiting on the scheduler: its tokens are fed over one or more steps."""

    session: Any               # sinkstream.Session
    tokens: np.ndarray         # int32
    want_logits: bool
    sampler: Any = None        # a _core.Sampler: the last step draws the next token (see eval)
    draws_left: int | None = 0  # draws the consumer takes after this one (None: no limit): run ahead?
    adopted: bool = True       # a caller waits on it (False: queued ahead of its consumer, see eval)
    drawn: int | None = None   # the token a taken-back run-ahead eval drew: fed again, not drawn again
    keep_draw: bool = True     # taken back, its draw waits for the consumer (False: the generation ended)
    in_step: bool = False      # in the step being run
    done_tokens: int = 0
    logits: np.ndarray | None = None
    token: int = -1            # the token the sampler drew
    error: BaseException | None = None
    abandoned: bool = False    # the caller stopped waiting (Ctrl-C, cancel): feed no more
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.done_tokens


@dataclass
class BatchStats:
    """What the scheduler has done so far (BatchScheduler.stats)."""

    steps: int = 0
    tokens: int = 0            # rows of all steps: prompt and decode tokens together
    session_slots: int = 0     # sum over steps of the sessions in the step
    busy_seconds: float = 0.0  # time inside forward passes
    run_ahead: int = 0         # drawn tokens whose eval was queued ahead of their consumer
    taken_back: int = 0        # of those, evals that ran and were undone (the consumer stopped, or
                               # saved or changed the stream between two pieces)

    @property
    def mean_sessions_per_step(self) -> float:
        return self.session_slots / self.steps if self.steps else 0.0


class BatchScheduler:
    """Runs the evals of its sessions as shared forward passes (see the module docstring).

    model: the sinkstream.Model every session belongs to. n_threads: the threads of the passes
    (None: the model's). max_batch_tokens: the most tokens of one step; max_sessions: the most
    sessions in one step; prefill_chunk: tokens a prompt contributes per step while others decode;
    gather_ms: how long a step waits for the sessions of the previous one to come back.
    """

    def __init__(self, model: "Model", n_threads: int | None = None, *, max_batch_tokens: int = 256,
                 max_sessions: int = 64, prefill_chunk: int = 64, gather_ms: float = 2.0):
        from .model import Model, _check_int

        if not isinstance(model, Model):
            raise TypeError(f"model must be a sinkstream.Model, got {type(model).__name__}")
        n_threads = model.n_threads if n_threads is None else _check_int("n_threads", n_threads, 1, 1024)
        max_batch_tokens = _check_int("max_batch_tokens", max_batch_tokens, 1, 65536)
        max_sessions = _check_int("max_sessions", max_sessions, 1, max_batch_tokens)
        self.prefill_chunk = _check_int("prefill_chunk", prefill_chunk, 1, max_batch_tokens)
        if isinstance(gather_ms, bool) or not isinstance(gather_ms, (int, float)) or not 0 <= gather_ms <= 1000:
            raise ValueError(f"gather_ms must be a number of milliseconds in [0, 1000], got {gather_ms!r}")
        self.gather_s = float(gather_ms) / 1000
        self.model = model
        self._runner = _core.BatchRunner(model._core, n_threads, max_batch_tokens, max_sessions)
        self.stats = BatchStats()
        self._lock = threading.Condition()
        self._waiting: OrderedDict[Any, _Request] = OrderedDict()  # session -> its eval, oldest first
        self._served: set[Any] = set()   # sessions of the last step that finished an eval there
        self._ahead: dict[Any, _Request] = {}  # session -> its drawn token's eval, queued ahead of its consumer
        self._kept_draws: dict[Any, _Request] = {}  # session -> a taken-back run-ahead eval whose draw stands
        # Held while a pass runs (exclusive evals take it too); reentrant, so that what runs under
        # exclusive() may still read a session (visible_n_past).
        self._step_lock = threading.RLock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sinkstream-batch", daemon=True)
        self._thread.start()
        model._schedulers.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def n_threads(self) -> int:
        return self._runner.n_threads

    @property
    def max_batch_tokens(self) -> int:
        return self._runner.max_tokens

    @property
    def max_sessions(self) -> int:
        return self._runner.max_sessions

    # -- sessions ----------------------------------------------------------------------------------
    def session(self, mode: str = "streaming", n_sink: int | None = None, window: int | None = None,
                **options: Any) -> "Session":
        """A new session of the scheduler's model whose evals run through the scheduler (options as
        Model.session; recompute mode cannot join a batch)."""
        if mode == "recompute":  # refused before its cache is allocated
            raise ValueError(_NO_RECOMPUTE)
        options.setdefault("n_threads", 1)  # its own pool would sit idle: the scheduler's threads compute
        return self.attach(self.model.session(mode, n_sink, window, **options))

    def attach(self, session: "Session") -> "Session":
        """Makes an existing session of the scheduler's model run its evals through the scheduler
        (its state and settings stay; it can be attached while idle only). Returns it."""
        if getattr(session, "model", None) is not self.model:
            raise ValueError("the session belongs to another model than the scheduler's")
        if session.mode == "recompute":
            raise ValueError(_NO_RECOMPUTE)
        if getattr(session, "device", "cpu") != "cpu":
            raise ValueError(f"a session on device={session.device!r} cannot join a batch: the BatchScheduler's "
                             "passes run on the CPU")
        session._scheduler = self
        return session

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stops the scheduler: evals still waiting raise RuntimeError; its sessions then eval on
        their own (one thread). Idempotent."""
        with self._lock:
            self._closed = True
            for request in self._waiting.values():
                request.error = RuntimeError("the BatchScheduler was closed")
                request.finished.set()
            self._waiting.clear()
            self._lock.notify_all()
        # Evals that ran ahead stay until their sessions' generations end (drop_run_ahead).
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "BatchScheduler":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- evals (called by Session.eval in the sessions' threads) -----------------------------------
    def eval(self, session: "Session", tokens: np.ndarray, want_logits: bool, sampler: Any = None,
             draws_left: int | None = 0, fed: Any = None) -> Any:
        """Feeds checked int32 tokens to a scheduled session over one or more steps and returns the
        last token's logits (or None). Blocks the calling thread until done. Ctrl-C or cancel()
        stops after the step in flight, keeping every token fed so far (n_past counts them).

        With a sampler (a _core.Sampler), the last step also draws the next token from the last
        token's logits in C++, spread over the step's threads with the other sessions' draws, and
        the sampler accepts it: returns that token id (the logits stay in the engine). draws_left:
        how many more tokens the caller will draw after this one (None: no limit); then the drawn
        token's eval runs ahead of the caller (module docstring), who must end its generation with
        drop_run_ahead. fed: called with the number of `tokens` that reached the session, also when
        this raises."""
        if len(tokens) == 0:
            return None
        request = None
        with self._lock:
            ahead = self._ahead.get(session)
            if ahead is not None and ahead.sampler is sampler and np.array_equal(ahead.tokens, tokens):
                request = self._adopt(ahead, draws_left)
            kept = self._kept_draws.pop(session, None)
        if request is None:
            if ahead is not None:  # another eval than the one queued ahead: take that back first
                self.drop_run_ahead(session)
            # The eval of a run-ahead taken back mid-generation (save() between two tokens, ...):
            # fed again, its draw kept, since the sampler has already moved past it.
            same = kept is not None and kept.sampler is sampler and np.array_equal(kept.tokens, tokens)
            request = self._submit(session, tokens, want_logits, sampler, draws_left, kept.token if same else None)
        try:
            while not request.finished.wait(_WAIT_SLICE_S):
                pass
        except BaseException:
            self._abandon(request)
            if fed is not None:
                fed(request.done_tokens)
            raise
        if request.error is not None:
            with self._step_lock:  # a cancelled eval's last step may still be running: let it end
                pass
        if fed is not None:
            fed(request.done_tokens)
        if request.error is not None:
            raise request.error
        return request.token if sampler is not None else request.logits

    def _submit(self, session: "Session", tokens: np.ndarray, want_logits: bool, sampler: Any,
                draws_left: int | None, drawn: int | None = None) -> _Request:
        request = _Request(session, tokens, want_logits and sampler is None, sampler, draws_left, drawn=drawn)
        with self._lock:
            if self._closed:
                raise RuntimeError("the BatchScheduler is closed")
            # A run-ahead eval being taken back (drop_run_ahead: Session.save, eval, ...) may still
            # be in the step in flight: it leaves at the step's end.
            while (previous := self._waiting.get(session)) is not None and previous.abandoned and not previous.adopted:
                self._lock.wait()
            if session in self._waiting:
                raise ValueError("this Session is already in use by another thread; use one Session per thread")
            self._waiting[session] = request
            self._lock.notify_all()
        return request

    def _adopt(self, ahead: _Request, draws_left: int | None) -> _Request:
        """(lock held) The caller takes over the eval queued ahead of it; if it has run already,
        the token it drew runs ahead in turn."""
        del self._ahead[ahead.session]
        ahead.adopted, ahead.draws_left = True, draws_left
        if ahead.finished.is_set() and ahead.error is None:
            self._run_ahead(ahead)
        return ahead

    def _run_ahead(self, request: _Request) -> None:
        """(lock held) Queues the eval of the token `request` drew, for the next step, unless its
        consumer cannot take another token (module docstring)."""
        token = request.token
        if (self._closed or request.sampler is None or request.abandoned or request.draws_left == 0
                or self.model.is_end_of_generation(token) or request.session in self._waiting):
            return
        draws_left = None if request.draws_left is None else request.draws_left - 1
        ahead = _Request(request.session, np.array([token], dtype=np.int32), False, request.sampler, draws_left,
                         adopted=False)
        self._ahead[request.session] = ahead
        self._waiting[request.session] = ahead
        self.stats.run_ahead += 1
        self._lock.notify_all()

    def drop_run_ahead(self, session: "Session", generation_ended: bool = False) -> None:
        """Takes back the eval queued ahead of the session's consumer, if any: dropped if it has not
        run, undone (Session.undo_last_token) if it has. Afterwards the session's stream is what
        its consumer has seen. The token that eval drew is kept for the consumer's next eval (the
        sampler has moved past it) unless the generation has ended. Idempotent; cheap when nothing
        is ahead."""
        with self._lock:
            if generation_ended:
                self._kept_draws.pop(session, None)
            ahead = self._ahead.pop(session, None)
            if ahead is None:
                return
            ahead.abandoned = True
            ahead.keep_draw = not generation_ended
            if not ahead.in_step:
                if self._waiting.get(session) is ahead:  # not run: now it never will be
                    self._waiting.pop(session)
                elif ahead.done_tokens:  # run: undone before any other step can take the session
                    self._take_back(ahead)
                return
        with self._step_lock:  # in the step in flight: its bookkeeping takes it back (_finish_step)
            pass

    def _take_back(self, ahead: _Request) -> None:
        """(lock held) Undoes the one token an abandoned run-ahead eval fed; keeps what it drew."""
        ahead.session._core.undo_last_token()
        self.stats.taken_back += 1
        if ahead.keep_draw and ahead.error is None and ahead.token >= 0:
            self._kept_draws[ahead.session] = ahead

    def visible_n_past(self, session: "Session") -> int:
        """The session's n_past as its consumer has seen the stream: without a token run ahead of
        it (read between steps; takes nothing back, so a generation going on in another thread is
        not disturbed)."""
        with self._lock:
            if session not in self._ahead:  # nothing ahead (the usual case): no need to wait for a step
                return session._core.n_past
        with self._step_lock, self._lock:
            ahead = self._ahead.get(session)
            return session._core.n_past - (1 if ahead is not None and ahead.done_tokens else 0)

    def exclusive(self, fn: Any) -> Any:
        """Runs fn() while no batched pass runs (for what a step cannot do, e.g. all-token logits)."""
        with self._step_lock:
            return fn()

    def cancel(self, session: "Session") -> None:
        """Stops the session's waiting eval after the step in flight: it raises sinkstream.Cancelled."""
        with self._lock:
            request = self._waiting.get(session)
            # (An eval queued ahead of its consumer has nobody waiting on it: the consumer adopts
            # or drops it.)
            if request is not None and request.adopted:
                self._waiting.pop(session)
                request.error = _core.Cancelled("evaluation cancelled")
                request.finished.set()

    def _abandon(self, request: _Request) -> None:
        with self._lock:
            request.abandoned = True
            if self._waiting.get(request.session) is request:
                self._waiting.pop(request.session)
        # A step in flight may still be feeding it: wait for that step so the session is not busy.
        with self._step_lock:
            pass

    # -- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                self._gather()
                step = self._next_step()
            self._run_step(step)

    def _gather(self) -> None:
        """Waits (lock held) up to gather_s for the sessions served last step to ask again."""
        deadline = time.monotonic() + self.gather_s
        while self._served - set(self._waiting) and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._lock.wait(left)

    def _next_step(self) -> list[tuple[_Request, int]]:
        """(request, tokens it feeds) for the next step: decode evals first, then prompt chunks."""
        budget, slots = self.max_batch_tokens, self.max_sessions
        requests = list(self._waiting.values())
        decoding = [r for r in requests if r.remaining == 1]
        prompts = [r for r in requests if r.remaining > 1]
        step: list[tuple[_Request, int]] = []
        for request in decoding:
            if budget == 0 or slots == 0:
                break
            step.append((request, 1))
            budget, slots = budget - 1, slots - 1
        for request in prompts:
            if budget == 0 or slots == 0:
                break
            # Alone, a prompt goes at full speed; beside decoding streams, in small chunks.
            chunk = self.prefill_chunk if step or len(prompts) > 1 else budget
            n = min(request.remaining, chunk, budget, request.session._batch_size)
            step.append((request, n))
            budget, slots = budget - n, slots - 1
        for request, _ in step:  # served ones go to the back: the others are older now
            self._waiting.move_to_end(request.session)
            request.in_step = True
        return step

    def _run_step(self, step: list[tuple[_Request, int]]) -> None:
        # The bookkeeping too under the step lock: who waits for a step to end (drop_run_ahead,
        # _abandon) then sees its done_tokens.
        with self._step_lock:
            start = time.perf_counter()
            try:
                logits, tokens, errors = self._forward(step)
            except Exception:
                # Somebody's tokens could not run (dense mode full, a closed model, ...): run each
                # alone so the error reaches the eval it belongs to and the others go on.
                logits, tokens, errors = self._forward_one_by_one(step)
            self.stats.busy_seconds += time.perf_counter() - start
            self._finish_step(step, logits, tokens, errors)

    def _finish_step(self, step: list[tuple[_Request, int]], logits: np.ndarray, tokens: list[Any],
                     errors: list[BaseException | None]) -> None:
        with self._lock:
            self._served = set()
            row = 0
            for (request, n), error, token in zip(step, errors, tokens):
                request.in_step = False
                wanted = request.want_logits and request.remaining == n
                if error is None:
                    request.done_tokens += n
                    if wanted:
                        request.logits = logits[row]
                        row += 1
                    if isinstance(token, BaseException):  # its tokens ran, its draw failed
                        error = token
                    else:
                        request.token = token if request.drawn is None else request.drawn
                if request.abandoned and not request.adopted:  # run ahead, dropped while it ran
                    if request.done_tokens:
                        self._take_back(request)
                    if self._waiting.get(request.session) is request:
                        self._waiting.pop(request.session)
                    request.finished.set()
                    continue
                if request.finished.is_set():  # cancelled while the step ran: its error stands
                    continue
                if error is not None or request.remaining == 0 or request.abandoned:
                    request.error = error
                    if self._waiting.get(request.session) is request:
                        self._waiting.pop(request.session)
                    if error is None and not request.abandoned:
                        self._served.add(request.session)
                        if request.adopted:  # (one not adopted yet runs ahead once it is: _adopt)
                            self._run_ahead(request)
                    request.finished.set()
            ran = [n for (_, n), error in zip(step, errors) if error is None]
            self.stats.steps += bool(ran)
            self.stats.tokens += sum(ran)
            self.stats.session_slots += len(ran)
            self._lock.notify_all()  # _submit may wait for a run-ahead eval to leave

    def _forward(self, step: list[tuple[_Request, int]]) -> tuple[np.ndarray, list[Any], list[BaseException | None]]:
        """One pass: (logits of the rows that want them, each request's drawn token (-1 without a
        sampler, or the draw's exception: a sampler's error, say every logit banned, is its own
        eval's, after its tokens ran), None per request (errors of requests that did not run come
        from _forward_one_by_one))."""
        sessions = [r.session._core for r, _ in step]
        tokens = [r.tokens[r.done_tokens:r.done_tokens + n] for r, n in step]
        want = [r.want_logits and r.remaining == n for r, n in step]
        samplers = [r.sampler if r.remaining == n and r.drawn is None else None for r, n in step]
        if all(sampler is None for sampler in samplers):
            return self._runner.step(sessions, tokens, want), [-1] * len(step), [None] * len(step)
        logits, drawn, messages = self._runner.step(sessions, tokens, want, samplers)
        return logits, [int(t) if m is None else ValueError(m) for t, m in zip(drawn, messages)], [None] * len(step)

    def _forward_one_by_one(self, step):
        rows: list[np.ndarray] = []
        drawn: list[Any] = []
        errors: list[BaseException | None] = []
        for item in step:
            try:
                out, tokens, item_errors = self._forward([item])
                rows.extend(out)
                drawn.append(tokens[0])
                errors.append(item_errors[0])
            except Exception as e:  # handed to the eval that asked for these tokens
                drawn.append(-1)
                errors.append(e)
        n_vocab = self.model.n_vocab
        return (np.stack(rows) if rows else np.zeros((0, n_vocab), np.float32)), drawn, errors
