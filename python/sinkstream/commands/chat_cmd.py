"""`sinkstream chat [MODEL]`: an interactive conversation on one session (the model's chat template).

Each line you type is a user message; the reply streams back. An empty line, /exit or end of input
(Ctrl-D) ends the chat; Ctrl-C during a reply stops that reply and returns to the prompt.
"""
from __future__ import annotations

import argparse
import sys

from ._generation_args import (add_model_arguments, add_sampling_arguments, open_session, print_stats,
                               sampling_options, use_replacing_stdout)

EXIT_COMMANDS = ("/exit", "/quit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="system message that opens the conversation")
    add_sampling_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..chat_template import chat_turn

    options = sampling_options(args)
    _, session = open_session(args)
    use_replacing_stdout()
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    print("chat: an empty line, /exit or Ctrl-D ends; Ctrl-C stops a reply.", file=sys.stderr, flush=True)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line.strip() or line.strip() in EXIT_COMMANDS:
            return 0
        reply = chat_turn(session, line, history, **options)
        last = ""
        try:
            for piece in reply:
                sys.stdout.write(piece)
                sys.stdout.flush()
                last = piece
        except KeyboardInterrupt:
            print("\n[reply stopped]", file=sys.stderr, end="")
        finally:
            reply.close()
        if not last.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
        print_stats(getattr(session, "last_stats", None))
