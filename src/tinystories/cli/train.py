"""`tinystories train`: train a model on a prepared DATA_DIR into a run directory."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from .command import Command, UseAppendAction, arg

EXAMPLES = """Train a GPT-Neo model on a DATA_DIR from `tinystories prepare`. Settings come from the defaults,
then --config, then the options here, then --set. Several GPUs: torchrun --nproc_per_node=K -m tinystories
train ...

examples:
  tinystories train --data data/ts --max-time 10m --out runs/10m   # the best recipe for 10 minutes here
  tinystories train --data data/ts --preset 1M --max-time 10m --out runs/1M
  tinystories train --data data/ts --config paper --preset 8M --max-steps 2000 --out runs/8M
  tinystories train --out runs/1M --resume --max-time 20m
  tinystories train --data data/ts --preset 3M --set lr=3e-3 --set model.dropout=0.1 --max-tokens 5e6 --out runs/3M"""


@dataclass
class TrainArgs:
    """`tinystories train`: the options name TrainConfig fields (None = not given, so the recipe, the budget
    planner or the default decides); --set reaches every other field."""
    out: Annotated[str, arg(metavar="RUN_DIR")]
    """the run directory (a model directory plus state)"""
    data: Annotated[str | None, arg(metavar="DATA_DIR")] = None
    """prepared data (tokenizer, train.bin, val.bin, meta.json)"""
    preset: Annotated[str | None, arg(metavar="NAME")] = None
    """model shape, e.g. 1M, 8M, 33M, 8M-hs64 (see `tinystories presets`); without it, a --max-time run picks
    shape, batch, lr and warmup for that time on this machine (a few seconds' speed probe + the shipped
    sweep table), other runs use 1M"""
    max_steps: Annotated[int | None, arg(metavar="N")] = None
    """stop after N optimizer steps"""
    max_tokens: Annotated[str | None, arg(metavar="N")] = None
    """stop after N training tokens (e.g. 5e6)"""
    max_time: Annotated[str | None, arg(metavar="DURATION")] = None
    """stop after this much wall time (90s, 20m, 1.5h)"""
    config: Annotated[str | None, arg(metavar="FILE.toml|NAME")] = None
    """a recipe: a TOML file or a shipped name (paper, seed-nanogpt)"""
    sets: Annotated[list[str], arg(name="set", metavar="KEY=VALUE"), UseAppendAction] = \
        field(default_factory=list)
    """override one setting (lr=3e-4, batch_size=16, model.dropout=0.1)"""
    device: Annotated[str | None, arg(metavar="DEVICE")] = None
    """auto (default), cpu, cuda, cuda:N or mps"""
    resume: bool = False
    """continue RUN_DIR from its newest checkpoint"""
    force: bool = False
    """replace an existing RUN_DIR instead of refusing"""
    json: bool = False
    """print the summary as JSON"""


def run(args: TrainArgs) -> int:
    from ..errors import UserError
    from ..runtime.console import parse_duration

    if args.resume and args.force:
        raise UserError("--resume and --force contradict each other: continue the run, or replace it")
    max_tokens = None
    if args.max_tokens is not None:
        try:
            max_tokens = int(float(args.max_tokens))
        except (ValueError, OverflowError):  # "abc", "nan"; "inf" overflows int()
            raise UserError(f"--max-tokens {args.max_tokens!r}: expected a finite number, e.g. 5e6") from None
    max_time = parse_duration(args.max_time, "--max-time") if args.max_time is not None else None

    from ..train.config import CONFIG_FILE, build_config

    base = None
    if args.resume:
        saved = Path(args.out) / CONFIG_FILE
        if not saved.is_file():
            raise UserError(f"--resume: {args.out} is not a training run directory (no {CONFIG_FILE})")
        base = json.loads(saved.read_text())
        if not isinstance(base, dict):  # "[]" or "3": valid JSON, but not the settings build_config reads
            raise UserError(f"{saved}: not a training config (expected a JSON object of settings); "
                            "restore it or start a new run with --force")
    cfg = build_config(recipe=args.config, sets=args.sets, base=base, data=args.data, out=args.out,
                       preset=args.preset, max_steps=args.max_steps, max_tokens=max_tokens, max_time=max_time,
                       device=args.device)
    from ..train.loop import train  # torch: after the settings are checked, so a bad one fails in a moment

    summary = train(cfg, resume=args.resume, force=args.force)
    if summary.get("processes", 1) > 1:
        import os
        if os.environ.get("RANK", "0") != "0":
            return 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    if summary.get("stopped") == "interrupted":
        print(f"tinystories train: interrupted at step {summary['steps']}; checkpoint saved, "
              f"continue with: tinystories train --out {args.out} --resume", file=sys.stderr)
        return 130
    return 0


COMMAND = Command("train", config=TrainArgs, run=run, description=EXAMPLES,
                  help="train a model on a DATA_DIR (resumable, on CPU, one GPU or torchrun)")


def format_summary(s: dict) -> str:
    from ..runtime.console import format_duration

    processes = f", {s['processes']} processes" if s["processes"] > 1 else ""
    lines = [
        f"run       {s['run_dir']}  ({s['preset']}, {s['parameters'] / 1e6:.2f}M parameters)",
        (f"trained   {s['steps']:,} steps, {s['tokens']:,} tokens in {format_duration(s['time_s'])}: "
         f"{s['tokens_per_s']:,.0f} tokens/s ({s['device']}, {s['precision']}, {s['threads']} threads"
         f"{processes}); stopped by {s['stopped']}"),
    ]
    if s.get("budget"):
        b, r = s["budget"], s["budget"]["row"]
        m = b["picked"]["model"]
        lines.append(f"budget    {format_duration(b['budget_s'])}: {m['hidden']} x {m['layers']} layers, {m['heads']} heads, "
                     f"lr {b.get('lr', b['picked'].get('lr', r['lr'])):g}, picked from the sweep's {format_duration(r['budget_s'])} row "
                     f"(this machine: {b['probe']['flops_per_s'] / 1e9:.1f} GFLOP/s on the probe, "
                     f"{b['probe']['seconds']:.1f}s of the budget)")
    if "val_loss" in s:
        bpb = f", {s['val_bpb']:.4f} bits per byte" if "val_bpb" in s else ""
        lines.append(f"val       {s['val_loss']:.4f} nats/token{bpb} ({s['val_tokens']:,} tokens)")
    for i, text in enumerate(s.get("samples", []), 1):
        lines.append(f"\n--- sample {i} ---\n{text}")
    return "\n".join(lines)
