"""Scale-out on Ray Serve: N replicas of the server, each session's requests sent to its replica.

    from ray import serve
    from sinkstream.server.ray_serve import deployment
    serve.run(deployment(state_dir="/shared/state", num_replicas=2), route_prefix="/")

Two deployments:
- ``Replica`` (num_replicas of them): the whole OpenAI app of `sinkstream serve` (create_app) with its
  engine and session store, on a state directory all replicas share. Requests reach it as (method,
  path, headers, body) and it streams back (status, headers) then the body's bytes.
- ``Router`` (the HTTP ingress): reads the session id (the ``X-Session-Id`` header or the body's
  ``session_id``) and calls a replica with it as Ray Serve's *multiplexed model id*. The replica
  registers each id it serves (``serve.multiplexed``), so Ray routes the session's later requests to
  the replica that holds it in memory.

Sessions move through their saved state: replicas run the store with ``shared_state=True``, so a
session is saved before its reply completes, and a replica whose in-memory copy is older than the
file reloads it. When the replica holding a session goes away (crash, scale-down, or Ray routing
elsewhere under load), the next request lands on another replica, which continues the session
from its last save exactly. Needs ``pip install "sinkstream[ray]"``.
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any, AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .app import ServerConfig, create_app

__all__ = ["Replica", "Router", "deployment"]

_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection"}


def _session_id(headers: dict[str, str], body: bytes) -> str:
    sid = headers.get("x-session-id")
    if sid is None and body[:1] == b"{":
        try:
            value = json.loads(body).get("session_id")
        except (ValueError, AttributeError, RecursionError):
            value = None
        sid = value if isinstance(value, str) else None
    return sid or ""


@serve.deployment
class Replica:
    def __init__(self, config: dict[str, Any]):
        self.app = create_app(ServerConfig(**{**config, "shared_state": True}))
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    @serve.multiplexed(max_num_models_per_replica=1 << 16)
    async def _hold(self, session_id: str) -> str:
        """Loading a "model" is only noting that this replica now serves the session: the store
        loads it (from memory or its save) when the request runs."""
        return session_id

    async def handle(self, method: str, path: str, query: bytes, headers: list[tuple[str, str]],
                     body: bytes) -> AsyncIterator[Any]:
        sid = serve.get_multiplexed_model_id()
        if sid:
            await self._hold(sid)
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the caller goes away: this task is cancelled
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
                 "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
                 "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "state": {}}
        task = asyncio.create_task(self.app(scope, receive, send))
        try:
            while True:
                getter = asyncio.create_task(messages.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    task.result()  # the app ended without a response: raise its error
                    return
                message = getter.result()
                if message["type"] == "http.response.start":
                    yield ("start", message["status"],
                           [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                           + [("x-sinkstream-replica", self.name)])
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield ("body", message["body"])
                    if not message.get("more_body", False):
                        return
        finally:
            if not task.done():
                task.cancel()  # the client went away: the app cancels its generation
                await asyncio.gather(task, return_exceptions=True)

    async def __del__(self) -> None:  # Ray Serve calls it when the replica shuts down gracefully
        server = self.app.state.server
        server.engine.begin_shutdown()
        await server.store.save_all()


@serve.deployment
class Router:
    def __init__(self, replica: DeploymentHandle):
        self.replica = replica

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        sid = _session_id(headers, body)
        handle = self.replica.options(stream=True, multiplexed_model_id=sid) if sid else \
            self.replica.options(stream=True)
        parts = handle.handle.remote(request.method, request.url.path, request.url.query.encode(),
                                     list(request.headers.items()), body)
        first = await parts.__anext__()
        _, status, response_headers = first
        kept = {k: v for k, v in response_headers if k.lower() not in _HOP_BY_HOP}

        async def rest() -> AsyncIterator[bytes]:
            async for part in parts:
                yield part[1]

        return StreamingResponse(rest(), status_code=status, headers=kept)


def deployment(state_dir: str, num_replicas: int = 2, **config: Any) -> Any:
    """The Ray Serve application: a Router in front of num_replicas Replicas sharing state_dir.
    config: ServerConfig's fields (model_path, api_key, max_sessions, n_threads, ...)."""
    replica = Replica.options(num_replicas=num_replicas).bind({**config, "state_dir": state_dir})
    return Router.bind(replica)
