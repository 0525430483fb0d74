"""`tinystories synth`: write TinyStories (and TinyStories-Instruct) with any OpenAI-compatible LLM (paper section 2)."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write new stories with an LLM, the paper's way (vocabulary words, features, gates)",
        description="For story i: one verb, one noun and one adjective from the vocabulary and a random subset of "
                    "the paper's features, drawn from (seed, i); one request per story (a second one with "
                    "--instruct writes the summary). Stories pass quality gates; rejects are kept with the reason. "
                    "Rerunning the same command resumes a killed run and pays for nothing twice.")
    p.add_argument("--out", required=True, help="the corpus to write (.jsonl records, or --format txt)")
    p.add_argument("--n", type=int, required=True, help="stories to keep")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--format", choices=("jsonl", "txt"), default="jsonl",
                   help="jsonl (default): one record a line with the story, what was asked, model, template hash, "
                        "seed and token usage; txt: the official <|endoftext|> format. Both go into `prepare`")
    p.add_argument("--instruct", action="store_true",
                   help="also ask for a 1-2 line summary and write TinyStories-Instruct records (section 2.1)")
    p.add_argument("--vocab", default=None, metavar="FILE",
                   help="word list, one 'word verb|noun|adjective' a line (default: the packaged 1,500 words)")
    p.add_argument("--template", default=None, metavar="FILE",
                   help="prompt template (YAML; copy tinystories/resources/synth/template.yaml and edit it)")
    p.add_argument("--language", default=None, help="the {language} of the template (default: the template's)")
    p.add_argument("--feature-prob", type=float, default=1 / 3,
                   help="chance that each of the six features is asked for (default 1/3)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--story-tokens", type=int, default=1000, help="max_tokens of one story request (default 1000)")
    p.add_argument("--min-words", type=int, default=60, help="shorter stories are rejected (default 60)")
    p.add_argument("--max-words", type=int, default=1000, help="longer stories are rejected (default 1000)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="stop before the corpus's tokens (prompt + completion, as the server reports) pass N")
    p.add_argument("--max-cost", type=float, default=None, help="stop before the cost passes this (needs prices)")
    p.add_argument("--price-in", type=float, default=None, metavar="P", help="price per million prompt tokens")
    p.add_argument("--price-out", type=float, default=None, metavar="P", help="price per million completion tokens")
    p.add_argument("--report-sample", type=int, default=200, metavar="N",
                   help="stories compared pairwise for the Rouge-2 self-similarity (default 200)")
    p.add_argument("--force", action="store_true", help="start over: replace --out and its side files")
    # The LLM block: the same options, spelled the same way, as the judge's.
    p.add_argument("--llm-url", default=os.environ.get("TINYSTORIES_LLM_URL"), required=False,
                   help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default $TINYSTORIES_LLM_URL)")
    p.add_argument("--llm-model", default=os.environ.get("TINYSTORIES_LLM_MODEL"),
                   help="model name (default $TINYSTORIES_LLM_MODEL)")
    p.add_argument("--llm-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default OPENAI_API_KEY; unset: no key sent)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for one whole reply (default 60)")
    p.add_argument("--retries", type=int, default=5, help="retries per request on 429/5xx/timeouts (default 5)")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from ..data.synth.report import markdown
    from ..data.synth.runner import SynthConfig, run
    from ..errors import UserError
    from ..evaluate.diversity import diversity_metrics

    if not args.llm_url or not args.llm_model:
        raise UserError("--llm-url and --llm-model are required (or set $TINYSTORIES_LLM_URL and "
                        "$TINYSTORIES_LLM_MODEL)")
    cfg = SynthConfig(
        out=args.out, n=args.n, url=args.llm_url, model=args.llm_model, seed=args.seed, api_key_env=args.llm_key_env,
        concurrency=args.concurrency, timeout=args.timeout, retries=args.retries, vocab=args.vocab,
        template=args.template, language=args.language, instruct=args.instruct, format=args.format,
        temperature=args.temperature, story_tokens=args.story_tokens, max_tokens=args.max_tokens,
        max_cost=args.max_cost, price_in=args.price_in, price_out=args.price_out, feature_prob=args.feature_prob,
        min_words=args.min_words, max_words=args.max_words, report_sample=args.report_sample, force=args.force)
    # Rouge-2 self-similarity: each story's max F against the others (evaluate/diversity.py, section 4.4).
    report = run(cfg, similarity=lambda stories: diversity_metrics(stories, [])["r"])
    print(markdown(report), end="")
    if report["stopped"]:
        raise UserError(report["stopped"])
    return 0
