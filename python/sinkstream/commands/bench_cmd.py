"""`sinkstream bench [MODEL ...]`: for each model, prefill and decode speed, ms/token deep in a stream,
peak RSS, and how much of the machine's memory bandwidth decoding uses, in all and per weight type;
and llama.cpp's figures when llama-cpp-python is installed."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure prefill/decode speed and memory bandwidth use (and llama.cpp's, "
                                     "if installed)")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="GGUF files, benchmarked one after the other (default: the default model)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=256)
    p.add_argument("--position", type=int, default=2048, help="stream position for the ms/token figure")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is shown)")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp comparison")
    p.set_defaults(run=run)


def progress_bar(total: int, description: str) -> Any:
    """A tqdm bar on stderr over the tokens a measurement feeds (off when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="tok", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def parse_threads(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--threads must be comma-separated integers, got {text!r}") from None
    if any(n < 1 for n in threads):
        raise ValueError(f"--threads must be thread counts >= 1, got {text!r}")
    return threads


def run(args: argparse.Namespace) -> int:
    from .. import _core
    from ..bench import BANDWIDTH_BUFFER_BYTES, BANDWIDTH_RUNS, decode_matrices, expert_tensors
    from ..default_model import default_model_path
    from ..gguf_file import GGUFFile

    threads = parse_threads(args.threads)
    for name in ("prompt_tokens", "decode_tokens", "position", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    paths = [os.fspath(m) for m in args.models] or [default_model_path()]
    # Every file is checked before the first measurement, so that a typo in the last of several
    # models fails at once, not after minutes of benchmarks.
    matrices_of = {}
    for path in paths:
        GGUFFile(path)  # FileNotFoundError, IsADirectoryError or a GGUFError naming the problem
        matrices_of[path] = decode_matrices(path)
        if not matrices_of[path]:
            raise ValueError(f"{path}: no weight matrices (is it a model?)")

    isa = _core.cpu_features()["active_isa"]
    print(f"memory read bandwidth (mem bw): probed just before and after each measurement, in a child process; "
          f"the mean of the two.\n  A plain streaming read: the best of {BANDWIDTH_RUNS} passes over a "
          f"{BANDWIDTH_BUFFER_BYTES / 2**30:g} GiB buffer, each thread taking numpy's max of its own slice.\n"
          "  Kernels that prefetch ahead can read faster, and weights that fit the caches far faster: "
          "% of mem bw can pass 100.")
    for path in paths:
        print()
        bench_model(path, matrices_of[path], expert_tensors(path), threads, isa, args)
    return 0


def bench_model(path: str, matrices: list, experts: list[str], threads: list[int], isa: str,
                args: argparse.Namespace) -> None:
    """One model's two tables: the engines' figures, then the decode matmuls per weight type."""
    from ..bench import (BandwidthProbes, PeerCrashed, bench_llama_cpp, bench_sinkstream, format_table,
                         format_type_table, read_weights, reset_peak_rss, time_decode_matmuls, tokens_per_run)
    from ..model import Model

    decode_bytes = sum(m.n_bytes for m in matrices)
    print(f"== {path}: {decode_bytes / 1e6:.3f} MB of weights read per decode token ==", flush=True)
    reset_peak_rss()  # this model's peak, not an earlier one's
    total = args.repeats * tokens_per_run(args.prompt_tokens, args.decode_tokens, args.position)
    sizes = (args.prompt_tokens, args.decode_tokens, args.position, args.repeats)
    results = []
    bandwidth: dict[tuple[str, int], float] = {}  # (engine, threads): bytes/s around that run
    with Model(path) as model:
        for n in threads:
            probes = BandwidthProbes(n)
            print(f"sinkstream, {n} thread(s) ...", flush=True)
            with progress_bar(total, f"sinkstream, {n} thread(s)") as bar:
                results.append(bench_sinkstream(model, n, *sizes, progress=bar.update))
            bandwidth[("sinkstream", n)] = probes.around_last()
            if not args.no_llama_cpp:
                print(f"llama.cpp, {n} thread(s) ...", flush=True)
                try:
                    with progress_bar(total, f"llama.cpp, {n} thread(s)") as bar:
                        peer = bench_llama_cpp(model.path, n, *sizes, progress=bar.update)
                except PeerCrashed as e:
                    print(f"  no llama.cpp figures: {e}")
                    probes.around_last()  # the next measurement's "before" probe
                    continue
                if peer is None:
                    print("  (llama-cpp-python is not installed: pip install llama-cpp-python to compare)")
                else:
                    results.append(peer)
                    bandwidth[("llama.cpp", n)] = probes.around_last()
    # After the engines' peak RSS is taken: this holds a copy of the weights.
    print("decode matmuls per weight type ...", flush=True)
    weights = read_weights(path, matrices)
    seconds, matmul_bandwidth = {}, {}
    for n in threads:
        probes = BandwidthProbes(n)
        seconds[n] = time_decode_matmuls(matrices, weights, n, args.repeats)
        matmul_bandwidth[n] = probes.around_last()
    del weights
    cache = [r.cache_bytes_per_token for r in results if r.engine == "sinkstream"]
    if cache:
        print(f"K/V cache rows read per decode token: {max(cache) / 1e6:.3f} MB (mean over the "
              f"{args.decode_tokens} decoded tokens after the {args.prompt_tokens}-token prompt; in decode GB/s)")
    print(format_table(results, decode_bytes, bandwidth))
    print(f"decode matmuls by weight type (the kernels alone, every matrix once per token; "
          f"median of {args.repeats} run(s)):")
    print(format_type_table(matrices, seconds, matmul_bandwidth, isa))
    if experts:
        print(f"  (not counted: {len(experts)} mixture-of-experts tensor(s), e.g. {experts[0]})")
