"""`tinystories evaluate`: loss / gpt-eval / diversity / probes / instruct / compare (see tinystories.evaluate)."""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import Annotated

from .command import Command, Positional, arg, view

MODEL = {"model_dir": "MODEL_DIR", "out": "DIR"}

# The views are built on first use, so that `tinystories --help` does not import the evaluation modules.


@functools.cache
def judge_flags() -> type:
    """The judge block as both judges show it: --judge-url, --judge-key-env, --concurrency, --retries, ..."""
    from ..llm.config import JudgeConfig

    return view(JudgeConfig, names={"url": "judge-url", "key_env": "judge-key-env"}, hide=("backoff",),
                metavars={"key_env": "VAR", "cache": "FILE", "template": "FILE", "url": "URL"})


def _loss_args() -> type:
    from ..evaluate.loss import LossConfig

    return view(LossConfig, positional=("model_dir",), metavars={**MODEL, "data": "FILE_OR_DATA_DIR", "max_tokens": "N"})


def _gpt_eval_args() -> type:
    from ..evaluate.gpt_eval import GptEvalConfig

    return view(GptEvalConfig, positional=("model_dir",), types={"judge": judge_flags()},
                metavars={**MODEL, "prompts": "FILE", "limit": "N", "judge_model": "NAME"},
                judge_model=os.environ.get("TINYSTORIES_JUDGE_MODEL", "gpt-4o"))


def _diversity_args() -> type:
    from ..evaluate.diversity import DiversityConfig

    return view(DiversityConfig, positional=("model_dir",), required=("train",), metavars={**MODEL, "train": "SOURCE"})


INSTRUCT_EVAL_DESCRIPTION = (
    "For each instruction set, write stories and report the share of required words used (inflections "
    "count), whether the required sentence appears, and whether the detectable features (Dialogue, "
    "MoralValue) are present; with --judge-model, also the paper's grades (grammar, creativity, consistency "
    "with the instructions, plot). Reports go to MODEL_DIR/eval/instruct.json and .md (or --out).")


def instruct_eval_args() -> type:
    from ..evaluate.instruct import InstructEvalConfig

    return view(InstructEvalConfig, positional=("model_dir",), types={"judge": judge_flags()}, hide=("batch_size",),
                metavars={"model_dir": "MODEL_DIR", "out": "DIR", "instructions": "FILE", "limit": "N",
                          "words_probe": "RECORDS", "judge_model": "NAME"})


def evaluate_instruct_cli(a) -> int:
    from ..errors import UserError
    from ..evaluate.common import fmt
    from ..evaluate.instruct import LABELS, evaluate_instruct, probe_line

    if a.judge.url and not a.judge_model:
        raise UserError("--judge-url needs --judge-model (the model to ask for)")
    r = evaluate_instruct(a)
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


@dataclass
class ProbesArgs:
    model_dir: Annotated[Positional[str], arg(metavar="MODEL_DIR")]
    """run or model directory"""
    probes: Annotated[str | None, arg(metavar="FILE")] = None
    """probe YAML (default: the packaged 38 probes)"""
    max_new_tokens: int = 24
    """longest answer, in tokens"""
    out: Annotated[str | None, arg(metavar="DIR")] = None
    """report directory (default MODEL_DIR/eval)"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps"""


@dataclass
class CompareArgs:
    runs: Annotated[Positional[list[str]], arg(metavar="RUN")]
    """run directories, report directories or report files"""
    plot: Annotated[str, arg(metavar="PNG")] = "compare.png"
    """where to draw the plot"""
    out: Annotated[str | None, arg(metavar="FILE")] = None
    """also write the table (Markdown) and JSON here"""


