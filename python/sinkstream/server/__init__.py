"""`sinkstream serve`: an OpenAI-compatible HTTP server with endless named sessions (docs/server.md).

Needs the `server` extra (`pip install "sinkstream[server]"`: FastAPI and uvicorn).
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

from .app import ServerConfig, create_app
from .engine import Chunk, Finish, GenerationEngine, GenerationRequest

__all__ = ["ServerConfig", "create_app", "GenerationEngine", "GenerationRequest", "Chunk", "Finish", "serve"]


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Runs the server until SIGINT/SIGTERM; running generations stop at their next token and every
    session is saved before it exits."""
    import uvicorn

    app = create_app(config)
    engine = app.state.server.engine

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            engine.begin_shutdown()  # streams end now, so the graceful shutdown does not wait on them
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:  # SIGTERM is the ordinary way to stop a service: a clean exit (0), not re-raised
                    self._captured_signals[:] = [s for s in self._captured_signals if s != signal.SIGTERM]

    server = _Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30,
                                    access_log=False))
    server.run()
