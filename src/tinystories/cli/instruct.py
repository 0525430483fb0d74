"""`tinystories instruct`: build TinyStories-Instruct records from plain stories, check an evaluation set."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Annotated, Literal

from ..data.instruct.build import (
    BuildConfig,
    build_records,
    make_summarizer,
    word_document_frequencies,
    write_records,
)
from ..data.instruct.evalset import check_disjoint, load_instructions
from ..data.instruct.records import as_record
from ..errors import UserError
from ..llm.config import LLMConfig
from .command import Command, Positional, arg, view

# the LLM block as the summarizer shows it: --summarizer-url, --summary-cache, --no-cache, ...
SummarizerFlags = view(LLMConfig, names={"url": "summarizer-url", "key_env": "summarizer-key-env",
                                         "cache": "summary-cache"}, hide=("backoff",),
                       metavars={"url": "URL", "key_env": "VAR", "cache": "FILE"})


@dataclass
class BuildArgs:
    sources: Annotated[Positional[list[str]], arg(metavar="SOURCE")]
    """stories: .txt (<|endoftext|> lines), .json, .jsonl, .parquet, or a hub dataset name"""
    out: str
    """the instruct txt file to write"""
    seed: int = 0
    """seed for the instruction choices"""
    limit: int | None = None
    """stop after this many stories"""
    words_pick: Literal["rare", "any"] = "rare"
    """rare: each of a story's words drawn with weight 1 / the number of stories it occurs in, so every word is asked for about equally often over the corpus, as in the dataset; any: uniform over the story's words (mostly happy, girl, play)"""
    draws: Annotated[int, arg(metavar="N")] = 1
    """records per story: N passes over the sources, each drawing its own instructions, so a story comes back with other words to use; passes, not adjacent copies, so no training window holds a story twice"""
    frequency_stories: Annotated[int, arg(metavar="N")] = 50_000
    """count word frequencies on the first N stories (a first pass)"""
    summarizer_model: str | None = None
    """model name to ask the summarizer for (with --summarizer-url, an OpenAI-compatible endpoint such as http://127.0.0.1:8000/v1, that writes the summaries)"""
    summarizer: SummarizerFlags = field(default_factory=SummarizerFlags)
    """the summarizer's server and its cache (a rerun asks only for the missing summaries)"""
    force: bool = False
    """replace --out if it exists"""


@dataclass
class CheckArgs:
    instructions: Annotated[Positional[str | None], arg(metavar="INSTRUCTIONS")] = None
    """instruction sets in the record format (default: the packaged 50 evaluation sets)"""
    against: Annotated[list[str], arg(metavar="SOURCE")] = field(kw_only=True)
    """training data: instruct records or plain stories, any format `prepare` reads"""


def _build(args: BuildArgs) -> int:
    from ..data.sources import iter_stories
    from ..runtime.console import progress
    from ..runtime.files import check_apart

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be a positive number of stories")
    if args.draws < 1:
        raise UserError(f"--draws {args.draws}: must be a positive number of records per story")
    check_apart(args.out, args.sources)  # before the word-frequency pass; write_records checks again
    llm = args.summarizer
    if (llm.url is None) != (args.summarizer_model is None):
        raise UserError("--summarizer-url and --summarizer-model go together; give both or neither")
    summarize = None
    if llm.url:
        summarize = make_summarizer(llm.url, args.summarizer_model, cache="" if llm.no_cache else llm.cache,
                                    **llm.client_options())

    def stories():
        n = 0
        for src in args.sources:
            for story in iter_stories(src):
                yield story
                n += 1
                if args.limit is not None and n >= args.limit:
                    return

    df = None
    if args.words_pick == "rare":
        if args.frequency_stories < 1:
            raise UserError(f"--frequency-stories {args.frequency_stories}: must be a positive number of stories")
        if os.path.exists(args.out) and not args.force:  # before the first pass, not after it
            raise UserError(f"--out {args.out} already exists; pass --force to replace it")
        n_df = min(args.frequency_stories, args.limit or args.frequency_stories)
        df = word_document_frequencies(
            progress(itertools.islice(stories(), n_df), desc="word frequencies", unit="story", total=n_df))
    cfg = BuildConfig(seed=args.seed, word_df=df)
    passes = itertools.chain.from_iterable(stories() for _ in range(args.draws))
    n = write_records(build_records(passes, cfg, summarize), args.out, force=args.force, inputs=args.sources,
                               progress_desc="instruct build",
                               total=None if args.limit is None else args.limit * args.draws)
    print(f"wrote {n} instruct records to {args.out}")
    return 0


def _check(args: CheckArgs) -> int:
    from ..data.sources import iter_stories

    sets = load_instructions(args.instructions)
    where = args.instructions or "the packaged evaluation set"
    training = (as_record(doc) for src in args.against for doc in iter_stories(src))
    ov = check_disjoint(sets, training)
    if not ov.disjoint:
        parts = []
        for what, idx in (("word set", ov.word_sets), ("sentence", ov.sentences), ("summary", ov.summaries)):
            if idx:
                parts.append(f"{what} of set(s) {', '.join(str(i + 1) for i in idx)}")
        raise UserError(f"{where} overlaps the training data: " + "; ".join(parts))
    print(f"{where}: {len(sets)} instruction sets, disjoint from {ov.checked} training records "
          "(no shared word set, sentence or summary)")
    return 0


COMMAND = Command(
    "instruct", help="build TinyStories-Instruct records from plain stories; check evaluation sets",
    description="TinyStories-Instruct (paper section 2.1): each story preceded by a random subset of instructions "
                "(Words, Random sentence, Features, Summary).",
    subcommands=(
        Command("build", "write instruct records for plain stories (txt with <|endoftext|> lines, for `prepare`)",
                BuildArgs, _build,
                description="For each story: Words = a verb, a noun and an adjective from the story (lemminflect's "
                            "lexicon); Random sentence = any sentence but the first; Features = Dialogue (quoted "
                            "speech) and MoralValue (an explicit moral) where detected; Summary = from "
                            "--summarizer-url if given. Each record keeps a seeded random non-empty subset of these."),
        Command("check", "check that instruction sets are disjoint from training records", CheckArgs, _check,
                description="Fails if an instruction set's word set equals a training record's, its sentence "
                            "occurs in a training story, or its summary equals a training summary."),
    ))
