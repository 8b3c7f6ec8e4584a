"""Options shared by `sinkstream generate` and `sinkstream chat`: model/session and sampling."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..generation import SAMPLING_DEFAULTS


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="GGUF file (default: the default model)")
    g = p.add_argument_group("session")
    g.add_argument("--mode", choices=("streaming", "window", "dense", "recompute"), default="streaming",
                   help="attention over the stream (default: streaming, attention sinks + recent window)")
    g.add_argument("--n-sink", type=int, default=None, help="sink tokens kept forever (default: 4)")
    g.add_argument("--window", type=int, default=None, help="recent tokens kept (default: the session's)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("--kv-type", choices=("f16", "f32", "q8_0"), default=None,
                   help="K/V cache storage (default f16; q8_0: 8-bit blocks, about half the memory)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to compute: cpu, or cuda (needs a CUDA build and an NVIDIA GPU; default: cpu)")


def _logit_bias_item(text: str) -> tuple[int, float]:
    token, sep, bias = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID=BIAS (e.g. 2=-inf), got {text!r}") from None


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    d = SAMPLING_DEFAULTS
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=d["max_tokens"],
                   help=f"most tokens to generate; -1 = no limit (default: {d['max_tokens']})")
    g.add_argument("--temperature", type=float, default=d["temperature"],
                   help=f"0 = greedy (default: {d['temperature']})")
    g.add_argument("--top-k", type=int, default=d["top_k"], help=f"0 = off (default: {d['top_k']})")
    g.add_argument("--top-p", type=float, default=d["top_p"], help=f"1 = off (default: {d['top_p']})")
    g.add_argument("--min-p", type=float, default=d["min_p"], help=f"0 = off (default: {d['min_p']})")
    g.add_argument("--repeat-penalty", type=float, default=d["repeat_penalty"],
                   help=f"1 = off (default: {d['repeat_penalty']})")
    g.add_argument("--repeat-last-n", type=int, default=d["repeat_last_n"],
                   help=f"tokens the penalties look back over (default: {d['repeat_last_n']})")
    g.add_argument("--frequency-penalty", type=float, default=d["frequency_penalty"])
    g.add_argument("--presence-penalty", type=float, default=d["presence_penalty"])
    g.add_argument("--logit-bias", type=_logit_bias_item, action="append", default=[], metavar="ID=BIAS",
                   help="add BIAS to token ID's logit (-inf bans it); repeatable")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: a random one)")
    g.add_argument("--stop", action="append", default=[], metavar="S",
                   help="stop before this string (not printed); repeatable")


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        max_tokens=None if args.max_tokens is not None and args.max_tokens < 0 else args.max_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
        logit_bias=dict(args.logit_bias) or None, seed=args.seed, stop=tuple(args.stop),
    )


def load_model(path: str | None, n_threads: int | None, device: str = "cpu"):
    """sinkstream.Model(path or the default model); a seam for tests."""
    from .. import Model  # type: ignore[attr-defined]

    return Model(path, n_threads=n_threads, device=device)


def open_session(args: argparse.Namespace):
    model = load_model(args.model, args.threads, getattr(args, "device", "cpu"))
    kwargs: dict[str, Any] = {"mode": args.mode}
    if args.n_sink is not None:
        kwargs["n_sink"] = args.n_sink
    if args.window is not None:
        kwargs["window"] = args.window
    if getattr(args, "kv_type", None) is not None:
        kwargs["kv_type"] = args.kv_type
    return model, model.session(**kwargs)


def use_replacing_stdout() -> None:
    """Text that the terminal cannot encode prints as '?' instead of stopping the stream."""
    try:
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass


def print_stats(stats: Any) -> None:
    if stats is not None:
        print(stats.summary(), file=sys.stderr, flush=True)


def write_pieces(pieces: Any) -> tuple[str, bool]:
    """Writes a generator's text pieces to stdout as they come, then closes it. Returns (the last
    piece, whether Ctrl-C stopped it)."""
    last = ""
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
            last = piece
    except KeyboardInterrupt:
        return last, True
    finally:
        pieces.close()
    return last, False
