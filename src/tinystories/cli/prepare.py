"""`tinystories prepare SOURCE... --out DATA_DIR`: stories in, token files out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from .command import Command, Positional, arg


@dataclass
class PrepareArgs:
    sources: Annotated[Positional[list[str]], arg(metavar="SOURCE")]
    """training stories"""
    out: Annotated[str, arg(metavar="DATA_DIR")]
    """directory to write"""
    tokenizer: Literal["bpe", "gpt-neo"] = "bpe"
    """bpe: a byte-level BPE trained on the train split; gpt-neo: the paper's GPT-2 BPE"""
    vocab_size: Annotated[int | None, arg(metavar="N")] = None
    """bpe: vocabulary size (default 4096); gpt-neo: keep the N most frequent tokens (the paper used 10000; default: all 50257)"""
    val: Annotated[list[str] | None, arg(metavar="SOURCE")] = None
    """validation stories (put it after the training SOURCEs); train stories found here are dropped"""
    val_fraction: Annotated[float | None, arg(metavar="F")] = None
    """send this share of the stories to val instead (default 0.05 without --val); not with --val"""
    seed: int = 0
    """seed of the hash that picks --val-fraction stories"""
    force: bool = False
    """replace DATA_DIR if it exists"""


def run(args: PrepareArgs) -> int:
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


COMMAND = Command(
    "prepare", help="read stories (txt, json, jsonl, parquet, hub), split, tokenize into DATA_DIR", config=PrepareArgs,
    run=run,
    description="Read stories from each SOURCE (an official .txt with <|endoftext|> lines, .json, .jsonl, .parquet "
                "with a text column, or a Hugging Face dataset such as roneneldan/TinyStories, NAME:SPLIT to pick a "
                "split), normalize whitespace, split train/val without shared stories, and tokenize into DATA_DIR "
                "(tokenizer.json, train.bin, val.bin, meta.json).")
