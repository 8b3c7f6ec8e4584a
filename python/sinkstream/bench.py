"""Speed measurements shared by `sinkstream bench` and benchmarks/bench_engine.py.

Figures (each the median of several runs, the machine is noisy):
- prefill tok/s: a fresh session reads an N-token prompt in one eval;
- decode tok/s: then generates M tokens one by one (greedy: sampling cost is not the engine's);
- decode ms/token at a stream position (2K by default): the session first reads that many tokens;
- peak RSS of the process (VmHWM) while that model is benchmarked;
- decode GB/s: the bytes one decode token reads, weights (decode_matrices) and K/V cache rows
  (counted by the session's attention over the decode phase, f16), x decode tok/s, and that as a %
  of the machine's memory read bandwidth (memory_read_bandwidth), probed right before and after
  each run (BandwidthProbes): a shared or virtual machine's bandwidth drifts by tens of percent
  within the hour, so a figure taken minutes earlier would misstate the run's share of it;
- per GGML weight type: the MB of those weights per decode token, the time the decode matmuls of that
  type take per token (time_decode_matmuls: the engine's kernels alone), and their GB/s.
When llama-cpp-python is importable, the same figures for llama.cpp on the same GGUF, the same
thread count, and the ratios.
"""
from __future__ import annotations

import dataclasses
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import _core


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
    # K/V cache bytes attention read per decode token over the decode phase (sinkstream's count; the
    # same positions cost any engine the same rows while the cache holds every token).
    cache_bytes_per_token: float = 0.0


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


def reset_peak_rss() -> None:
    """From now on peak_rss_mib() reports the peak since this call (Linux: writing 5 to
    /proc/self/clear_refs resets VmHWM to the current RSS), so that each model of a multi-model bench
    gets its own peak, not an earlier model's. Does nothing where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


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
    entries = 0
    for _ in range(repeats):
        session = model.session(mode="streaming", n_sink=4, window=window, n_threads=threads, batch_size=512)
        t0 = time.perf_counter()
        logits = session.eval(prompt, logits="last")
        prefill.append(prompt_tokens / (time.perf_counter() - t0))
        advance(prompt_tokens)
        entries_before = session._core.entries_attended
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            logits = session.eval([int(np.argmax(logits[:known]))], logits="last")
        decode.append(decode_tokens / (time.perf_counter() - t0))
        entries = session._core.entries_attended - entries_before
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
                       {"prefill": prefill, "decode": decode, "at_position": at_position},
                       cache_bytes_per_token(model, entries / max(1, decode_tokens)))


def cache_bytes_per_token(model, entries_per_token: float) -> float:
    """K/V bytes an f16 cache gives attention per token, from Session.entries_attended's count (one
    entry per query head, layer and attended token): each KV head's rows serve its group of query
    heads once, a key and a value of head_dim halves each."""
    core = model._core
    group = core.n_head // core.n_head_kv
    return entries_per_token / group * core.head_dim * 2 * 2


class PeerCrashed(RuntimeError):
    """llama.cpp's process died during its measurement (its message says how)."""


