"""`tinystories generate`: stories from a model, streamed to the terminal or written as JSONL."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .instruct import add_instruction_args, instruction_prompt


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate", help="write stories with a model (sampling or beam search)",
        description="Continue PROMPT (or, without one, start a story) with a model: our run/model directory or "
                    "a transformers GPT-Neo directory. Stops at <|endoftext|> or --max-new-tokens. "
                    "--prompts FILE takes many prompts (YAML/JSON list, JSONL, or text: one per line, or "
                    "blank-line-separated blocks) and writes JSONL.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("prompt", nargs="?", default=None, metavar="PROMPT", help="story beginning (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample from the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling, in (0, 1]")
    p.add_argument("--num-beams", type=int, default=1, metavar="B", help="beam search with B beams (deterministic)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="completions per prompt")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="same seed, same stories")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print text as it is made (default: on)")
    p.add_argument("--json", action="store_true",
                   help="print prompt, completions, token counts and tokens/s as JSON")
    p.add_argument("--prompts", metavar="FILE", help="many prompts: .yaml/.yml, .json, .jsonl or text")
    p.add_argument("--out", metavar="FILE.jsonl", help="write one JSON line per prompt here")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="rows decoded at once (default 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights and activations")
    add_instruction_args(p)
    p.set_defaults(func=run)


def build_prompt(args, text: str) -> str:
    """The text the model continues for one user prompt: with --words/--sentence/--features/--summary, the
    TinyStories-Instruct prompt (instruction lines, `Story:`, then the prompt as the story's start)."""
    return instruction_prompt(args, text) or text


def user_prompts(args) -> list[str]:
    from ..errors import UserError
    from ..generate.sampling import read_prompts

    if args.prompts is not None:
        if args.prompt is not None:
            raise UserError("give either PROMPT or --prompts FILE, not both")
        return read_prompts(args.prompts)
    return [args.prompt or ""]


def run(args) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..generate.sampling import check_options, encode_prompts
    from ..model.modeldir import check_model_dir

    check_options(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, num_beams=args.num_beams, num_samples=args.num_samples)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    cfg, tok = check_model_dir(args.model_dir)  # fail in a moment, before torch loads
    prompts = [build_prompt(args, t) for t in user_prompts(args)]
    encode_prompts(tok, prompts, cfg.context)
    if args.out and Path(args.out).exists() and not args.force:
        raise UserError(f"--out {args.out} already exists; pass --force to replace it")

    import torch

    from ..generate import sampling as gen
    from ..model.modeldir import load_model
    from ..runtime.files import atomic_write_text
    from ..runtime.device import resolve_device

    model, tok = load_model(args.model_dir, resolve_device(args.device),
                            torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    seed = args.seed
    if seed is None and args.temperature > 0 and args.num_beams == 1:
        seed = int(torch.randint(0, 2**31, (1,)).item())  # reported, so that a run can be repeated
    many = args.prompts is not None or args.out is not None
    stream = args.stream and not args.json and not many and args.num_beams == 1

    def on_text(i, j, piece):
        if i == 0 and j == 0:
            sys.stdout.write(piece)
            sys.stdout.flush()

    label = "beam" if args.num_beams > 1 else "sample"

    def header(j: int) -> str:
        return f"--- {label} {j + 1}/{args.num_samples} ---"

    if stream:
        if args.num_samples > 1:
            print(header(0))
        sys.stdout.write(prompts[0])
        sys.stdout.flush()
    t0 = time.perf_counter()
    results = gen.generate(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           num_beams=args.num_beams, num_samples=args.num_samples, seed=seed,
                           on_text=on_text if stream else None, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    new_tokens = sum(len(c.tokens) + (c.finish_reason == "eot") for r in results for c in r)
    speed = new_tokens / seconds if seconds > 0 else float("inf")
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
                "top_p": args.top_p, "num_beams": args.num_beams, "num_samples": args.num_samples,
                "seed": seed, "dtype": args.dtype}

    def record(k: int) -> dict:
        rec = {"index": k, "prompt": prompts[k], "prompt_tokens": len(tok.encode(prompts[k])),
               "completions": [_completion_dict(c) for c in results[k]]}
        return rec

    if many:
        lines = "".join(json.dumps(record(k), ensure_ascii=False) + "\n" for k in range(len(prompts)))
        summary = {"model": str(args.model_dir), "prompts": len(prompts), "new_tokens": new_tokens,
                   "seconds": round(seconds, 3), "tokens_per_s": round(speed, 1), **settings}
        if args.out:
            atomic_write_text(args.out, lines)
            if args.json:
                print(json.dumps(summary))
            else:
                print(f"wrote {len(prompts)} prompt(s) x {len(results[0])} completion(s) to {args.out} "
                      f"({new_tokens} tokens, {speed:.0f} tokens/s)", file=sys.stderr)
        else:
            sys.stdout.write(lines)
        return 0
    if args.json:
        print(json.dumps({"model": str(args.model_dir), **record(0), "new_tokens": new_tokens,
                          "seconds": round(seconds, 3), "tokens_per_s": round(speed, 1),
                          "settings": settings}, ensure_ascii=False, indent=2))
        return 0
    if stream:
        print()
    for j, c in enumerate(results[0]):
        if j == 0 and stream:
            continue
        if args.num_samples > 1:
            print(header(j))
        print(prompts[0] + c.text)
    print(f"[{new_tokens} tokens in {seconds:.2f}s, {speed:.0f} tokens/s"
          + (f", seed {seed}" if seed is not None else "") + "]", file=sys.stderr)
    return 0


def _completion_dict(c) -> dict:
    d = {"text": c.text, "new_tokens": len(c.tokens), "finish_reason": c.finish_reason}
    if c.score is not None:
        d["score"] = round(c.score, 6)
    return d
