"""`sinkstream serve [MODEL]`: the OpenAI-compatible HTTP server (docs/server.md)."""
from __future__ import annotations

import argparse
import os


def _bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 512M, 4G)") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with endless sessions",
                       description="Serves /v1/models, /v1/completions, /v1/chat/completions (streaming as "
                                   "server-sent events), /health and /metrics. Needs sinkstream[server].")
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the model id clients send (default: the file name without .gguf)")
    p.add_argument("--api-key", default=os.environ.get("SINKSTREAM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $SINKSTREAM_API_KEY; none: open)")
    p.add_argument("--state-dir", help="directory where sessions are saved (default: none; sessions are not "
                                       "kept across restarts)")
    p.add_argument("--max-sessions", type=int, default=64, help="named sessions in memory (LRU ones go to disk)")
    p.add_argument("--memory-budget", type=_bytes, help="bytes of session memory, e.g. 2G (LRU ones go to disk)")
    p.add_argument("--max-concurrent", type=int, default=8, help="generations running at once (default 8)")
    p.add_argument("--no-batching", action="store_true",
                   help="each generation computes alone (default: running generations share forward passes)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot (more: 429)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request (0: none)")
    p.add_argument("--threads", type=int, help="threads of the batched passes (default: the cores); with "
                                                  "--no-batching, per generation (default: cores / max-concurrent)")
    p.add_argument("--mode", default="streaming", choices=["streaming", "window", "dense", "recompute"])
    p.add_argument("--n-sink", type=int, help="attention sinks per session (default 4)")
    p.add_argument("--window", type=int, help="window per session (default: 2048 - n_sink, capped)")
    p.add_argument("--kv-type", choices=["f16", "f32", "q8_0"], default="f16",
                   help="new sessions' K/V cache storage (q8_0: about half the memory, so twice the sessions "
                        "in a --memory-budget)")
    p.add_argument("--keep-system-prompt", action="store_true",
                   help="a chat session keeps its whole system prompt as sinks (a request's keep_system_prompt "
                        "overrides it)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..server import ServerConfig, serve
    except ImportError as e:
        raise OSError(f"the server needs its extra: pip install \"sinkstream[server]\" ({e})") from None
    for name in ("max_sessions", "max_concurrent", "port"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    config = ServerConfig(model_path=args.model, model_name=args.model_name, api_key=args.api_key or None,
                          state_dir=args.state_dir, max_sessions=args.max_sessions, memory_budget=args.memory_budget,
                          max_concurrent=args.max_concurrent, max_queue=args.max_queue,
                          request_timeout=args.timeout or None, n_threads=args.threads, batching=not args.no_batching,
                          mode=args.mode, n_sink=args.n_sink, window=args.window, kv_type=args.kv_type,
                          keep_system_prompt=args.keep_system_prompt)
    serve(config, host=args.host, port=args.port, log_level=args.log_level)
    return 0
