"""Speed measurements shared by `sinkstream bench` and benchmarks/bench_engine.py.

Figures (each the median of several runs, the machine is noisy):
- prefill tok/s: a fresh session reads an N-token prompt in one eval;
- decode tok/s: then generates M tokens one by one (greedy: sampling cost is not the engine's);
- decode ms/token at a stream position (2K by default): the session first reads that many tokens;
- peak RSS of the process (VmHWM).
When llama-cpp-python is importable, the same figures for llama.cpp on the same GGUF, the same
thread count, and the ratios.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class BenchResult:
    engine: str
    threads: int
    prefill_tok_s: float
    decode_tok_s: float
    decode_ms_at_position: float
    position: int
    peak_rss_mib: float
    runs: dict = field(default_factory=dict)


def process_memory_mib(field: str = "VmRSS") -> float:
    """A memory figure of this process from /proc/self/status, in MiB: VmRSS (resident now) or
    VmHWM (peak resident). NaN where /proc is not available (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mib() -> float:
    return process_memory_mib("VmHWM")


def _prompt(n_vocab: int, n: int, seed: int = 0) -> np.ndarray:
    # Ids from the common range of the vocabulary: the cost does not depend on which tokens.
    return np.random.default_rng(seed).integers(100, min(n_vocab, 20000), size=n).astype(np.int32)


AT_POSITION_STEPS = 32  # decode steps timed at the stream position


def tokens_per_run(prompt_tokens: int, decode_tokens: int, position: int) -> int:
    """Tokens one run of bench_sinkstream / bench_llama_cpp feeds (for a progress bar's total)."""
    return max(prompt_tokens + decode_tokens, position) + AT_POSITION_STEPS


def bench_sinkstream(model, threads: int, prompt_tokens: int = 512, decode_tokens: int = 256,
                     position: int = 2048, repeats: int = 3, window: int | None = None,
                     progress: Callable[[int], object] | None = None) -> BenchResult:
    """window: the session's (None: 2044, or less to fit the training context with the 4 sinks);
    progress: called with the number of tokens each phase fed (see tokens_per_run)."""
    if window is None:
        window = min(2044, model.n_ctx_train - 4)
    advance = progress or (lambda n: None)
    prompt = _prompt(model.n_vocab, prompt_tokens)
    known = model.n_tokenizer_vocab  # greedy never picks a padding row of the embedding
    prefill, decode, at_position = [], [], []
    for _ in range(repeats):
        session = model.session(mode="streaming", n_sink=4, window=window, n_threads=threads, batch_size=512)
        t0 = time.perf_counter()
        logits = session.eval(prompt, logits="last")
        prefill.append(prompt_tokens / (time.perf_counter() - t0))
        advance(prompt_tokens)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            logits = session.eval([int(np.argmax(logits[:known]))], logits="last")
        decode.append(decode_tokens / (time.perf_counter() - t0))
        advance(decode_tokens)
        if session.n_past < position:
            advance(position - session.n_past)
            session.eval(_prompt(model.n_vocab, position - session.n_past, seed=1), logits=None)
        t0 = time.perf_counter()
        for _ in range(AT_POSITION_STEPS):
            logits = session.eval([int(np.argmax(logits[:known]))], logits="last")
        at_position.append(1000 * (time.perf_counter() - t0) / AT_POSITION_STEPS)
        advance(AT_POSITION_STEPS)
    return BenchResult("sinkstream", threads, statistics.median(prefill), statistics.median(decode),
                       statistics.median(at_position), position, peak_rss_mib(),
                       {"prefill": prefill, "decode": decode, "at_position": at_position})


def bench_llama_cpp(model_path: str, threads: int, prompt_tokens: int = 512, decode_tokens: int = 256,
                    position: int = 2048, repeats: int = 3,
                    progress: Callable[[int], object] | None = None) -> BenchResult | None:
    """The same measurements with llama.cpp (llama-cpp-python), or None when it is not installed."""
    advance = progress or (lambda n: None)
    try:
        import llama_cpp  # type: ignore[import-not-found]
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=position + 64, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False, logits_all=False)
    n_vocab = llm.n_vocab()
    prompt = _prompt(n_vocab, prompt_tokens).tolist()

    def next_token() -> int:
        # Greedy, from the last evaluated token's logits, read from the context itself:
        # llama-cpp-python 0.3.x no longer copies logits into `llm.scores` unless logits_all.
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    prefill, decode, at_position = [], [], []
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        prefill.append(prompt_tokens / (time.perf_counter() - t0))
        advance(prompt_tokens)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            llm.eval([next_token()])
        decode.append(decode_tokens / (time.perf_counter() - t0))
        advance(decode_tokens)
        if llm.n_tokens < position:
            advance(position - llm.n_tokens)
            llm.eval(_prompt(n_vocab, position - llm.n_tokens, seed=1).tolist())
        t0 = time.perf_counter()
        for _ in range(AT_POSITION_STEPS):
            llm.eval([next_token()])
        at_position.append(1000 * (time.perf_counter() - t0) / AT_POSITION_STEPS)
        advance(AT_POSITION_STEPS)
    return BenchResult("llama.cpp", threads, statistics.median(prefill), statistics.median(decode),
                       statistics.median(at_position), position, peak_rss_mib(),
                       {"prefill": prefill, "decode": decode, "at_position": at_position})