def _loss(a) -> int:
    from ..evaluate.loss import evaluate_loss

    r = evaluate_loss(a)
    bpb = "-" if r["bits_per_byte"] is None else f"{r['bits_per_byte']:.4f}"
    print(f"{r['data']}: {r['tokens_scored']:,} tokens, {r['nats_per_token']:.4f} nats/token, "
          f"perplexity {r['perplexity']:.3f}, {bpb} bits/byte")
    return 0


def _gpt_eval(a) -> int:
    from ..evaluate.gpt_eval import gpt_eval

    r = gpt_eval(a)
    for cat, v in r["summary"].items():
        lo, hi = v["ci95"]
        mean = "-" if v["mean"] is None else f"{v['mean']:.2f}"
        ci = "" if lo is None else f"  (95% {lo:.2f}-{hi:.2f})"
        print(f"{cat:12s} {mean}{ci}")
    print("age groups   " + "  ".join(f"{g}:{n}" for g, n in r["age_groups"].items()))
    print(f"{r['graded']}/{r['judged']} graded, {r['unparseable']} unparseable; "
          f"{r['requests']['judgments_from_cache']} judgments from cache, {r['requests']['sent']} requests sent")
    return 0


def _diversity(a) -> int:
    from ..evaluate.diversity import diversity

    r = diversity(a)
    s = r["summary"]
    print(f"Rouge-2 precision vs original ending: {s['rouge2_p_vs_original']['mean']:.3f}")
    print(f"max Rouge-2 F between generated:      {s['max_rouge2_f_between_generated']['mean']:.3f} "
          f"(original endings {s['max_rouge2_f_between_original']['mean']:.3f})")
    print(f"Rouge-2 precision vs closest story:   {s['rouge2_p_vs_closest_training_story']['mean']:.3f}")
    print("k-grams found in training data:       " +
          "  ".join(f"{k}: {v:.1%}" for k, v in s["kgram_share_found"].items() if v is not None))
    return 0


def _probes(a: ProbesArgs) -> int:
    from ..evaluate.probes import run_probes

    r = run_probes(a.model_dir, a.probes, max_new_tokens=a.max_new_tokens, out=a.out, device=a.device)
    for cat, v in r["summary"].items():
        print(f"{cat:10s} pass {v['pass']:2d}  partial {v['partial']:2d}  fail {v['fail']:2d}  score {v['score']:.2f}")
    return 0


def _compare(a: CompareArgs) -> int:
    import json

    from ..evaluate.compare import compare
    from ..runtime.files import atomic_write_text

    r = compare(a.runs, a.plot)
    sys.stdout.write(r["markdown"])
    if a.out:
        atomic_write_text(a.out, r["markdown"])
        atomic_write_text(os.path.splitext(a.out)[0] + ".json",
                          json.dumps({k: v for k, v in r.items() if k != "markdown"}, indent=2) + "\n")
    if a.plot:
        print(f"plot: {a.plot}", file=sys.stderr)
    return 0


COMMAND = Command(
    "evaluate", help="score models: loss and bits/byte, GPT-Eval, diversity, probes, instruction following",
    description="Evaluate models the way the TinyStories paper does. Reports are written to MODEL_DIR/eval/ "
                "(or --out) as JSON and Markdown; `compare` reads them back.",
    subcommands=(
        Command("loss", "nats/token, perplexity and bits per byte on a text source or DATA_DIR", _loss_args, _loss),
        Command("gpt-eval", "GPT-Eval: completions graded by an LLM judge (paper section 3)", _gpt_eval_args, _gpt_eval),
        Command("diversity", "Rouge and k-gram overlap with the training data (paper section 4.4.1)", _diversity_args,
                _diversity),
        Command("probes", "factual, reasoning and context-tracking probes (paper section 4.2)", ProbesArgs, _probes),
        Command("instruct", "instruction following: required words, sentence, features (+ judge grades)",
                instruct_eval_args, evaluate_instruct_cli, description=INSTRUCT_EVAL_DESCRIPTION),
        Command("compare", "saved reports of several runs side by side", CompareArgs, _compare),
    ))
