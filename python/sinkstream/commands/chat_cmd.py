"""`sinkstream chat [MODEL]`: an interactive conversation on one session (the model's chat template).

Each message you type is a user turn; the reply streams back. The session keeps the conversation
at constant memory (attention sinks + recent window), however long it runs.

  Enter              sends the line (empty lines are ignored)
  line ending in \\   continues the message on the next line
  \"\"\"                on a line of its own starts a multi-line message, and another one ends it
  arrow keys         edit the line and walk the history (kept in the history file)
  /reset             forget the conversation (a new stream)
  /save FILE         save the conversation and the session's cache to FILE
  /load FILE         continue a conversation saved with /save (same model and session options)
  /stats             the stream's position, cache use and the last reply's speed
  /help              this list
  /exit, Ctrl-D      end the chat; Ctrl-C during a reply stops that reply
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable

from . import _generation_args
from ._generation_args import (add_model_arguments, add_sampling_arguments, open_session, print_stats,
                               sampling_options, use_replacing_stdout, write_pieces)

EXIT_COMMANDS = ("/exit", "/quit")
MULTILINE_FENCE = '"""'
HISTORY_LENGTH = 1000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="system message that opens the conversation")
    p.add_argument("--keep-system-prompt", action="store_true",
                   help="keep the whole --system message in the cache for good, as the attention sinks "
                        "(n_sink = its length in tokens; llama.cpp's --keep), however long the chat")
    p.add_argument("--load", default=None, metavar="FILE", help="continue a conversation saved with /save")
    p.add_argument("--history-file", default=None, metavar="FILE",
                   help="where typed lines are kept for the arrow keys (default: "
                        "$XDG_STATE_HOME/sinkstream/chat_history; '' keeps none)")
    add_sampling_arguments(p)
    p.set_defaults(run=run)


def default_history_file() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "sinkstream", "chat_history")


class LineEditor:
    """input() with line editing and a persistent history when the standard library's readline is
    available and the input is a terminal; plain input() otherwise (pipes, tests)."""

    def __init__(self, history_file: str | None):
        self.readline: Any = None
        self.history_file = history_file or None
        if not sys.stdin.isatty():
            return
        try:
            import readline
        except ImportError:  # some Python builds have no readline: editing is then the terminal's
            return
        self.readline = readline
        readline.set_history_length(HISTORY_LENGTH)
        if self.history_file and os.path.exists(self.history_file):
            try:
                readline.read_history_file(self.history_file)
            except OSError as e:
                print(f"chat: could not read the history file {self.history_file}: {e}", file=sys.stderr)

    def read(self, prompt: str) -> str:
        return input(prompt)

    def close(self) -> None:
        if self.readline is None or not self.history_file:
            return
        try:
            os.makedirs(os.path.dirname(self.history_file) or ".", exist_ok=True)
            self.readline.write_history_file(self.history_file)
        except OSError as e:
            print(f"chat: could not write the history file {self.history_file}: {e}", file=sys.stderr)


def read_message(read: Callable[[str], str]) -> str | None:
    """One message: a line, lines joined by a trailing backslash, or a fenced block. Empty messages
    are skipped. None at end of input."""
    while True:
        try:
            line = read("> ")
        except EOFError:
            return None
        if line.strip() == MULTILINE_FENCE:
            lines = []
            while True:
                try:
                    line = read(". ")
                except EOFError:
                    break
                if line.strip() == MULTILINE_FENCE:
                    break
                lines.append(line)
            message = "\n".join(lines)
        else:
            lines = []
            while line.endswith("\\"):
                lines.append(line[:-1])
                try:
                    line = read(". ")
                except EOFError:
                    line = ""
                    break
            lines.append(line)
            message = "\n".join(lines)
        if message.strip():
            return message


def session_stats(session: Any) -> str:
    text = (f"stream position {session.n_past} | cache {session.n_cached}/{session.capacity} tokens "
            f"({session.n_sink} sinks + {session.window} window, mode {session.mode}) | "
            f"{session.kv_bytes / 2**20:.1f} MiB of K/V ({session.kv_bytes} bytes, {session.kv_type})")
    stats = getattr(session, "last_stats", None)
    if stats is not None:
        text += "\nlast reply: " + stats.summary()
    return text


def run_command(line: str, session: Any) -> bool:
    """Runs a /command; False when the line is not one (it is then a message)."""
    name, _, argument = line.strip().partition(" ")
    argument = argument.strip()
    if name == "/reset":
        session.reset()
        print("[the conversation is forgotten: a new stream]", file=sys.stderr)
    elif name in ("/save", "/load"):
        if not argument:
            print(f"usage: {name} FILE", file=sys.stderr)
        else:
            try:
                if name == "/save":
                    session.save(argument)
                    print(f"[saved {session.n_past} tokens of stream to {argument}]", file=sys.stderr)
                else:
                    session.load(argument)
                    print(f"[loaded {argument}: stream position {session.n_past}]", file=sys.stderr)
            except (OSError, ValueError) as e:
                print(f"{name}: {e}", file=sys.stderr)
    elif name == "/stats":
        print(session_stats(session), file=sys.stderr)
    elif name == "/help":
        print(__doc__, file=sys.stderr)
    elif re.fullmatch(r"/[a-z]+", name) and not argument:
        print(f"unknown command {name} (/help lists them)", file=sys.stderr)
    else:
        return False
    return True


def open_chat_session(args: argparse.Namespace) -> Any:
    if not args.keep_system_prompt:
        return open_session(args)[1]
    if not args.system:
        raise ValueError("--keep-system-prompt keeps the --system message as the sinks: give --system")
    if args.mode != "streaming" or args.n_sink is not None:
        raise ValueError("--keep-system-prompt sets n_sink itself (the system message's length, streaming mode): "
                         "leave out --n-sink and --mode")
    # load_model is looked up now, not at import: tests replace it.
    model = _generation_args.load_model(args.model, args.threads, getattr(args, "device", "cpu"))
    options = {name: getattr(args, name) for name in ("window", "kv_type") if getattr(args, name, None) is not None}
    return model.chat_session(args.system, keep_system_prompt=True, **options)


def run(args: argparse.Namespace) -> int:
    from ..chat_template import chat_turn

    options = sampling_options(args)
    session = open_chat_session(args)
    if args.load:
        session.load(args.load)
    use_replacing_stdout()
    editor = LineEditor(default_history_file() if args.history_file is None else args.history_file)
    opening = [{"role": "system", "content": args.system}] if args.system else []
    print("chat: /help lists the commands; /exit or Ctrl-D ends; Ctrl-C stops a reply.", file=sys.stderr, flush=True)
    try:
        while True:
            try:
                message = read_message(editor.read)
            except KeyboardInterrupt:
                print()
                continue
            if message is None:  # Ctrl-D: end the prompt's line
                print()
                return 0
            if message.strip() in EXIT_COMMANDS:
                return 0
            if message.startswith("/") and run_command(message, session):
                continue
            # The system message opens a conversation: the first turn of a new (or reset) stream.
            first_turn = not getattr(session, "_chat_history", None)
            turn = (opening if first_turn else []) + [{"role": "user", "content": message}]
            last, stopped = write_pieces(chat_turn(session, turn, None, progress=True, **options))
            if stopped:
                print("\n[reply stopped]", file=sys.stderr, end="")
            if not last.endswith("\n"):
                sys.stdout.write("\n")
            sys.stdout.flush()
            print_stats(getattr(session, "last_stats", None))
    finally:
        editor.close()
