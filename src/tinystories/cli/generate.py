"""`tinystories generate`: stories from a model, streamed to the terminal or written as JSONL."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

from ..data.instruct.options import Instructions
from ..generate.options import Sampling
from .command import Command, Positional, arg, view

DESCRIPTION = ("Continue PROMPT (or, without one, start a story) with a model: our run/model directory or a "
               "transformers GPT-Neo directory. Stops at <|endoftext|> or --max-new-tokens. --prompts FILE takes "
               "many prompts (YAML/JSON list, JSONL, or text: one per line, or blank-line-separated blocks) and "
               "writes JSONL.")

SamplingFlags = view(Sampling, metavars={"max_new_tokens": "N", "temperature": "T", "top_k": "K", "top_p": "P",
                                         "num_beams": "B", "num_samples": "N", "seed": "S"})

InstructionFlags = view(Instructions, metavars={"words": "WORDS", "sentence": "TEXT", "features": "FEATURES",
                                                "summary": "TEXT"})


@dataclass
class GenerateArgs:
    model_dir: Annotated[Positional[str | None], arg(metavar="MODEL_DIR")] = None
    """run or model directory (default: the model that ships in the package)"""
    prompt: Annotated[Positional[str | None], arg(metavar="PROMPT")] = None
    """story beginning (default: none)"""
    sampling: SamplingFlags = field(default_factory=SamplingFlags)
    """how tokens are picked"""
    stream: bool = True
    """print text as it is made"""
    json: bool = False
    """print prompt, completions, token counts and tokens/s as JSON"""
    prompts: Annotated[str | None, arg(metavar="FILE")] = None
    """many prompts: .yaml/.yml, .json, .jsonl or text"""
    out: Annotated[str | None, arg(metavar="FILE.jsonl")] = None
    """write one JSON line per prompt here"""
    force: bool = False
    """replace --out if it exists"""
    batch_size: Annotated[int, arg(metavar="N")] = 32
    """rows decoded at once"""
    device: Annotated[str, arg(metavar="DEVICE")] = "auto"
    """auto, cpu, cuda, cuda:N or mps"""
    dtype: Literal["auto", "fp32", "bf16"] = "fp32"
    """weights and activations; auto: the faster here, measured once per machine and model"""
    instructions: InstructionFlags = field(default_factory=InstructionFlags)
    """TinyStories-Instruct (a model trained on `tinystories instruct build` records)"""


def build_prompt(args: GenerateArgs, text: str) -> str:
    """The text the model continues for one user prompt: with --words/--sentence/--features/--summary, the
    TinyStories-Instruct prompt (instruction lines, `Story:`, then the prompt as the story's start)."""
    return args.instructions.prompt(text) or text


def user_prompts(args: GenerateArgs) -> list[str]:
    from ..errors import UserError
    from ..generate.sampling import read_prompts

    if args.prompts is not None:
        if args.prompt is not None:
            raise UserError("give either PROMPT or --prompts FILE, not both")
        return read_prompts(args.prompts)
    return [args.prompt or ""]


def use_shipped_model(args) -> None:
    """No MODEL_DIR, or one word that is no path (`tinystories generate "Once upon a time"`): that is the
    prompt, and the shipped model tells the story."""
    import os

    from ..model.shipped import shipped_model_dir

    given = args.model_dir
    if given is not None and (args.prompt is not None or os.path.exists(given) or os.sep in given):
        return
    args.prompt, args.model_dir = (given if given is not None else args.prompt), str(shipped_model_dir())


def run(args: GenerateArgs) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..generate.sampling import encode_prompts
    from ..model.modeldir import check_model_dir

    args.sampling.check()
    use_shipped_model(args)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    cfg, tok = check_model_dir(args.model_dir)  # fail in a moment, before torch loads
    prompts = [build_prompt(args, t) for t in user_prompts(args)]
    encode_prompts(tok, prompts, cfg.context)
    if args.out:  # --force must not let --out replace the model's own files (or the prompts it reads)
        from ..runtime.files import check_apart

        check_apart(args.out, [args.model_dir, args.prompts])
    if args.out and Path(args.out).exists() and not args.force:
        raise UserError(f"--out {args.out} already exists; pass --force to replace it")

    import dataclasses

    import torch

    from ..generate import sampling as gen
    from ..generate.dtype import choose_dtype
    from ..model.modeldir import load_model
    from ..runtime.device import resolve_device

    model, tok = load_model(args.model_dir, resolve_device(args.device), torch.float32)
    model = model.to(choose_dtype(args.dtype, model, tok))
    s = args.sampling
    if s.seed is None and s.temperature > 0 and s.num_beams == 1:
        # reported, so that a run can be repeated
        s = dataclasses.replace(s, seed=int(torch.randint(0, 2**31, (1,)).item()))
    many = args.prompts is not None or args.out is not None
    stream = args.stream and not args.json and not many and s.num_beams == 1

    def on_text(i, j, piece):
        if i == 0 and j == 0:
            sys.stdout.write(piece)
            sys.stdout.flush()

    if stream:
        if s.num_samples > 1:
            print(_header(s, 0))
        sys.stdout.write(prompts[0])
        sys.stdout.flush()
    t0 = time.perf_counter()
    results = gen.generate(model, tok, prompts, **s.kwargs(), on_text=on_text if stream else None,
                           batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    records = [{"index": k, "prompt": p, "prompt_tokens": len(tok.encode(p)),
                "completions": [_completion_dict(c) for c in results[k]]} for k, p in enumerate(prompts)]
    new_tokens = sum(len(c.tokens) + (c.finish_reason == "eot") for r in results for c in r)
    speed = new_tokens / seconds if seconds > 0 else float("inf")
    timing = {"new_tokens": new_tokens, "seconds": round(seconds, 3), "tokens_per_s": round(speed, 1)}
    settings = {**s.kwargs(), "dtype": args.dtype}
    if many:
        return _write_many(args, records, timing, settings)
    if args.json:
        print(json.dumps({"model": str(args.model_dir), **records[0], **timing, "settings": settings},
                         ensure_ascii=False, indent=2))
        return 0
    if stream:
        print()
    for j, c in enumerate(results[0]):
        if j == 0 and stream:
            continue
        if s.num_samples > 1:
            print(_header(s, j))
        print(prompts[0] + c.text)
    print(f"[{new_tokens} tokens in {seconds:.2f}s, {speed:.0f} tokens/s"
          + (f", seed {s.seed}" if s.seed is not None else "") + "]", file=sys.stderr)
    return 0


def _header(s: Sampling, j: int) -> str:
    return f"--- {'beam' if s.num_beams > 1 else 'sample'} {j + 1}/{s.num_samples} ---"


def _write_many(args: GenerateArgs, records: list[dict], timing: dict, settings: dict) -> int:
    """--prompts or --out: one JSON line per prompt, to --out or stdout."""
    from ..runtime.files import atomic_write_text

    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not args.out:
        sys.stdout.write(lines)
        return 0
    atomic_write_text(args.out, lines)
    if args.json:
        print(json.dumps({"model": str(args.model_dir), "prompts": len(records), **timing, **settings}))
    else:
        print(f"wrote {len(records)} prompt(s) x {len(records[0]['completions'])} completion(s) to {args.out} "
              f"({timing['new_tokens']} tokens, {timing['tokens_per_s']:.0f} tokens/s)", file=sys.stderr)
    return 0


def _completion_dict(c) -> dict:
    d = {"text": c.text, "new_tokens": len(c.tokens), "finish_reason": c.finish_reason}
    if c.score is not None:
        d["score"] = round(c.score, 6)
    return d


COMMAND = Command("generate", help="write stories with a model (sampling or beam search)", config=GenerateArgs,
                  run=run, description=DESCRIPTION)
