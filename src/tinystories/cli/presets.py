"""`tinystories presets`: the model presets and where their parameters go."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list model presets with their parameter counts",
                       description="The model presets (the paper's shapes, head-size-64 variants, the seed's "
                                   "nanoGPT) with parameters split into token embedding, positions and the rest. "
                                   "Options override a field of every preset shown.")
    p.add_argument("names", nargs="*", metavar="PRESET", help="presets to show (default: all)")
    p.add_argument("--vocab", type=int, default=None, metavar="N",
                   help="vocabulary size (default: the paper's 10,000; seed-nanogpt keeps its 50,304)")
    p.add_argument("--context", type=int, default=None, metavar="N", help="context length (learned positions)")
    p.add_argument("--hidden", type=int, default=None, metavar="N")
    p.add_argument("--layers", type=int, default=None, metavar="N")
    p.add_argument("--heads", type=int, default=None, metavar="N")
    p.add_argument("--json", action="store_true", help="print exact counts as JSON lines")
    p.set_defaults(func=run)


def run(args) -> int:
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
