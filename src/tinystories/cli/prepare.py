"""`tinystories prepare SOURCE... --out DATA_DIR`: stories in, token files out."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="read stories (txt, json, jsonl, parquet, hub), split, tokenize into DATA_DIR",
        description="Read stories from each SOURCE (an official .txt with <|endoftext|> lines, .json, .jsonl, "
                    ".parquet with a text column, or a Hugging Face dataset such as roneneldan/TinyStories, "
                    "NAME:SPLIT to pick a split), normalize whitespace, split train/val without shared "
                    "stories, and tokenize into DATA_DIR (tokenizer.json, train.bin, val.bin, meta.json).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="training stories")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="directory to write")
    p.add_argument("--tokenizer", choices=["bpe", "gpt-neo"], default="bpe",
                   help="bpe: a byte-level BPE trained on the train split; gpt-neo: the paper's GPT-2 BPE")
    p.add_argument("--vocab-size", type=int, default=None, metavar="N",
                   help="bpe: vocabulary size (default 8192); gpt-neo: keep the N most frequent tokens "
                        "(the paper used 10000; default: all 50257)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--val", nargs="+", metavar="SOURCE", default=None,
                   help="validation stories (put it after the training SOURCEs); train stories found here are dropped")
    g.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="send this share of the stories to val instead (default 0.05 without --val)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hash that picks --val-fraction stories")
    p.add_argument("--force", action="store_true", help="replace DATA_DIR if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.prepare import prepare

    meta = prepare(args.sources, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                   val=args.val, val_fraction=args.val_fraction, force=args.force, seed=args.seed)
    tk = meta["tokenizer"]
    print(f"prepared {args.out}: {tk['kind']} tokenizer, vocab {meta['vocab_size']}, {meta['seconds']:.1f}s")
    for name, s in meta["splits"].items():
        line = (f"  {name:<5} {s['stories']:>10,} stories {s['tokens']:>13,} tokens "
                f"{s['bytes'] / 1e6:>9.1f} MB")
        if s["duplicates_removed"]:
            line += f"  ({s['duplicates_removed']:,} stories also in val removed)"
        if tk.get("unk_id") is not None:
            line += f"  {s['unk_tokens']:,} tokens outside the vocab ({s['unk_tokens'] / max(s['tokens'], 1):.3%})"
        print(line)
    return 0
