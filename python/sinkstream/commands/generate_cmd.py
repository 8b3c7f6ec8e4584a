"""`sinkstream generate [MODEL] -p PROMPT`: streams a continuation to stdout, speed to stderr."""
from __future__ import annotations

import argparse
import sys

from ._generation_args import (add_model_arguments, add_sampling_arguments, open_session, print_stats,
                               sampling_options, use_replacing_stdout)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt",
                       description="Stream a continuation of a prompt (with --chat: the model's reply to "
                                   "it as a user message); prints prompt and generation tokens/s to stderr "
                                   "when done.")
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="the prompt; '-' reads it from standard input")
    src.add_argument("-f", "--file", help="read the prompt from this file (UTF-8)")
    p.add_argument("--chat", action="store_true",
                   help="the prompt is a user message: render it with the model's chat template and print "
                        "the assistant's reply")
    p.add_argument("--system", default=None, help="with --chat: a system message before the user message")
    p.add_argument("--no-bos", action="store_true", help="never add a BOS token (default: as the model says)")
    add_sampling_arguments(p)
    p.set_defaults(run=run)


def read_prompt(args: argparse.Namespace) -> str:
    if args.file is not None:
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    if args.prompt == "-":
        return sys.stdin.read()
    return args.prompt


def run(args: argparse.Namespace) -> int:
    from ..chat_template import chat_turn
    from ..generation import stream_text

    prompt = read_prompt(args)
    if not prompt:
        raise ValueError("the prompt is empty")
    if args.system is not None and not args.chat:
        raise ValueError("--system needs --chat (a system message belongs to a chat template)")
    options = sampling_options(args)
    _, session = open_session(args)
    use_replacing_stdout()
    add_bos = False if args.no_bos else None
    if args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system is not None else []
        messages.append({"role": "user", "content": prompt})
        pieces = chat_turn(session, messages, None, add_bos=add_bos, progress=True, **options)
    else:
        pieces = stream_text(session, prompt, add_bos=add_bos, progress=True, **options)
    last = ""
    status = 0
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
            last = piece
    except KeyboardInterrupt:
        status = 130
    finally:
        pieces.close()
    if last and not last.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    print_stats(getattr(session, "last_stats", None))
    return status
