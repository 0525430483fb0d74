"""`tinystories presets`: the model presets and where their parameters go."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated

from .command import Command, Positional, arg


@dataclass
class PresetsArgs:
    names: Annotated[Positional[list[str]], arg(metavar="PRESET")] = field(default_factory=list)
    """presets to show (default: all)"""
    vocab: Annotated[int | None, arg(metavar="N")] = None
    """vocabulary size (default: the paper's 10,000; seed-nanogpt keeps its 50,304)"""
    context: Annotated[int | None, arg(metavar="N")] = None
    """context length (learned positions)"""
    hidden: Annotated[int | None, arg(metavar="N")] = None
    """hidden size"""
    layers: Annotated[int | None, arg(metavar="N")] = None
    """number of blocks"""
    heads: Annotated[int | None, arg(metavar="N")] = None
    """attention heads"""
    json: bool = False
    """print exact counts as JSON lines"""


def run(args: PresetsArgs) -> int:
    from ..model.config import presets_table

    rows = presets_table(args.vocab, args.names or None, context=args.context, hidden=args.hidden,
                         layers=args.layers, heads=args.heads)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(format_table(rows, args.vocab))
    return 0


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def format_table(rows: list[dict], vocab: int | None) -> str:
    head = ["preset", "shape", "heads", "attention", "vocab", "context", "embedding", "position", "rest", "total"]
    body = [[r["preset"], f"{r['hidden']} x {r['layers']}", f"{r['heads']} x {r['head_dim']}", r["attention"],
             f"{r['vocab_size']:,}", str(r["context"]), _m(r["embedding"]), _m(r["position"]), _m(r["rest"]),
             _m(r["total"])] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    left = {0, 1, 3}

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    out.append("")
    out.append("shape = hidden x layers; heads = heads x head size; embedding = vocab x hidden "
               "(tied with the output layer, counted once); position = context x hidden; "
               "rest = attention, MLP and norms.")
    for r in rows:
        if r["preset"] == "seed-nanogpt" and r["embedding"] > r["rest"]:
            out.append(f"seed-nanogpt was meant as a 10M model: its blocks hold {_m(r['rest'])}, but its "
                       f"{r['vocab_size']:,}-token vocabulary adds {_m(r['embedding'])} of embedding, "
                       f"{_m(r['total'])} in all.")
    return "\n".join(out)


COMMAND = Command(
    "presets", help="list model presets with their parameter counts", config=PresetsArgs, run=run,
    description="The model presets (the paper's shapes, head-size-64 variants, the seed's nanoGPT) with parameters "
                "split into token embedding, positions and the rest. Options override a field of every preset shown.")
