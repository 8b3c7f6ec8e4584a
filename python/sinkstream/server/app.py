"""The OpenAI-compatible HTTP app (FastAPI): routes, authentication, request parsing and responses.

Every generation goes through one GenerationEngine (engine.py); named sessions live in a
SessionStore (sessions.py). See docs/server.md.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generation import SamplingParams
from ..batching import BatchScheduler
from ..system_sinks import system_prompt_sinks
from . import protocol as P
from .engine import Chunk, Finish, GenerationEngine, GenerationRequest, QueueFull, RequestTimeout, ShuttingDown
from .errors import APIError, bad_request, not_found, timeout, too_many, unauthorized, unavailable
from .metrics import Metrics
from .sessions import SessionStore, check_session_id

log = logging.getLogger("sinkstream.server")


@dataclass
class ServerConfig:
    model_path: str | None = None          # None: the default model
    model_name: str | None = None          # the id /v1/models lists (None: the file's name without .gguf)
    api_key: str | None = None             # None: no authentication
    state_dir: str | None = None           # where sessions are saved (None: sessions live in memory only)
    max_sessions: int = 64                 # named sessions held in memory at once (LRU ones go to disk)
    memory_budget: int | None = None       # bytes of session memory (None: no limit but max_sessions)
    max_concurrent: int = 8                # generations running at once
    max_queue: int = 64                    # requests waiting for a generation slot
    request_timeout: float | None = 300.0  # seconds per request, queue wait included
    # batching: the running generations share forward passes (sinkstream.BatchScheduler: the weights
    # are read once per step for all of them); n_threads then counts the threads of those passes.
    # Without it (or in recompute mode) each generation computes alone with n_threads threads.
    batching: bool = True
    n_threads: int | None = None           # None: the cores (batching), else cores / max_concurrent
    mode: str = "streaming"
    n_sink: int | None = None              # session defaults (None: the engine's)
    window: int | None = None
    kv_type: str = "f16"                   # new sessions' K/V storage ("q8_0": about half the memory)
    keep_system_prompt: bool = False       # default of a chat request's keep_system_prompt
    chat_max_tokens: int | None = 512      # a chat request's max_tokens when it sends none
    shared_state: bool = False             # other servers use state_dir too (Ray Serve replicas): sessions.py
    max_body_bytes: int = 4 << 20


def _sampling(req: Any, max_tokens: int | None) -> SamplingParams:
    # OpenAI's API has no repetition penalty unless asked for (frequency/presence_penalty): 1.0 here,
    # not SamplingParams' default, so clients get the semantics they were written for.
    options: dict[str, Any] = {"max_tokens": max_tokens, "repeat_penalty": 1.0}
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
                 "frequency_penalty", "seed"):
        value = getattr(req, name)
        if value is not None:
            options[name] = value
    if req.stop is not None:
        stops = [req.stop] if isinstance(req.stop, str) else req.stop
        if len(stops) > 16 or any(not s for s in stops):
            raise bad_request("stop must be up to 16 non-empty strings", param="stop")
        options["stop"] = stops
    if req.logit_bias:
        bias = {}
        for key, value in req.logit_bias.items():
            if not key.isdigit():
                raise bad_request(f"logit_bias keys must be token ids, got {key!r:.40}", param="logit_bias")
            bias[int(key)] = float(value) if value > -100 else float("-inf")  # -100: banned (OpenAI)
        options["logit_bias"] = bias
    try:
        return SamplingParams(**options)
    except (ValueError, TypeError) as e:
        raise bad_request(str(e)) from None


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _as_api_error(e: BaseException) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, QueueFull):
        return too_many(str(e))
    if isinstance(e, RequestTimeout):
        return timeout(str(e))
    if isinstance(e, ShuttingDown):
        return unavailable(str(e))
    if isinstance(e, (ValueError, TypeError)):  # bad options, prompt or messages (ChatTemplateError too)
        return bad_request(str(e))
    log.exception("internal error", exc_info=e)
    return APIError(500, f"internal error: {type(e).__name__}", type="server_error")


class Server:
    """The app's state: model, engine, session store, metrics."""

    def __init__(self, config: ServerConfig, model: Any = None):
        from ..model import Model

        self.config = config
        self.model = model if model is not None else Model(config.model_path)
        self.model_id = config.model_name or os.path.basename(self.model.path).removesuffix(".gguf")
        self.metrics = Metrics()
        self.scheduler: BatchScheduler | None = None
        if config.batching and config.mode != "recompute":
            self.scheduler = BatchScheduler(self.model, config.n_threads or self.model.n_threads)
            self.session_threads = 1  # a scheduled session's own pool would sit idle
        else:
            self.session_threads = config.n_threads or max(1, (os.cpu_count() or 1) // config.max_concurrent)
        self.engine = GenerationEngine(max_concurrent=config.max_concurrent, max_queue=config.max_queue,
                                       timeout=config.request_timeout, metrics=self.metrics)
        self.store = SessionStore(self.model, config.state_dir, max_sessions=config.max_sessions,
                                  memory_budget=config.memory_budget, n_threads=self.session_threads,
                                  metrics=self.metrics, shared=config.shared_state, prepare=self._attach)
        m = self.metrics
        m.gauge("sinkstream_active_generations", "Generations running now", lambda: self.engine.active)
        m.gauge("sinkstream_queue_depth", "Requests waiting for a generation slot", lambda: self.engine.waiting)
        m.gauge("sinkstream_active_sessions", "Named sessions held in memory", lambda: self.store.in_memory)
        m.gauge("sinkstream_known_sessions", "Named sessions in memory or on disk", lambda: len(self.store.entries))
        m.gauge("sinkstream_session_memory_bytes", "Memory of the named sessions in memory",
                lambda: self.store.memory_in_use)

        if self.scheduler is not None:
            scheduler = self.scheduler
            m.gauge("sinkstream_batch_sessions_per_step", "Mean sessions per batched forward pass",
                    lambda: scheduler.stats.mean_sessions_per_step)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()

    # -- sessions and generation ---------------------------------------------------------------------
    def _attach(self, session: Any) -> Any:
        return self.scheduler.attach(session) if self.scheduler is not None else session

    def _new_session(self, options: dict[str, Any]) -> Any:
        return self._attach(self.model.session(options["mode"], options["n_sink"], options["window"],
                                               kv_type=options.get("kv_type", "f16"),
                                               n_threads=self.session_threads))

    def _options(self, n_sink: int | None = None) -> dict[str, Any]:
        return {"mode": self.config.mode, "n_sink": self.config.n_sink if n_sink is None else n_sink,
                "window": self.config.window, "kv_type": self.config.kv_type}

    @contextlib.asynccontextmanager
    async def _session(self, session_id: str | None, kind: str, options: dict[str, Any]) -> AsyncIterator[Any]:
        if session_id is None:
            yield await asyncio.to_thread(self._new_session, options)
        else:
            async with self.store.use(session_id, kind, options) as entry:
                yield entry.session

    async def _events(self, session_id: str | None, kind: str, options: dict[str, Any],
                      build: Callable[[Any], GenerationRequest]) -> AsyncIterator[Chunk | Finish]:
        async with self._session(session_id, kind, options) as session:
            async for item in self.engine.run(build(session)):
                yield item

    async def generate(self, http: Request, endpoint: str, session_id: str | None, kind: str,
                       options: dict[str, Any], build: Callable[[Any], GenerationRequest], stream: bool,
                       render: Any) -> Response:
        """Runs one request through the engine; render turns its items into the response."""
        try:
            return await self._generate(http, endpoint, session_id, kind, options, build, stream, render)
        except Exception as e:
            raise _as_api_error(e) from None

    async def _generate(self, http: Request, endpoint: str, session_id: str | None, kind: str,
                        options: dict[str, Any], build: Callable[[Any], GenerationRequest], stream: bool,
                        render: Any) -> Response:
        headers = {"X-Session-Id": session_id} if session_id else {}
        events = self._events(session_id, kind, options, build)
        if stream:
            try:
                first = await events.__anext__()  # errors before the first token are proper 4xx
            except StopAsyncIteration:
                first = None
            except BaseException:
                await events.aclose()
                raise
            self.metrics.request(endpoint, 200)
            return StreamingResponse(self._sse(first, events, render), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        task = asyncio.ensure_future(self._collect(events))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await http.is_disconnected():
                    task.cancel()  # the client went away: stop its generation
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    return Response(status_code=499)
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        chunks, finish = task.result()
        self.metrics.request(endpoint, 200)
        return JSONResponse(render.whole(chunks, finish), headers=headers)

    @staticmethod
    async def _collect(events: AsyncIterator[Chunk | Finish]) -> tuple[list[Chunk], Finish]:
        chunks: list[Chunk] = []
        finish = None
        async with contextlib.aclosing(events):
            async for item in events:
                if isinstance(item, Finish):
                    finish = item
                else:
                    chunks.append(item)
        assert finish is not None
        return chunks, finish

    async def _sse(self, first: Chunk | Finish | None, events: AsyncIterator[Chunk | Finish],
                   render: Any) -> AsyncIterator[bytes]:
        def data(obj: Any) -> bytes:
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        try:
            async with contextlib.aclosing(events):
                for obj in render.start():
                    yield data(obj)
                item = first
                while item is not None:
                    for obj in render.item(item):
                        yield data(obj)
                    item = await anext(events, None)
        except Exception as e:  # after the headers: the error goes into the stream
            yield data(_as_api_error(e).body())
        yield b"data: [DONE]\n\n"


class _Render:
    """Turns engine items into OpenAI objects (one class per endpoint)."""

    def __init__(self, server: Server, req: Any, session_id: str | None):
        self.model_id = server.model_id
        self.req = req
        self.session_id = session_id
        self.id = P.new_id(self.prefix)
        self.created = P.now()
        self.include_usage = bool(req.stream_options and req.stream_options.include_usage)
        self.offset = 0

    prefix = "cmpl"

    def envelope(self, obj: str, choices: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model_id, "choices": choices,
               **more}
        if self.session_id:
            out["session_id"] = self.session_id
        return out

    def start(self) -> list[dict[str, Any]]:
        return []

    def item(self, item: Chunk | Finish) -> list[dict[str, Any]]:
        if isinstance(item, Finish):
            out = [self.chunk(None, P.FINISH.get(item.stop_reason, "stop"))]
            if self.include_usage:
                out.append(self.envelope(self.chunk_object, [], usage=P.usage(item)))
            return out
        return [self.chunk(item, None)]


class CompletionRender(_Render):
    prefix = "cmpl"
    chunk_object = "text_completion"

    def logprobs(self, chunks: list[Chunk]) -> dict[str, Any] | None:
        if self.req.logprobs is None:
            return None
        out = P.completion_logprobs(chunks, self.offset)
        self.offset += sum(len(c.text) for c in chunks)
        return out

    def chunk(self, chunk: Chunk | None, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": chunk.text if chunk else "",
                  "logprobs": self.logprobs([chunk]) if chunk else None, "finish_reason": finish}
        return self.envelope("text_completion", [choice], **({"usage": None} if self.include_usage else {}))

    def whole(self, chunks: list[Chunk], finish: Finish) -> dict[str, Any]:
        choice = {"index": 0, "text": "".join(c.text for c in chunks), "logprobs": self.logprobs(chunks),
                  "finish_reason": P.FINISH.get(finish.stop_reason, "stop")}
        return self.envelope("text_completion", [choice], usage=P.usage(finish))


class ChatRender(_Render):
    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def logprobs(self, chunks: list[Chunk]) -> dict[str, Any] | None:
        return P.chat_logprobs(chunks) if self.req.logprobs else None

    def start(self) -> list[dict[str, Any]]:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return [self.envelope(self.chunk_object, [choice], **({"usage": None} if self.include_usage else {}))]

    def chunk(self, chunk: Chunk | None, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": {"content": chunk.text} if chunk else {},
                  "logprobs": self.logprobs([chunk]) if chunk else None, "finish_reason": finish}
        return self.envelope(self.chunk_object, [choice], **({"usage": None} if self.include_usage else {}))

    def whole(self, chunks: list[Chunk], finish: Finish) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(c.text for c in chunks), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": self.logprobs(chunks),
                  "finish_reason": P.FINISH.get(finish.stop_reason, "stop")}
        return self.envelope("chat.completion", [choice], usage=P.usage(finish))


def _new_messages(history: list[dict[str, str]] | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages a session has not seen: the tail after its history when the client resent the
    whole conversation (an assistant reply may come back shortened, e.g. cut at a stop string),
    else all of them (the client sends only new messages)."""
    if not history or len(messages) <= len(history):
        return messages
    for mine, theirs in zip(history, messages):
        if mine["role"] != theirs["role"]:
            return messages
        if mine["content"] != theirs["content"] and not (
                mine["role"] == "assistant" and mine["content"].startswith(theirs["content"])):
            return messages
    return messages[len(history):]


def create_app(config: ServerConfig, model: Any = None) -> FastAPI:
    server = Server(config, model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.engine.begin_shutdown()
        for _ in range(200):  # running generations stop at their next token
            if server.engine.active == 0:
                break
            await asyncio.sleep(0.05)
        await server.store.save_all()
        server.close()

    app = FastAPI(title="sinkstream", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        server.metrics.request(request.url.path, e.status)
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        server.metrics.request("other", e.status_code)
        return _error_response(APIError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return _error_response(bad_request(str(e)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        error = _as_api_error(e)
        server.metrics.request(request.url.path, error.status)
        return _error_response(error)

    def authorize(request: Request) -> None:
        key = config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), key.encode())):
            raise unauthorized()

    async def body_of(request: Request) -> Any:
        authorize(request)
        if server.engine.closing:
            raise unavailable("the server is shutting down")
        raw = await request.body()
        if len(raw) > config.max_body_bytes:
            raise APIError(413, f"the request body is larger than {config.max_body_bytes} bytes", code="too_large")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None

    def session_id_of(request: Request, req: Any) -> str | None:
        header = request.headers.get("x-session-id")
        if req.session_id is not None and header is not None and header != req.session_id:
            raise bad_request("session_id and the X-Session-Id header differ", param="session_id")
        value = req.session_id if req.session_id is not None else header
        return None if value is None else check_session_id(value)

    def check_model(req: Any) -> None:
        if req.model not in (server.model_id, os.path.basename(server.model.path)):
            raise not_found(f"the model {req.model!r:.80} does not exist; this server has {server.model_id!r}",
                            code="model_not_found")

    @app.get("/health")
    async def health() -> JSONResponse:
        if server.engine.closing:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse({"status": "ok", "model": server.model_id, "active": server.engine.active,
                             "waiting": server.engine.waiting, "sessions": server.store.in_memory})

    @app.get("/metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        authorize(request)  # scrapers send the key as a bearer token too
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse({"object": "list", "data": [_model_card(server)]})

    @app.get("/v1/models/{model_id:path}")
    async def model_card(request: Request, model_id: str) -> JSONResponse:
        authorize(request)
        if model_id != server.model_id:
            raise not_found(f"the model {model_id!r:.80} does not exist", code="model_not_found")
        return JSONResponse(_model_card(server))

    @app.get("/v1/sessions")
    async def sessions(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse({"object": "list", "data": [server.store.describe(e) for e in server.store.entries.values()]})

    @app.get("/v1/sessions/{session_id}")
    async def session_info(request: Request, session_id: str) -> JSONResponse:
        authorize(request)
        entry = server.store.entries.get(check_session_id(session_id))
        if entry is None:
            raise not_found(f"no session {session_id!r}", code="session_not_found")
        return JSONResponse(server.store.describe(entry))

    @app.delete("/v1/sessions/{session_id}")
    async def delete_session(request: Request, session_id: str) -> JSONResponse:
        authorize(request)
        if not await server.store.delete(check_session_id(session_id)):
            raise not_found(f"no session {session_id!r}", code="session_not_found")
        return JSONResponse({"id": session_id, "object": "session", "deleted": True})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = P.parse(P.CompletionRequest, await body_of(request))
        check_model(req)
        params = _sampling(req, req.max_tokens)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise bad_request("one prompt per request (send a list of one string)", param="prompt")
            prompt = prompt[0]
        session_id = session_id_of(request, req)
        logprobs = req.logprobs

        def build(session: Any) -> GenerationRequest:
            return GenerationRequest(session, params, prompt=prompt, logprobs=logprobs)

        return await server.generate(request, "/v1/completions", session_id, "text", server._options(), build,
                                     req.stream, CompletionRender(server, req, session_id))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = P.parse(P.ChatRequest, await body_of(request))
        check_model(req)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = _sampling(req, max_tokens if max_tokens is not None else config.chat_max_tokens)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        session_id = session_id_of(request, req)
        keep = config.keep_system_prompt if req.keep_system_prompt is None else req.keep_system_prompt
        n_sink = None
        if keep and messages[0]["role"] == "system" and (
                session_id is None or session_id not in server.store.entries):
            try:
                n_sink = system_prompt_sinks(server.model, messages[0]["content"])
            except ValueError as e:
                raise bad_request(str(e), param="messages") from None
        logprobs = (req.top_logprobs or 0) if req.logprobs else None

        def build(session: Any) -> GenerationRequest:
            new = _new_messages(getattr(session, "_chat_history", None), messages)
            return GenerationRequest(session, params, messages=new, logprobs=logprobs)

        return await server.generate(request, "/v1/chat/completions", session_id, "chat", server._options(n_sink),
                                     build, req.stream, ChatRender(server, req, session_id))

    return app


def _model_card(server: Server) -> dict[str, Any]:
    return {"id": server.model_id, "object": "model", "created": 0, "owned_by": "sinkstream",
            "architecture": server.model.architecture, "n_ctx_train": server.model.n_ctx_train}
