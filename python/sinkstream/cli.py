"""The `sinkstream` command line: one subcommand per module in sinkstream.commands."""
from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    from .commands import bench_cmd, chat_cmd, generate_cmd, inspect_cmd, ppl_cmd, serve_cmd

    parser = argparse.ArgumentParser(prog="sinkstream", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sinkstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (inspect_cmd, generate_cmd, chat_cmd, ppl_cmd, bench_cmd, serve_cmd):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        print(f"sinkstream {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
