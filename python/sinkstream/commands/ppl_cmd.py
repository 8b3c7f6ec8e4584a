"""`sinkstream ppl [MODEL] --text FILE|kjv --mode ...`: the StreamingLLM paper's long-text perplexity.

Runs one long token stream through each requested attention mode and prints a table (mode, cache,
tokens, evaluated positions, perplexity, ms/token). --out writes the per-token NLL of each mode
(PREFIX.<mode>.npy and .csv); --plot draws log-PPL against tokens for all modes (the paper's
Figure 3: a running mean of the NLL over the last --plot-window positions).

All modes get the same cache size C = n_sink + window: streaming keeps n_sink sinks and a window,
window keeps the last C tokens, recompute re-encodes the last C tokens per token. Dense attends to
everything, so it stops at the model's training context (its stream is cut there, with a note).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

MODES = ("streaming", "window", "dense", "recompute")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ppl", help="perplexity of a long text per attention mode (the StreamingLLM experiment)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", metavar="FILE|kjv",
                        help="UTF-8 text file, or 'kjv' for the King James Bible (needs: apt-get install bible-kjv)")
    source.add_argument("--tokens", metavar="FILE.npy",
                        help="token ids already tokenized: a 1-D integer .npy file (instead of --text)")
    p.add_argument("--mode", action="append", metavar="MODE",
                   help="streaming, window, dense or recompute; repeat or comma-separate for several "
                        "(default: streaming)")
    p.add_argument("--n-sink", type=int, default=4, help="attention sinks in streaming mode (default 4)")
    p.add_argument("--window", type=int, default=1020,
                   help="recent tokens kept in streaming mode (default 1020); the other modes get a cache "
                        "of n_sink + window tokens")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="use the first N tokens of the text")
    p.add_argument("--batch-size", type=int, default=256, help="tokens per forward chunk (default 256)")
    p.add_argument("--stride", type=int, default=1, metavar="K",
                   help="evaluate every K-th position only (others are NaN in --out files; default 1)")
    p.add_argument("--recompute-stride", type=int, default=None, metavar="K",
                   help="--stride for recompute mode only (it re-encodes C tokens per evaluated position; "
                        "default: --stride)")
    p.add_argument("--kv-type", choices=("f16", "f32", "q8_0"), default="f16",
                   help="K/V cache storage (q8_0: 8-bit blocks, half the memory of f16)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: physical cores)")
    p.add_argument("--out", metavar="PREFIX", help="write PREFIX.<mode>.npy and PREFIX.<mode>.csv (per-token NLL)")
    p.add_argument("--plot", metavar="FILE.png", help="plot log-PPL vs tokens for all modes (needs matplotlib)")
    p.add_argument("--plot-window", type=int, default=256,
                   help="positions averaged for each plotted log-PPL point (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def parse_modes(values: list[str] | None) -> list[str]:
    """--mode values (repeated and/or comma-separated) -> modes in order, without repeats."""
    modes: list[str] = []
    for value in values or ["streaming"]:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in MODES:
                raise ValueError(f"--mode: unknown mode {name!r} (choose from {', '.join(MODES)})")
            if name not in modes:
                modes.append(name)
    if not modes:
        raise ValueError("--mode: no mode given")
    return modes


def session_geometry(mode: str, n_sink: int, window: int) -> dict:
    """The same cache size C = n_sink + window for every mode (dense: everything, up to n_ctx)."""
    if mode == "streaming":
        return dict(n_sink=n_sink, window=window)
    if mode == "dense":
        return dict(n_sink=None, window=None)
    return dict(n_sink=None, window=n_sink + window)


def strided_positions(n_nll: int, stride: int) -> np.ndarray | None:
    return None if stride == 1 else np.arange(0, n_nll, stride)


def running_log_ppl(nll: np.ndarray, window: int) -> np.ndarray:
    """Mean NLL over the last `window` evaluated positions ending at each index (NaNs skipped):
    log-PPL as the paper's Figure 3 plots it. NaN where the window holds no evaluated position."""
    valid = ~np.isnan(nll)
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, nll, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    ends = np.arange(1, len(nll) + 1)
    starts = np.maximum(0, ends - window)
    n = counts[ends] - counts[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[ends] - sums[starts]) / np.maximum(n, 1), np.nan)


def write_outputs(prefix: str, mode: str, nll: np.ndarray, tokens: np.ndarray) -> list[Path]:
    """PREFIX.<mode>.npy (float64 nll) and PREFIX.<mode>.csv (index, target token, nll; exact repr)."""
    npy = Path(f"{prefix}.{mode}.npy")
    csv = Path(f"{prefix}.{mode}.csv")
    npy.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, nll)
    with open(csv, "w", encoding="utf-8") as f:
        f.write("index,target_token,nll\n")
        for i, (target, value) in enumerate(zip(tokens[1:].tolist(), nll.tolist())):
            f.write(f"{i},{target},{value!r}\n")
    return [npy, csv]


MIN_PLOTTED_POSITIONS = 20


