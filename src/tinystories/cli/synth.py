"""`tinystories synth`: write TinyStories (and TinyStories-Instruct) with any OpenAI-compatible LLM (paper section 2)."""

from __future__ import annotations

import functools

from .command import Command, view


@functools.cache
def synth_args() -> type:
    """SynthConfig as the verb shows it, with the shared LLM block as --llm-url, --llm-key-env, --concurrency,
    --timeout, --retries (synth keeps its paid replies beside --out, so the block's --cache is not offered)."""
    from ..data.synth.runner import SynthConfig
    from ..llm.config import LLMConfig

    llm = view(LLMConfig, names={"url": "llm-url", "key_env": "llm-key-env"}, hide=("backoff", "cache", "no_cache"),
               metavars={"url": "URL", "key_env": "VAR"})
    return view(SynthConfig, names={"model": "llm-model"}, types={"llm": llm},
                metavars={"out": "FILE", "n": "N", "model": "NAME", "vocab": "FILE", "template": "FILE",
                          "max_tokens": "N", "max_cost": "X", "price_in": "P", "price_out": "P",
                          "report_sample": "N", "language": "LANG", "feature_prob": "P"})


def _synth(cfg) -> int:
    from ..data.synth.report import markdown
    from ..data.synth.runner import run
    from ..errors import UserError
    from ..evaluate.diversity import diversity_metrics

    # Rouge-2 self-similarity: each story's max F against the others (evaluate/diversity.py, section 4.4).
    report = run(cfg, similarity=lambda stories: diversity_metrics(stories, [])["r"])
    print(markdown(report), end="")
    if report["stopped"]:
        raise UserError(report["stopped"])
    return 0


COMMAND = Command(
    "synth", help="write new stories with an LLM, the paper's way (vocabulary words, features, quality gates)",
    config=synth_args, run=_synth,
    description="For story i: one verb, one noun and one adjective from the vocabulary and a random subset of the "
                "paper's features, drawn from (seed, i); one request per story (a second one with --instruct writes "
                "the summary). Stories pass quality gates; rejects are kept with the reason. Rerunning the same "
                "command resumes a killed run and pays for nothing twice.")
