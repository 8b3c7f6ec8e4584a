"""`sinkstream bench [MODEL]`: prefill and decode speed, ms/token deep in a stream, peak RSS; and the
same for llama.cpp when llama-cpp-python is installed."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure prefill/decode speed (and llama.cpp's, if installed)")
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
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


def run(args: argparse.Namespace) -> int:
    from ..bench import bench_llama_cpp, bench_sinkstream, format_table, tokens_per_run
    from ..model import Model

    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise ValueError(f"--threads must be comma-separated integers, got {args.threads!r}") from None
    for name in ("prompt_tokens", "decode_tokens", "position", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    model = Model(args.model)
    total = args.repeats * tokens_per_run(args.prompt_tokens, args.decode_tokens, args.position)
    sizes = (args.prompt_tokens, args.decode_tokens, args.position, args.repeats)
    results = []
    for n in threads:
        print(f"sinkstream, {n} thread(s) ...", flush=True)
        with progress_bar(total, f"sinkstream, {n} thread(s)") as bar:
            results.append(bench_sinkstream(model, n, *sizes, progress=bar.update))
        if not args.no_llama_cpp:
            print(f"llama.cpp, {n} thread(s) ...", flush=True)
            with progress_bar(total, f"llama.cpp, {n} thread(s)") as bar:
                peer = bench_llama_cpp(model.path, n, *sizes, progress=bar.update)
            if peer is None:
                print("  (llama-cpp-python is not installed: pip install llama-cpp-python to compare)")
            else:
                results.append(peer)
    print(format_table(results))
    return 0