def shared_positions_ppl(curves: dict[str, np.ndarray]) -> tuple[int, dict[str, float]]:
    """Perplexity of each mode on the positions that every mode evaluated (dense stops at the
    training context, recompute may be strided): the like-for-like comparison."""
    n = min(len(nll) for nll in curves.values())
    shared = np.ones(n, dtype=bool)
    for nll in curves.values():
        shared &= ~np.isnan(nll[:n])
    count = int(shared.sum())
    return count, {mode: (math.exp(float(nll[:n][shared].mean())) if count else math.nan)
                   for mode, nll in curves.items()}


def plot_curves(path: str, curves: dict[str, np.ndarray], window: int, title: str, capacity: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for mode, nll in curves.items():
        # A strided series (recompute evaluates every K-th position) is averaged over at least
        # MIN_PLOTTED_POSITIONS of its own points, so it is not noisier than the others.
        evaluated = int((~np.isnan(nll)).sum())
        stride = max(1, round(len(nll) / max(evaluated, 1)))
        span = window if stride == 1 else max(window, MIN_PLOTTED_POSITIONS * stride)
        y = running_log_ppl(nll, span)
        x = np.arange(1, len(nll) + 1)  # nll[i] scores token i + 1
        keep = ~np.isnan(y)
        label = f"{mode} (ppl {math.exp(np.nanmean(nll)):.2f}" + (f", every {stride}th, over {span})" if stride > 1 else ")")
        ax.plot(x[keep], y[keep], label=label, linewidth=1.2, linestyle="--" if mode == "dense" else "-",
                zorder=3 if mode == "dense" else 2)
    if capacity is not None:
        ax.axvline(capacity, color="gray", linestyle=":", linewidth=1, label=f"cache size {capacity}")
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel(f"log perplexity (mean NLL over {window} tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_token_file(path: str) -> np.ndarray:
    """Token ids from a .npy file holding a 1-D integer array."""
    try:
        tokens = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"--tokens {path}: not a .npy array file ({e})") from e
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"--tokens {path}: expected a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
    return tokens.astype(np.int64)


def _check_positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def run(args: argparse.Namespace) -> int:
    from ..model import Model
    from ..perplexity import perplexity_run
    from ..texts import load_text, tokenize_text

    modes = parse_modes(args.mode)
    _check_positive("--n-sink", args.n_sink, 0)
    _check_positive("--window", args.window)
    _check_positive("--max-tokens", args.max_tokens, 2)
    _check_positive("--stride", args.stride)
    _check_positive("--recompute-stride", args.recompute_stride)
    _check_positive("--plot-window", args.plot_window)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("sinkstream ppl: error: --plot needs matplotlib: pip install 'sinkstream[plot]' "
                  "(or pip install matplotlib)", file=sys.stderr)
            return 1

    model = Model(args.model, n_threads=args.threads)
    source = args.text if args.text is not None else args.tokens
    if args.text is not None:
        tokens = np.asarray(tokenize_text(model, load_text(args.text), args.max_tokens), dtype=np.int64)
    else:
        tokens = load_token_file(args.tokens)[:args.max_tokens]
    if len(tokens) < 2:
        raise ValueError(f"{source}: only {len(tokens)} token(s); perplexity needs at least 2")
    print(f"model: {model.path}\ntext:  {source} ({len(tokens)} tokens)", file=sys.stderr)

    rows, curves = [], {}
    for mode in modes:
        stream = tokens
        if mode == "dense" and len(tokens) - 1 > model.n_ctx_train:
            stream = tokens[:model.n_ctx_train + 1]
            print(f"note: dense mode stops at the training context: its stream is the first {len(stream)} tokens",
                  file=sys.stderr)
        stride = args.recompute_stride if mode == "recompute" and args.recompute_stride else args.stride
        result = perplexity_run(model, stream, mode, batch_size=args.batch_size, kv_type=args.kv_type,
                                positions=strided_positions(len(stream) - 1, stride), progress=not args.quiet,
                                **session_geometry(mode, args.n_sink, args.window))
        curves[mode] = result.nll
        # Cached modes process every token whatever is evaluated; recompute's cost is per evaluated position.
        per = result.n_evaluated if mode == "recompute" else len(stream) - 1
        cache = f"{result.n_sink}+{result.window}" if mode == "streaming" else str(result.capacity)
        rows.append((mode, cache, str(result.n_tokens), str(result.n_evaluated), f"{result.ppl:.4f}",
                     f"{1000 * result.seconds / max(per, 1):.2f}"))
        if args.out:
            for path in write_outputs(args.out, mode, result.nll, stream):
                print(f"wrote {path}", file=sys.stderr)

    header = ("mode", "cache", "tokens", "evaluated", "ppl", "ms/token")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))

    # Like-for-like: all modes on the positions each of them scored; and, since dense stops at the
    # training context, the others without it (the whole stream where none is strided).
    groups = [list(curves)] if len(curves) > 1 else []
    if "dense" in curves and len(curves) > 2:
        groups.append([mode for mode in curves if mode != "dense"])
    for group in groups:
        count, shared = shared_positions_ppl({mode: curves[mode] for mode in group})
        print(f"on the {count} positions {', '.join(group)} all scored: "
              + ", ".join(f"{mode} {value:.4f}" for mode, value in shared.items()))

    if args.plot:
        title = f"{Path(model.path).name} on {Path(source).name}: n_sink {args.n_sink}, window {args.window}"
        plot_curves(args.plot, curves, args.plot_window, title, args.n_sink + args.window)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
