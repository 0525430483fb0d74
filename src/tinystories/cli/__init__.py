"""The `tinystories` command: one subcommand per job, each a thin layer over a Python function.

Each verb module here declares `COMMAND = Command(...)` (cli/command.py): a typed config dataclass whose
fields tyro turns into the flags, and a handler. A module that still has `add_parser(subparsers)` (plain
argparse) registers as before until it is converted. Heavy imports (torch, transformers) happen inside
the handlers, and `tinystories --help` imports neither tyro nor the verbs' libraries.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import UserError, user_message

# Order is the pipeline's order, which is also the order of `tinystories --help`:
# prepare, presets, train, generate, evaluate, instruct, export.
COMMANDS: list[str] = ["prepare", "presets", "train", "generate", "evaluate", "instruct", "synth", "export", "inspect", "serve", "clean"]


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def build_parser() -> argparse.ArgumentParser:
    """The verb list (and every verb still written with add_parser)."""
    parser = argparse.ArgumentParser(
        prog="tinystories",
        description="TinyStories on one machine: prepare data, train GPT-Neo models, generate and evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = _module(name)
        if hasattr(module, "COMMAND"):
            sub.add_parser(name, help=module.COMMAND.help, add_help=False)
        else:
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv and argv[0] in COMMANDS and hasattr(_module(argv[0]), "COMMAND"):
        from .command import parse

        verb = argv[0]

        def call():
            cmd, cfg = parse(_module(verb).COMMAND, argv[1:], f"tinystories {verb}")
            return cmd.run(cfg)

        return _handle(verb, call)
    args = build_parser().parse_args(argv)
    return _handle(args.command, lambda: args.func(args))


def _handle(verb: str, call) -> int:
    try:
        return int(call() or 0)
    except UserError as e:
        print(f"tinystories {verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinystories {verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tinystories generate ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a user's file or disk (errors.user_message) is one line; anything else is a bug
        message = user_message(e)
        if message is None:
            raise
        print(f"tinystories {verb}: error: {message}", file=sys.stderr)
        return 2