def bench_llama_cpp(model_path: str, threads: int, prompt_tokens: int = 512, decode_tokens: int = 256,
                    position: int = 2048, repeats: int = 3,
                    progress: Callable[[int], object] | None = None) -> BenchResult | None:
    """The same measurements with llama.cpp (llama-cpp-python), or None when it is not installed.

    llama.cpp runs in a child process: its peak RSS is its own, and a crash of llama.cpp (seen: its
    AMX matmul on a Xeon with AMX, in a GGML_NATIVE build, segfaulting on prompts) raises
    PeerCrashed with the signal and llama.cpp's last output, instead of killing this process."""
    advance = progress or (lambda n: None)
    args = json.dumps([model_path, threads, prompt_tokens, decode_tokens, position, repeats])
    child = subprocess.Popen([sys.executable, "-c", "from sinkstream.bench import _llama_cpp_child; _llama_cpp_child()",
                              args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: BenchResult | None = None
    missing = False
    with child:
        stderr_lines: list[str] = []
        collect = threading.Thread(target=lambda: stderr_lines.extend(child.stderr), daemon=True)
        collect.start()
        for line in child.stdout:
            kind, _, payload = line.rstrip("\n").partition(" ")
            if kind == "progress":
                advance(int(payload))
            elif kind == "result":
                result = BenchResult(**json.loads(payload))
            elif kind == "missing":
                missing = True
        child.wait()
        collect.join()
    if child.returncode != 0:
        code = child.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"exit status {code}"
        tail = "".join(stderr_lines[-5:]).strip()
        raise PeerCrashed(f"llama.cpp ({threads} thread(s)) died with {how} while measuring {model_path}"
                          + (f"; its last output: {tail}" if tail else ""))
    if missing:
        return None
    if result is None:
        raise PeerCrashed(f"llama.cpp ({threads} thread(s)) gave no result for {model_path}")
    return result


def _llama_cpp_child() -> None:
    """The child process of bench_llama_cpp: reports progress and the result on stdout, one line each."""
    model_path, threads, prompt_tokens, decode_tokens, position, repeats = json.loads(sys.argv[1])
    try:
        import llama_cpp  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        print("missing", flush=True)
        return
    result = _bench_llama_cpp_here(model_path, threads, prompt_tokens, decode_tokens, position, repeats,
                                   lambda n: print(f"progress {n}", flush=True))
    print("result " + json.dumps(dataclasses.asdict(result)), flush=True)


def _bench_llama_cpp_here(model_path: str, threads: int, prompt_tokens: int, decode_tokens: int, position: int,
                          repeats: int, advance: Callable[[int], object]) -> BenchResult:
    """bench_llama_cpp's measurements, in this process (llama_cpp importable)."""
    import llama_cpp  # type: ignore[import-not-found]

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


@dataclass
class DecodeMatrix:
    """A weight matrix one decode token multiplies by, as stored in the GGUF file."""
    name: str
    type_name: str  # GGML type, e.g. "Q4_1"
    type_id: int
    rows: int
    cols: int
    offset: int     # absolute byte offset of its data in the file
    n_bytes: int


def _forward_position(matrix: DecodeMatrix) -> tuple[int, int]:
    # Layers by index, then the head (output.weight, or token_embd.weight when tied).
    block = re.match(r"blk\.(\d+)\.", matrix.name)
    return (0, int(block.group(1))) if block else (1, 0)


def decode_matrices(path: str) -> list[DecodeMatrix]:
    """The weight matrices one decode token reads, in forward order: every 2-D weight except norms
    (a few KB) and token_embd.weight (a token looks up one row of it), which counts only when the
    file has no output.weight: then the head is tied to it and multiplies by all of it.
    Mixture-of-experts tensors (3-D, of which a token reads only its experts) are left out (see
    expert_tensors)."""
    infos = _core.GgufFile.open(path).tensor_infos()
    tied = not any(name == "output.weight" for name, *_ in infos)
    matrices = []
    for name, dims, type_name, type_id, offset, n_bytes in infos:
        if len(dims) != 2 or "norm" in name:
            continue
        if name == "token_embd.weight" and not tied:
            continue
        cols, rows = dims  # ggml order: the contiguous axis first
        matrices.append(DecodeMatrix(name, type_name, type_id, rows, cols, offset, n_bytes))
    return sorted(matrices, key=_forward_position)  # sorted() is stable: file order within a layer


def expert_tensors(path: str) -> list[str]:
    """Names of the file's tensors of more than 2 dimensions (mixture-of-experts weights)."""
    return [name for name, dims, *_ in _core.GgufFile.open(path).tensor_infos() if len(dims) > 2]


def bytes_per_type(matrices: list[DecodeMatrix]) -> dict[str, int]:
    """Bytes one decode token reads of each weight type, in order of first use."""
    totals: dict[str, int] = {}
    for m in matrices:
        totals[m.type_name] = totals.get(m.type_name, 0) + m.n_bytes
    return totals


def read_weights(path: str, matrices: list[DecodeMatrix]) -> list[tuple[int, bytes, int, int]]:
    """The matrices' raw bytes as matmul_bench_sequence takes them: (type_id, bytes, rows, cols)."""
    weights = []
    with open(path, "rb") as f:
        for m in matrices:
            f.seek(m.offset)
            weights.append((m.type_id, f.read(m.n_bytes), m.rows, m.cols))
    return weights


def time_decode_matmuls(matrices: list[DecodeMatrix], weights: list[tuple[int, bytes, int, int]], threads: int,
                        repeats: int = 3, iterations: int = 8) -> dict[str, float]:
    """Seconds per decode token the matmuls of each weight type take, median of `repeats` runs:
    _core.matmul_bench_sequence runs the engine's kernels (active ISA, `threads` threads) on one
    token over all the matrices in forward order, as decoding does, so that weights larger than the
    caches stream from memory as they do there; each run is the mean of `iterations` passes."""
    isa = _core.cpu_features()["active_isa"]
    runs = []
    for _ in range(repeats):
        seconds = _core.matmul_bench_sequence(weights, 1, isa, threads, iterations)
        per_type: dict[str, float] = defaultdict(float)
        for m, s in zip(matrices, seconds):
            per_type[m.type_name] += s
        runs.append(per_type)
    return {type_name: statistics.median(run[type_name] for run in runs) for type_name in runs[0]}


BANDWIDTH_BUFFER_BYTES = 1 << 30  # many times common last-level caches (tens of MB): passes read DRAM
BANDWIDTH_RUNS = 5


def memory_read_bandwidth(threads: int, buffer_bytes: int | None = None, runs: int | None = None) -> float:
    """The machine's memory read bandwidth with `threads` threads, in bytes/s: the best of `runs`
    timed passes over a buffer, in each of which every thread takes np.max of its own contiguous
    slice. numpy releases the GIL inside the reduction, so the threads read in parallel; and np.max
    over uint64 runs several times faster on cached data than DRAM delivers it, so the pass waits on
    memory, not on numpy (checked when this was written: ~80 GB/s on a cached 1 MiB buffer against
    ~30 GB/s from DRAM on one core). It is a plain streaming read: the matmul kernels, which prefetch
    rows ahead in software, were seen to read a large matrix ~15% faster on one core."""
    buffer_bytes = BANDWIDTH_BUFFER_BYTES if buffer_bytes is None else buffer_bytes
    runs = BANDWIDTH_RUNS if runs is None else runs
    buffer = np.empty(buffer_bytes // 8, dtype=np.uint64)
    buffer.fill(1)  # written, so every page is its own memory (untouched pages share one zero page)
    slices = np.array_split(buffer, threads)
    best = 0.0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(runs):
            t0 = time.perf_counter()
            list(pool.map(np.max, slices))
            best = max(best, buffer.nbytes / (time.perf_counter() - t0))
    return best


def probe_bandwidth(threads: int) -> float:
    """memory_read_bandwidth(threads) measured in a child process, so that its buffer (1 GiB) never
    counts toward this process's peak RSS, which the engines' tables report."""
    code = ("import sys; from sinkstream.bench import memory_read_bandwidth as m; "
            "print(m(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))")
    done = subprocess.run([sys.executable, "-c", code, str(threads), str(BANDWIDTH_BUFFER_BYTES),
                           str(BANDWIDTH_RUNS)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory bandwidth probe ({threads} thread(s)) failed: {done.stderr.strip()}")
    return float(done.stdout)


class BandwidthProbes:
    """The memory bandwidth next to each measurement: a probe before it (at construction, or the
    previous measurement's closing probe) and one after it (around_last); the mean of the two is
    the figure its % of mem bw is taken against."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.last = probe_bandwidth(threads)

    def around_last(self) -> float:
        """Probes again; the mean of this probe and the one before (bytes/s)."""
        before, self.last = self.last, probe_bandwidth(self.threads)
        return (before + self.last) / 2


def format_table(results: list[BenchResult], decode_bytes: int | None = None,
                 bandwidth: dict[tuple[str, int], float] | None = None) -> str:
    """The engines' table; with decode_bytes (weights read per decode token) a decode GB/s column
    (weights plus the K/V rows of sinkstream's run at the same thread count), and with bandwidth
    (bytes/s per (engine, threads): the memory bandwidth around that run) that and decode GB/s as a
    % of it."""
    cache_bytes = {r.threads: r.cache_bytes_per_token for r in results if r.engine == "sinkstream"}
    header = (f"{'engine':<11} {'threads':>7} {'prefill tok/s':>14} {'decode tok/s':>13} "
              f"{'ms/token @pos':>14} {'peak RSS MiB':>13}")
    if decode_bytes is not None:
        header += f" {'decode GB/s':>12}"
        if bandwidth is not None:
            header += f" {'mem bw GB/s':>12} {'% of mem bw':>12}"
    lines = [header]
    for r in results:
        line = (f"{r.engine:<11} {r.threads:>7} {r.prefill_tok_s:>14.1f} {r.decode_tok_s:>13.1f} "
                f"{r.decode_ms_at_position:>9.2f} @{r.position:<4} {r.peak_rss_mib:>13.1f}")
        if decode_bytes is not None:
            decode_bytes_per_s = (decode_bytes + cache_bytes.get(r.threads, 0.0)) * r.decode_tok_s
            line += f" {decode_bytes_per_s / 1e9:>12.1f}"
            if bandwidth is not None:
                around = bandwidth[(r.engine, r.threads)]
                line += f" {around / 1e9:>12.1f} {100 * decode_bytes_per_s / around:>12.0f}"
        lines.append(line)
    ours = {r.threads: r for r in results if r.engine == "sinkstream"}
    for r in results:
        if r.engine == "llama.cpp" and r.threads in ours:
            o = ours[r.threads]
            lines.append(f"ratio sinkstream / llama.cpp at {r.threads} thread(s): prefill "
                         f"{o.prefill_tok_s / r.prefill_tok_s:.2f}x, decode {o.decode_tok_s / r.decode_tok_s:.2f}x")
    return "\n".join(lines)


def format_type_table(matrices: list[DecodeMatrix], seconds: dict[int, dict[str, float]],
                      bandwidth: dict[int, float], isa: str) -> str:
    """Per weight type and thread count: the ISA level of the kernel that serves the type, MB read
    per decode token, the type's decode matmul time per token (seconds[threads][type], from
    time_decode_matmuls), GB/s and % of the machine's memory bandwidth around those timings
    (bandwidth[threads], bytes/s); then the same for all types together."""
    n_bytes_of = bytes_per_type(matrices)
    type_id_of = {m.type_name: m.type_id for m in matrices}
    lines = [f"{'weights':<8} {'kernel':>13} {'MB/token':>9} {'threads':>7} {'ms/token':>9} {'GB/s':>7} "
             f"{'% of mem bw':>12}"]

    def row(label: str, kernel: str, n_bytes: int, threads: int, s: float) -> str:
        return (f"{label:<8} {kernel:>13} {n_bytes / 1e6:>9.3f} {threads:>7} {1e3 * s:>9.3f} "
                f"{n_bytes / s / 1e9:>7.1f} {100 * n_bytes / s / bandwidth[threads]:>12.0f}")

    for threads, per_type in seconds.items():
        for type_name, n_bytes in n_bytes_of.items():
            kernel = _core.matmul_kernel_isa(type_id_of[type_name], isa)
            lines.append(row(type_name, kernel, n_bytes, threads, per_type[type_name]))
        lines.append(row("all", "", sum(n_bytes_of.values()), threads, sum(per_type.values())))
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
