"""The `tinystories` command: one subcommand per job, each a thin layer over a Python function.

Each subcommand lives in its own module here with `add_parser(subparsers)`; heavy imports
(torch, transformers) happen inside the handlers so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import UserError

# Order is the pipeline's order, which is also the order of `tinystories --help`:
# prepare, presets, train, generate, evaluate, instruct, export.
COMMANDS: list[str] = ["prepare", "presets", "train", "generate", "evaluate", "instruct", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinystories",
        description="TinyStories on one machine: prepare data, train GPT-Neo models, generate and evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"tinystories {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinystories {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tinystories generate ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