def format_table(results: list[BenchResult]) -> str:
    lines = [f"{'engine':<11} {'threads':>7} {'prefill tok/s':>14} {'decode tok/s':>13} "
             f"{'ms/token @pos':>14} {'peak RSS MiB':>13}"]
    for r in results:
        lines.append(f"{r.engine:<11} {r.threads:>7} {r.prefill_tok_s:>14.1f} {r.decode_tok_s:>13.1f} "
                     f"{r.decode_ms_at_position:>9.2f} @{r.position:<4} {r.peak_rss_mib:>13.1f}")
    ours = {r.threads: r for r in results if r.engine == "sinkstream"}
    for r in results:
        if r.engine == "llama.cpp" and r.threads in ours:
            o = ours[r.threads]
            lines.append(f"ratio sinkstream / llama.cpp at {r.threads} thread(s): prefill "
                         f"{o.prefill_tok_s / r.prefill_tok_s:.2f}x, decode {o.decode_tok_s / r.decode_tok_s:.2f}x")
    return "\n".join(lines)


def soak(model, n_tokens: int, every: int, chunk: int, decode_per_stretch: int,
         seed: int = 0, window: int = 1020, n_sink: int = 4, out=None) -> list[dict]:
    """Streams n_tokens through one streaming session, alternating prefill chunks of `chunk` tokens
    and decode steps (decode_per_stretch per stretch of `every` tokens), and returns one row per
    stretch: tokens so far, RSS, median decode ms/token, prefill ms/token, cache figures, and
    whether every logit was finite. Rows are also printed to `out` as they come."""
    rng = np.random.default_rng(seed)
    session = model.session(mode="streaming", n_sink=n_sink, window=window)
    rows = []
    fed = 0
    while fed < n_tokens:
        target = min(n_tokens, fed + every)
        decode_times, prefill_time, prefill_tokens, finite = [], 0.0, 0, True
        while fed < target:
            if target - fed > decode_per_stretch:
                n = min(chunk, target - fed - decode_per_stretch)
                tokens = rng.integers(0, model.n_vocab, size=n).astype(np.int32)
                t0 = time.perf_counter()
                logits = session.eval(tokens, logits="last")
                prefill_time += time.perf_counter() - t0
                prefill_tokens += n
            else:
                token = int(rng.integers(0, model.n_vocab))
                t0 = time.perf_counter()
                logits = session.eval([token], logits="last")
                decode_times.append(time.perf_counter() - t0)
                n = 1
            finite = finite and bool(np.isfinite(logits).all())
            fed += n
        row = {
            "tokens": session.n_past,
            "rss_mib": round(process_memory_mib("VmRSS"), 1),
            "decode_ms_per_token": round(1000 * float(np.median(decode_times)), 3) if decode_times else float("nan"),
            "prefill_ms_per_token": round(1000 * prefill_time / prefill_tokens, 3) if prefill_tokens else float("nan"),
            "n_cached": session.n_cached,
            "kv_mib": round(session.kv_bytes / 2**20, 2),
            "finite": finite,
        }
        rows.append(row)
        if out is not None:
            print("  ".join(f"{k}={v}" for k, v in row.items()), file=out, flush=True)
    return rows
