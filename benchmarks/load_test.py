"""Load test of `sinkstream serve`: concurrent streaming clients, then crash and shutdown checks.

    python benchmarks/load_test.py [--clients 16] [--seconds 30] [--model PATH] [--max-concurrent 8]
                                   [--no-batching]

1. Starts the server (a subprocess on a free loopback port, a fresh state directory).
2. `--clients` clients, each with its own session, stream chat turns through the official openai
   client (AsyncOpenAI, unchanged) for `--seconds`: errors, requests, tokens, tokens/s, and p50/p99
   of the time to first token (request sent -> first content) and of the inter-token latency
   (between consecutive streamed pieces).
3. kill -9 mid-load: the sessions saved before the kill (GET /v1/sessions) are all there after a
   restart, at least as far as they were saved, and each continues.
4. SIGTERM mid-load: the server exits 0, and after a restart every session is at least as far as
   the server had taken it just before the signal (nothing lost), and each continues.
Exits 1 if any check fails or any request errs.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_helpers import ServerProcess  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def client_loop(client: openai.AsyncOpenAI, model: str, sid: str, until: float, stats: dict) -> None:
    round_ = 0
    while time.monotonic() < until:
        round_ += 1
        sent = time.monotonic()
        last = None
        try:
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"Tell me something new (round {round_})."}],
                max_tokens=32, stream=True, extra_body={"session_id": sid})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    now = time.monotonic()
                    if last is None:
                        stats["ttft"].append(now - sent)
                    else:
                        stats["itl"].append(now - last)
                    last = now
                    stats["pieces"] += 1
            stats["requests"] += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            if stats.get("expect_errors"):
                return
            stats["errors"] += 1
            stats["error_samples"].append(f"{sid}: {type(e).__name__}: {e}"[:200])


async def load(base: str, model: str, clients: int, seconds: float, prefix: str, expect_errors: bool = False) -> dict:
    stats = {"ttft": [], "itl": [], "pieces": 0, "requests": 0, "errors": 0, "error_samples": [],
             "expect_errors": expect_errors}
    until = time.monotonic() + seconds
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120) as client:
        await asyncio.gather(*(client_loop(client, model, f"{prefix}{i}", until, stats) for i in range(clients)))
    return stats


def sessions(base: str) -> dict[str, dict]:
    return {s["id"]: s for s in httpx.get(base + "/v1/sessions", timeout=30).json()["data"]}


def _saved_n_past(after: dict[str, dict], sid: str) -> int:
    """How far the restarted server has session sid (-1: not at all)."""
    n = after.get(sid, {}).get("saved_n_past")
    return -1 if n is None else n


def continue_all(base: str, model: str, ids: list[str]) -> int:
    c = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)
    failed = 0
    for sid in ids:
        try:
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Go on."}], max_tokens=2,
                                      extra_body={"session_id": sid})
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"  {sid} did not continue: {e}")
    return failed


async def load_then(server: ServerProcess, model: str, clients: int, seconds: float, prefix: str, sig: int) -> dict:
    """Runs load and sends `sig` to the server after `seconds`; returns the sessions just before."""
    task = asyncio.create_task(load(server.base, model, clients, 3600, prefix, expect_errors=True))
    await asyncio.sleep(seconds)
    before = await asyncio.to_thread(sessions, server.base)
    server.proc.send_signal(sig)
    code = await asyncio.to_thread(server.proc.wait, 60)
    await asyncio.wait_for(task, 60)
    return {"before": before, "code": code}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    ap.add_argument("--max-concurrent", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of the batched passes (default: the cores); with --no-batching, per generation")
    ap.add_argument("--no-batching", action="store_true", help="each generation computes alone")
    args = ap.parse_args()
    import sinkstream

    model_path = args.model or sinkstream.default_model_path()
    model_id = os.path.basename(model_path).removesuffix(".gguf")
    failures = []
    with tempfile.TemporaryDirectory() as state:
        server_args = ("--state-dir", state, "--max-concurrent", str(args.max_concurrent), "--max-queue",
                       str(4 * args.clients), *(("--threads", str(args.threads)) if args.threads else ()),
                       *(("--no-batching",) if args.no_batching else ()))
        server = ServerProcess(model_path, *server_args).start()
        port = server.port
        threads = args.threads or "default"
        print(f"server: {server.base}, {args.clients} clients, {args.seconds:g} s, max_concurrent "
              f"{args.max_concurrent}, {'no batching' if args.no_batching else 'batching'}, threads {threads}, "
              f"{os.cpu_count()} cores")
        start = time.monotonic()
        s = asyncio.run(load(server.base, model_id, args.clients, args.seconds, "load-"))
        elapsed = time.monotonic() - start
        print(f"requests {s['requests']}, errors {s['errors']}, streamed pieces {s['pieces']} "
              f"({s['pieces'] / elapsed:.1f}/s over {elapsed:.1f} s)")
        print(f"time to first token: p50 {percentile(s['ttft'], 50) * 1000:.0f} ms, "
              f"p99 {percentile(s['ttft'], 99) * 1000:.0f} ms")
        print(f"inter-token latency: p50 {percentile(s['itl'], 50) * 1000:.1f} ms, "
              f"p99 {percentile(s['itl'], 99) * 1000:.1f} ms, mean {statistics.fmean(s['itl']) * 1000:.1f} ms"
              if s["itl"] else "inter-token latency: no data")
        for line in s["error_samples"][:5]:
            print("  error:", line)
        if s["errors"]:
            failures.append(f"{s['errors']} errors under load")

        # kill -9 mid-load: what was saved is there after a restart. SIGTERM mid-load: nothing is lost
        # (every session is saved at least as far as the server had it just before the signal).
        time.sleep(1.0)  # the last saves of the load phase
        for sig, prefix, field in ((signal.SIGKILL, "crash-", "saved_n_past"), (signal.SIGTERM, "term-", "n_past")):
            r = asyncio.run(load_then(server, model_id, args.clients, 5.0, prefix, sig))
            before = {k: v[field] for k, v in r["before"].items() if v[field] is not None}
            server = ServerProcess(model_path, *server_args, port=port).start()
            after = sessions(server.base)
            lost = [k for k, n in before.items() if _saved_n_past(after, k) < n]
            failed = continue_all(server.base, model_id, sorted(before))
            name = "kill -9" if sig == signal.SIGKILL else "SIGTERM"
            print(f"{name} mid-load: exit code {r['code']}, {len(before)} sessions "
                  f"{'saved before the kill' if sig == signal.SIGKILL else 'held before the signal'}, {len(lost)} lost, "
                  f"{failed} failed to continue after the restart")
            if lost or failed or (sig == signal.SIGTERM and r["code"] != 0):
                failures.append(f"{name}: exit {r['code']}, lost {lost}, {failed} did not continue")
        server.stop(signal.SIGTERM)
    print("OK" if not failures else "FAILED: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
