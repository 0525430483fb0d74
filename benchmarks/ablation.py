"""The 10-minute ablation (issue 17): which speedrun changes help a 1-10M story model on a CPU.

    python benchmarks/ablation.py --data DATA_DIR                 # run (or resume) every run, print the table
    python benchmarks/ablation.py --data DATA_DIR --report        # the table from what has finished
    python benchmarks/ablation.py --data DATA_DIR --smoke         # seconds-long runs: checks the machinery only

Every run is today's budget recipe, the row of resources/budget_table.json for the budget (what
`tinystories train --data D --max-time 10m` picks), written out as settings (so no speed probe runs and
a loaded machine cannot change the pick), with one change given on top through the CLI's `build_config`.
Its warmup is the row's warmup_frac of the steps the row's run took, scaled to the budget.
The baseline, each change alone, then all of them stacked (or `--stack a,b`), each with `--seeds` seeds.
A change wins only when it beats the baseline by more than the seed spread (max - min over seeds, the
larger of the two runs'); what loses is reported as plainly. Every finished run is appended to the JSONL (default benchmarks/results/ablation.jsonl) at
once, so an interrupted ablation resumes where it stopped. 12 variants x 2 seeds x 10 minutes is about
4.5 hours on two cores; run it on a quiet machine (the runs are timed: a loaded machine trains fewer tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from budget_sweep import git_commit, machine, refuse_interrupted

from tinystories.runtime.console import format_duration, parse_duration

RESULTS = REPO / "benchmarks" / "results" / "ablation.jsonl"
# name -> the --set settings of the change ("{eot}" = the data's <|endoftext|> id)
CHANGES: dict[str, list[str]] = {
    "muon": ["optimizer=muon"],
    "wsd": ["lr_schedule=wsd"],
    "qk_norm": ["model.qk_norm=true"],
    "relu2": ["model.mlp=relu2"],
    "zero_init": ["model.zero_init=true"],
    "untied_head": ["model.tie_embeddings=false"],
    "softcap": ["model.logit_softcap=15.0"],
    "value_emb": ["model.value_embeddings=true"],
    "x0_mix": ["model.x0_mix=true"],
    "doc_mask": ["model.doc_mask_token={eot}"],
}


def left_out(name: str, stack: list[str]) -> str | None:
    """X for a variant `stacked-X` with X in the stack (the stack without X), else None."""
    x = name.removeprefix("stacked-")
    return x if x != name and x in stack else None


def variants(stack: list[str], only: list[str] = ()) -> dict[str, list[str]]:
    """baseline, each change, the stack; and, where `only` names one, `stacked-X`: the stack without X
    (leave-one-out, which says what X adds to the others rather than what it does alone)."""
    out = {"baseline": [], **CHANGES}
    out["stacked"] = [s for name in stack for s in CHANGES[name]]
    for name in only:
        if left_out(name, stack):
            out[name] = [s for x in stack if x != left_out(name, stack) for s in CHANGES[x]]
    return out


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: that run is simply run again
            continue
    return rows


def append_result(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def base_recipe(budget_s: float, vocab_size: int | None = None) -> list[str]:
    """The budget table's recipe for `budget_s` (the longest row not longer; the shortest row below it),
    as --set settings, from the rows measured at the data's `vocab_size` where the budget has one (what
    `train --max-time` picks on that data)."""
    from tinystories.train.budget import Table

    rows = sorted(Table.load().candidates(vocab_size), key=lambda r: r.budget_s)
    row = ([r for r in rows if r.budget_s <= budget_s] or rows[:1])[-1]
    tokens = row.tokens or (row.tokens_per_s or 5000.0) * row.budget_s
    steps = tokens / (row.batch_size * row.context) * budget_s / row.budget_s
    model = {"hidden": row.hidden, "layers": row.layers, "heads": row.heads, "dropout": row.dropout,
             "position": row.position, "norm": row.norm, "mlp": row.mlp}
    return ["preset=1M", f"context={row.context}", f"batch_size={row.batch_size}", f"lr={row.lr}",
            f"weight_decay={row.weight_decay}", f"warmup_steps={max(1, round(row.warmup_frac * steps))}",
            *[f"model.{k}={json.dumps(v)}" for k, v in model.items()]]


def run_one(data: Path, name: str, sets: list[str], seed: int, budget_s: float, smoke: bool, work: Path) -> dict:
    from tinystories.data.tokenizer import Tokenizer
    from tinystories.train.config import build_config
    from tinystories.train.loop import TrainingDiverged, train

    tok = Tokenizer.load(data)
    eot = tok.eot_id
    sets = [*base_recipe(budget_s, tok.vocab_size), *[s.format(eot=eot) for s in sets], f"seed={seed}"]
    extra = {"final_eval_tokens": 4096, "eval_tokens": 1024} if smoke else {}
    cfg = build_config(sets=[*sets, "eval_every=0", "checkpoint_every=0", "samples=0"],
                       data=str(data), out=str(work / f"{name}-s{seed}"), max_time=budget_s, **extra)
    load0, t0 = os.getloadavg()[0], time.time()
    rec = {"variant": name, "seed": seed, "budget_s": budget_s, "smoke": smoke, "sets": sets}
    try:
        s = train(cfg, force=True)
    except TrainingDiverged as e:
        rec.update(bpb=None, diverged=str(e))
    else:
        refuse_interrupted(s, f"{name} seed {seed}")
        rec.update(bpb=s.get("val_bpb"), val_loss=s.get("val_loss"), steps=s["steps"], tokens=s["tokens"],
                   tokens_per_s=s["tokens_per_s"], parameters=s["parameters"], recipe=s.get("budget"))
    rec.update(wall_s=round(time.time() - t0, 1), loadavg=[round(load0, 2), round(os.getloadavg()[0], 2)],
               machine=machine(), commit=git_commit(), time=time.strftime("%Y-%m-%d %H:%M:%S"))
    return rec


def table(rows: list[dict], names: list[str], budget_s: float, smoke: bool, stack: list[str] | None = None) -> str:
    """The ablation table: mean bpb, seed spread, change vs the baseline and the verdict, tokens/s."""
    def runs(name):
        return [r for r in rows if r["variant"] == name and r["budget_s"] == budget_s and r.get("smoke") == smoke]

    def stats(name):
        rs = [r for r in runs(name) if r.get("bpb") is not None]
        if not rs:
            return None
        bpbs = [r["bpb"] for r in rs]
        return (statistics.mean(bpbs), max(bpbs) - min(bpbs), len(bpbs),
                statistics.mean(r["tokens_per_s"] for r in rs), len(runs(name)) - len(rs))

    base = stats("baseline")
    lines = ["| change | bpb (mean) | seed spread | runs | vs baseline | verdict | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        st = stats(name)
        if st is None:
            diverged = len(runs(name))
            lines.append(f"| {name} | {'diverged' if diverged else 'not run'} |  | {diverged} |  |  |  |")
            continue
        mean, spread, n, tps, bad = st
        # the stack a run recorded (older runs: the one given now)
        used = next((r["stack"] for r in runs(name) if r.get("stack")), stack)
        label = f"stacked ({' + '.join(used)})" if name == "stacked" and used else name
        if used and (x := left_out(name, used)):
            label = f"stacked without {x} ({' + '.join(u for u in used if u != x)})"
        delta, verdict = "", ""
        if base is not None and name != "baseline":
            d = mean - base[0]
            margin = max(spread, base[1])
            delta = f"{d:+.4f}"
            verdict = "wins" if d < -margin else "loses" if d > margin else "within the spread"
            if min(n, base[2]) < 2:
                verdict += " (one seed)"
        lines.append(f"| {label} | {mean:.4f} | {spread:.4f} | {n}{f' (+{bad} diverged)' if bad else ''} | {delta} | "
                     f"{verdict} | {tps:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="DATA_DIR from `tinystories prepare`")
    ap.add_argument("--budget", default="10m", help="wall-clock budget per run (default 10m)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated variants to run (default: all)")
    ap.add_argument("--stack", default=",".join(CHANGES), help="changes the 'stacked' run combines")
    ap.add_argument("--results", default=str(RESULTS), help="the JSONL every finished run is appended to")
    ap.add_argument("--work", default="", help="where run directories go (default: a temporary directory)")
    ap.add_argument("--smoke", action="store_true", help="15-second runs (unless --budget): checks the machinery")
    ap.add_argument("--report", action="store_true", help="print the table from finished runs; run nothing")
    args = ap.parse_args(argv)

    budget_s = parse_duration("15s" if args.smoke and args.budget == "10m" else args.budget, option="--budget")
    stack = [s for s in args.stack.split(",") if s]
    only = [o for o in args.only.split(",") if o]
    unknown = [s for s in stack + only if s not in CHANGES and s not in ("baseline", "stacked")
               and not left_out(s, stack)]
    if unknown:
        ap.error(f"unknown change(s) {', '.join(unknown)}; known: {', '.join(CHANGES)}, baseline, stacked, "
                 f"and stacked-X for X in --stack")
    all_variants = variants(stack, only)
    names = [n for n in all_variants if not only or n in only]
    results = Path(args.results)
    if not args.report:
        done = {(r["variant"], r["seed"]) for r in read_results(results)
                if r["budget_s"] == budget_s and r.get("smoke") == args.smoke}
        todo = [(n, s) for s in range(1, args.seeds + 1) for n in names if (n, s) not in done]
        print(f"ablation at {format_duration(budget_s)}: {len(todo)} run(s) to go "
              f"({len(names) * args.seeds - len(todo)} done), about {format_duration(len(todo) * budget_s * 1.1)}",
              flush=True)
        with tempfile.TemporaryDirectory(prefix="ablation-") as tmp:
            work = Path(args.work or tmp)
            for name, seed in todo:
                rec = run_one(Path(args.data), name, all_variants[name], seed, budget_s, args.smoke, work)
                if name.startswith("stacked"):
                    rec["stack"] = stack
                append_result(results, rec)
                bpb = f"{rec['bpb']:.4f} bpb" if rec.get("bpb") is not None else "diverged"
                print(f"  {name} seed {seed}: {bpb}, {rec.get('tokens', 0):,} tokens at "
                      f"{rec.get('tokens_per_s', 0):,.0f} tok/s (load {rec['loadavg'][0]})", flush=True)
    print(table(read_results(results), names, budget_s, args.smoke, stack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
