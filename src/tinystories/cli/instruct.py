"""`tinystories instruct`: build TinyStories-Instruct records from plain stories, check an evaluation set."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "instruct", help="build TinyStories-Instruct records from plain stories; check evaluation sets",
        description="TinyStories-Instruct (paper section 2.1): each story preceded by a random subset of "
                    "instructions (Words, Random sentence, Features, Summary).")
    sub = p.add_subparsers(dest="instruct_command", required=True, metavar="SUBCOMMAND")

    b = sub.add_parser(
        "build", help="write instruct records for plain stories (txt with <|endoftext|> lines, for `prepare`)",
        description="For each story: Words = a verb, a noun and an adjective from the story (lemminflect's "
                    "lexicon); Random sentence = any sentence but the first; Features = Dialogue (quoted speech) "
                    "and MoralValue (an explicit moral) where detected; Summary = from --summarizer-url if given. "
                    "Each record keeps a seeded random non-empty subset of these.")
    b.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="stories: .txt (<|endoftext|> lines), .json, .jsonl, .parquet, or a hub dataset name")
    b.add_argument("--out", required=True, help="the instruct txt file to write")
    b.add_argument("--seed", type=int, default=0, help="seed for the instruction choices (default 0)")
    b.add_argument("--limit", type=int, default=None, help="stop after this many stories")
    b.add_argument("--summarizer-url", default=None,
                   help="OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) that writes the summaries")
    b.add_argument("--summarizer-model", default=None, help="model name to ask the summarizer for")
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    b.set_defaults(func=_build)

    c = sub.add_parser(
        "check", help="check that instruction sets are disjoint from training records",
        description="Fails if an instruction set's word set equals a training record's, its sentence occurs "
                    "in a training story, or its summary equals a training summary.")
    c.add_argument("instructions", nargs="?", default=None,
                   help="instruction sets in the record format (default: the packaged 50 evaluation sets)")
    c.add_argument("--against", nargs="+", required=True, metavar="SOURCE",
                   help="training data: instruct records or plain stories, any format `prepare` reads")
    c.set_defaults(func=_check)


def _build(args: argparse.Namespace) -> int:
    from .. import instruct
    from ..sources import iter_stories

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be a positive number of stories")
    if (args.summarizer_url is None) != (args.summarizer_model is None):
        raise UserError("--summarizer-url and --summarizer-model go together; give both or neither")
    summarize = None
    if args.summarizer_url:
        summarize = instruct.make_summarizer(args.summarizer_url, args.summarizer_model)

    def stories():
        n = 0
        for src in args.sources:
            for story in iter_stories(src):
                yield story
                n += 1
                if args.limit is not None and n >= args.limit:
                    return

    cfg = instruct.BuildConfig(seed=args.seed)
    n = instruct.write_records(instruct.build_records(stories(), cfg, summarize), args.out, force=args.force,
                               progress_desc="instruct build", total=args.limit)
    print(f"wrote {n} instruct records to {args.out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .. import instruct
    from ..sources import iter_stories

    sets = instruct.load_instructions(args.instructions)
    where = args.instructions or "the packaged evaluation set"
    training = (instruct.as_record(doc) for src in args.against for doc in iter_stories(src))
    ov = instruct.check_disjoint(sets, training)
    if not ov.disjoint:
        parts = []
        for what, idx in (("word set", ov.word_sets), ("sentence", ov.sentences), ("summary", ov.summaries)):
            if idx:
                parts.append(f"{what} of set(s) {', '.join(str(i + 1) for i in idx)}")
        raise UserError(f"{where} overlaps the training data: " + "; ".join(parts))
    print(f"{where}: {len(sets)} instruction sets, disjoint from {ov.checked} training records "
          "(no shared word set, sentence or summary)")
    return 0
