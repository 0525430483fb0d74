"""`tinystories instruct`: build TinyStories-Instruct records from plain stories, check an evaluation set."""

from __future__ import annotations

import argparse
import itertools
import os

from ..errors import UserError

from ..data.instruct.build import BuildConfig, build_records, make_summarizer, word_document_frequencies, write_records
from ..data.instruct.records import as_record, format_prompt
from ..data.instruct.evalset import check_disjoint, load_instructions


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
    b.add_argument("--words-pick", choices=("rare", "any"), default="rare",
                   help="rare (default): each of a story's words drawn with weight 1 / the number of stories "
                        "it occurs in, so every word is asked for about equally often over the corpus, as in "
                        "the dataset; any: uniform over the story's words (mostly happy, girl, play)")
    b.add_argument("--draws", type=int, default=1, metavar="N",
                   help="records per story (default 1): N passes over the sources, each drawing its own "
                        "instructions, so a story comes back with other words to use; passes, not adjacent "
                        "copies, so no training window holds a story twice")
    b.add_argument("--frequency-stories", type=int, default=50_000, metavar="N",
                   help="count word frequencies on the first N stories (default 50,000; a first pass)")
    b.add_argument("--summarizer-url", default=None,
                   help="OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) that writes the summaries")
    b.add_argument("--summarizer-model", default=None, help="model name to ask the summarizer for")
    b.add_argument("--summary-cache", default=None, metavar="FILE",
                   help="summaries already paid for (default ~/.cache/tinystories/summaries.jsonl, or "
                        "$TINYSTORIES_CACHE); a rerun asks only for the missing ones")
    b.add_argument("--no-cache", action="store_true", help="do not read or write the summary cache")
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
    from ..data.sources import iter_stories
    from ..runtime.console import progress

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be a positive number of stories")
    if args.draws < 1:
        raise UserError(f"--draws {args.draws}: must be a positive number of records per story")
    if (args.summarizer_url is None) != (args.summarizer_model is None):
        raise UserError("--summarizer-url and --summarizer-model go together; give both or neither")
    summarize = None
    if args.summarizer_url:
        summarize = make_summarizer(args.summarizer_url, args.summarizer_model,
                                             cache="" if args.no_cache else args.summary_cache)

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
    n = write_records(build_records(passes, cfg, summarize), args.out, force=args.force,
                               progress_desc="instruct build",
                               total=None if args.limit is None else args.limit * args.draws)
    print(f"wrote {n} instruct records to {args.out}")
    return 0


def _check(args: argparse.Namespace) -> int:
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
    return format_prompt(words=words, sentence=(args.sentence or "").strip() or None,
                                  features=features, summary=(args.summary or "").strip() or None,
                                  story_start=story_start)


def add_evaluate_parser(subparsers) -> None:
    """`tinystories evaluate instruct MODEL_DIR`: adherence to instruction sets (and judge grades)."""
    q = subparsers.add_parser(
        "instruct", help="instruction following: required words, sentence, features (+ judge grades)",
        description="For each instruction set, write stories and report the share of required words used "
                    "(inflections count), whether the required sentence appears, and whether the detectable "
                    "features (Dialogue, MoralValue) are present; with --judge-model, also the paper's grades "
                    "(grammar, creativity, consistency with the instructions, plot). Reports go to "
                    "MODEL_DIR/eval/instruct.json and .md (or --out).")
    q.add_argument("model_dir", metavar="MODEL_DIR", help="run or model directory")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    q.add_argument("--out", default=None, metavar="DIR", help="report directory (default MODEL_DIR/eval)")
    q.add_argument("--instructions", default=None, metavar="FILE",
                   help="instruction sets in the record format, `Story:` optional (default: the packaged 50)")
    q.add_argument("--plain", action="store_true",
                   help="prompt with each set's story start only, no instruction lines (the plain-model baseline)")
    q.add_argument("--samples", type=int, default=10, help="stories per instruction set (default 10)")
    q.add_argument("--temperature", type=float, default=1.0)
    q.add_argument("--top-k", type=int, default=None)
    q.add_argument("--max-new-tokens", type=int, default=300)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N instruction sets")
    q.add_argument("--words-probe", default=None, metavar="RECORDS",
                   help="instruct records the model did not train on (e.g. built from the validation stories): "
                        "also report how much likelier each story is after its own Words line than after another "
                        "record's, in nats (against a plain model's number: any model is primed by words in its context)")
    q.add_argument("--judge-model", default=None,
                   help="judge model name; without it, only the adherence metrics are computed")
    q.add_argument("--judge-url", default=None,
                   help="OpenAI-compatible API root (default $TINYSTORIES_JUDGE_URL or OpenAI)")
    q.add_argument("--judge-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default OPENAI_API_KEY; unset = no key)")
    q.add_argument("--template", default=None, metavar="FILE",
                   help="judge conversation template (default: tinystories/resources/instruct_judge.yaml)")
    q.add_argument("--concurrency", type=int, default=8, help="judge requests in flight (default 8)")
    q.add_argument("--timeout", type=float, default=60.0, help="seconds per judge request (default 60)")
    q.add_argument("--retries", type=int, default=5, help="retries per judge request (default 5)")
    q.add_argument("--cache", default=None, metavar="FILE",
                   help="judgment cache (default ~/.cache/tinystories/instruct-eval.jsonl, or $TINYSTORIES_CACHE)")
    q.add_argument("--no-cache", action="store_true", help="do not read or write the judgment cache")
    q.set_defaults(func=_evaluate)


def _evaluate(a: argparse.Namespace) -> int:
    from ..evaluate.common import fmt
    from ..evaluate.instruct import LABELS, InstructEvalConfig, evaluate_instruct, probe_line

    if a.judge_url and not a.judge_model:
        raise UserError("--judge-url needs --judge-model (the model to ask for)")
    a.judge_url = a.judge_url or os.environ.get("TINYSTORIES_JUDGE_URL", "https://api.openai.com/v1")
    r = evaluate_instruct(InstructEvalConfig(
        a.model_dir, instructions=a.instructions, plain=a.plain, samples=a.samples, temperature=a.temperature,
        top_k=a.top_k, max_new_tokens=a.max_new_tokens, seed=a.seed, limit=a.limit, judge_model=a.judge_model,
        judge_url=a.judge_url, api_key_env=a.judge_key_env, template=a.template, concurrency=a.concurrency,
        timeout=a.timeout, max_retries=a.retries, cache="" if a.no_cache else a.cache, out=a.out,
        device=a.device, words_probe=a.words_probe))
    st = r["settings"]
    mode = "story start only (--plain)" if st["plain"] else "instruction prompts"
    print(f"{len(r['sets'])} instruction sets x {st['samples']} stories, {mode}")
    for k, v in r["summary"].items():
        if isinstance(v, dict):
            lo, hi = v["ci95"]
            ci = "" if lo is None else f"  (95% {lo:.3f}-{hi:.3f})"
            print(f"{LABELS.get(k, k.replace('judge_', 'judge: ')):<30} {fmt(v['mean'], 3)}{ci}")
    if r["words_probe"]:
        print(probe_line(r["words_probe"]))
    if "judge_unparseable" in r["summary"]:
        print(f"judge: {r['summary']['judge_unparseable']} unparseable")
    return 0
