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


# ---------------------------------------------------------------- pieces other commands use

def add_instruction_args(parser: argparse.ArgumentParser) -> None:
    """`generate`'s instruction flags: with any of them the prompt is an Instruct prompt."""
    g = parser.add_argument_group("TinyStories-Instruct (a model trained on `tinystories instruct build` records)")
    g.add_argument("--words", default=None, help="words the story should use, comma-separated: dog,happy,run")
    g.add_argument("--sentence", default=None, help="a sentence the story should contain")
    g.add_argument("--features", default=None,
                   help="comma-separated, from Dialogue, BadEnding, MoralValue, Twist, Foreshadowing, Conflict")
    g.add_argument("--summary", default=None, help="a 1-2 line summary of the story")


def instruction_prompt(args: argparse.Namespace, story_start: str = "") -> str | None:
    """The Instruct prompt for `generate`'s flags (the story start after `Story:`), or None if none was given."""
    from .. import instruct

    if not any(getattr(args, k, None) for k in ("words", "sentence", "features", "summary")):
        return None
    words = [w.strip() for w in (args.words or "").split(",") if w.strip()]
    if args.words is not None and not words:
        raise UserError("--words: give words separated by commas, e.g. --words dog,happy,run")
    features = [f for f in (args.features or "").split(",") if f.strip()]
    for name, value in (("--sentence", args.sentence), ("--summary", args.summary)):
        if value is not None and not value.strip():
            raise UserError(f"{name}: is empty; give the text or leave the option out")
        if value is not None and "\n" in value.strip() and name == "--sentence":
            raise UserError(f"{name}: must be one line")
    return instruct.format_prompt(words=words, sentence=(args.sentence or "").strip() or None,
                                  features=features, summary=(args.summary or "").strip() or None,
                                  story_start=story_start)


def add_evaluate_parser(subparsers) -> None:
    """`tinystories evaluate instruct MODEL_DIR`: adherence to instruction sets (and judge grades)."""
    p = subparsers.add_parser(
        "instruct", help="how well a model follows TinyStories-Instruct instructions",
        description="For each instruction set, generate stories and report the share of required words used "
                    "(inflections count), whether the required sentence appears, and whether detectable features "
                    "(Dialogue, MoralValue) are present; with --judge-url, also the paper's consistency-with-"
                    "instructions and plot grades.")
    p.add_argument("model", metavar="MODEL_DIR", help="a model or run directory")
    p.add_argument("--instructions", default=None, metavar="FILE",
                   help="instruction sets in the record format (default: the packaged 50 sets)")
    p.add_argument("--plain", action="store_true",
                   help="prompt with the story start only, no instruction lines (the plain-model baseline)")
    p.add_argument("--samples", type=int, default=1, help="stories per instruction set (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint of the judge model")
    p.add_argument("--judge-model", default=None, help="the judge's model name")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write every story and score here")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from .. import instruct
    from ..modeldir import load_model
    from ..utils import atomic_write_json, resolve_device

    if args.samples < 1:
        raise UserError(f"--samples {args.samples}: must be at least 1")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if (args.judge_url is None) != (args.judge_model is None):
        raise UserError("--judge-url and --judge-model go together; give both or neither")
    sets = instruct.load_instructions(args.instructions)
    judge = instruct.make_judge(args.judge_url, args.judge_model) if args.judge_url else None
    model, tokenizer = load_model(args.model, resolve_device(args.device))
    cfg = instruct.InstructEvalConfig(samples=args.samples, max_new_tokens=args.max_new_tokens,
                                      temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                                      plain=args.plain)
    result = instruct.evaluate_instructions(model, tokenizer, sets, cfg, judge)
    result["model"] = str(args.model)
    result["instructions"] = args.instructions or "packaged:" + instruct.EVAL_SET_FILE
    if args.out:
        atomic_write_json(args.out, result)
    s = result["summary"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    mode = "plain prompts (story start only)" if args.plain else "instruction prompts"
    print(f"{args.model}: {s['sets']} instruction sets x {args.samples} = {s['stories']} stories, {mode}")
    print(f"  required words used      {pct(s['word_share'])}   (all three: {pct(s['all_words_used'])})")
    print(f"  required sentence present {pct(s['sentence_present'])}")
    print(f"  detectable features present {pct(s['feature_share'])}   (Dialogue, MoralValue)")
    for k, v in (s.get("judge") or {}).items():
        print(f"  judge {k:<20} {'n/a' if v is None else f'{v:.2f}'}")
    if args.out:
        print(f"  stories and scores: {args.out}")
    return 0
