"""Issue 9's check: `tinystories train --max-time T` with no preset, as a user runs it, several times.

    python benchmarks/budget_check.py --work /scratch/check --budgets 10m,30m --repeats 2

For each budget and repeat it runs, through the command line,

    tinystories train --data WORK/data --max-time T --out WORK/runs/T-N --set seed=N

(the data: the three shared training files, prepared with prepare's defaults, TinyStories-subset-valid.txt
as validation), then scores the model on the whole validation file with `tinystories evaluate loss`,
and draws three samples from the first repeat (`tinystories generate`, seeded, unedited). Results go to
benchmarks/results/budget_check.jsonl (appended; finished runs are skipped on a re-run) and a summary
with the spread to benchmarks/results/budget_check.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = Path(os.environ.get("TINYSTORIES_SHARED_DATA", REPO.parent / "shared" / "data" / "tinystories"))
TRAIN_FILES = ["TinyStories-train-head.txt", "TinyStoriesV2-GPT4-train-head.txt", "tinystories-sample-3000.json"]
VALID_FILE = "TinyStories-subset-valid.txt"
RESULTS = REPO / "benchmarks" / "results"
SAMPLE_ARGS = ["--num-samples", "3", "--seed", "1", "--max-new-tokens", "300"]


def cli(*args, capture: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "tinystories", *map(str, args)], env=env, text=True,
                          capture_output=capture)
    if proc.returncode != 0:
        sys.exit(f"tinystories {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def write_row(table_path: Path, runs: list[dict], machine: str | None = None) -> None:
    """Replace (or add) the row for the runs' budget in the table at `table_path` with the recipe they ran
    and what they measured: compute and tokens are the runs' means, bpb their mean on the whole validation
    file, efficiency their model's training FLOP/s over the reference's (the run's own probe). `machine`
    names where they ran when that is not the table's machine: the row then sits beside that budget's
    row rather than replacing it (`Row.machine`)."""
    import statistics

    from tinystories.model.config import ModelConfig
    from tinystories.train.budget import Row, Table, train_flops_per_token
    from tinystories.runtime.files import atomic_write_json

    table = Table.load(table_path)
    run_dir = Path(runs[0]["eval"]["model"]["dir"])
    cfg = json.loads((run_dir / "train_config.json").read_text())
    model = ModelConfig(**json.loads((run_dir / "config.json").read_text())["model"])
    per_token = train_flops_per_token(model)
    tokens = statistics.mean(r["tokens"] for r in runs)
    tps = statistics.mean(r["tokens_per_s"] for r in runs)
    probe = statistics.mean(r["probe"]["flops_per_s"] for r in runs)
    budget_s = runs[0]["picked_budget_s"]
    plain = ModelConfig()
    block = {k: getattr(model, k) for k in ModelConfig.ROW_OPTIONS if getattr(model, k) != getattr(plain, k)}
    row = Row(budget_s=budget_s, compute=per_token * tokens, hidden=model.hidden, layers=model.layers,
              heads=model.heads, context=cfg["context"], batch_size=cfg["batch_size"], lr=cfg["lr"],
              warmup_frac=round(cfg["warmup_steps"] / max(1, statistics.mean(r["steps"] for r in runs)), 4),
              weight_decay=cfg["weight_decay"], dropout=model.dropout, position=model.position, norm=model.norm,
              mlp=model.mlp, bpb=round(statistics.mean(r["bpb"] for r in runs), 4), tokens=int(tokens),
              tokens_per_s=round(tps, 1), tried=None, efficiency=round(tps * per_token / probe, 4),
              optimizer=cfg["optimizer"], lr_schedule=cfg["lr_schedule"], cooldown_frac=cfg["cooldown_frac"],
              muon_lr=cfg.get("muon_lr"), block=block, keep_best=cfg.get("keep_best", False),
              vocab_size=None if model.vocab_size == table.vocab_size else model.vocab_size, machine=machine)
    # one row per budget, vocabulary and machine: runs on data of another vocabulary, or tagged with another
    # machine, add a row beside the budget's
    sets = runs[0].get("sets") or []
    table.put(row, f"{len(runs)} run{'s' if len(runs) != 1 else ''} of `tinystories train --max-time`"
              + (f" with {' '.join('--set ' + kv for kv in sets)}" if sets else "")
              + f" by benchmarks/budget_check.py ({runs[0]['time'][:10]}), bpb on all of TinyStories-subset-valid.txt")
    atomic_write_json(table_path, table.to_dict())
    print(f"{table_path}: wrote the {budget_s:g}s row ({row.label()}, {row.bpb} bpb)")


def plot(specs: list[str], out: Path) -> None:
    """Bits per byte (all of the validation file) against the budget, one series per spec: a results file,
    or several joined by commas (`PATH[,PATH...][=LABEL]`; the label defaults to the recipe the last run
    picked). A series' points are joined by a line through each budget's mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.8))
    budgets: set[float] = set()
    for spec in specs:
        paths, _, label = spec.partition("=")
        runs = [json.loads(line) for path in map(Path, paths.split(",")) if path.is_file()
                for line in path.read_text().splitlines()]
        if not runs:
            continue
        xs = [r["picked_budget_s"] / 60 if r.get("picked_budget_s") else float(r["budget"].rstrip("m")) for r in runs]
        label = label or runs[-1]["label"].replace("auto ", "")
        dots = ax.scatter(xs, [r["bpb"] for r in runs], label=label, zorder=3)
        means = {x: sum(r["bpb"] for x2, r in zip(xs, runs) if x2 == x) / xs.count(x) for x in sorted(set(xs))}
        ax.plot(list(means), list(means.values()), color=dots.get_facecolor()[0], alpha=0.5, zorder=2)
        budgets.update(means)
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = sorted(budgets) or [5, 10, 30]
    ax.set_xticks(ticks, labels=[f"{t:g} min" for t in ticks])
    ax.set_xlabel("--max-time (2-core CPU)")
    ax.set_ylabel("bits per byte, all of TinyStories-subset-valid.txt")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)  # above: no point hidden
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "budget-check")
    ap.add_argument("--budgets", default="10m,30m")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=1,
                    help="the repeats run seeds FIRST .. FIRST + repeats - 1 (named BUDGET-SEED), so that one more "
                         "seed can be added to a results file without rerunning the first")
    ap.add_argument("--results", type=Path, default=RESULTS / "budget_check.jsonl")
    ap.add_argument("--table", type=Path, default=None,
                    help="after the runs, write each checked budget's row of this budget table from what they "
                         "measured (the recipe they ran, their mean tokens and compute; bpb on all of the "
                         "validation file)")
    ap.add_argument("--machine", default=None,
                    help="with --table: the machine the runs ran on, when it is not the table's (e.g. \"AMD EPYC Zen 3 "
                         "(2 cores, AVX2, no bf16), fp32\"); the rows written sit beside the table machine's rows "
                         "at their budgets instead of replacing them")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="passed on to every run as `--set KEY=VALUE` (a candidate recipe; the runs name it as "
                         "the user's)")
    ap.add_argument("--plot", nargs="*", default=None, metavar="RESULTS[=LABEL]",
                    help="only draw benchmarks/results/budget_check.png from these results files, one series per argument "
                         "(join files with commas for one series; no runs)")
    args = ap.parse_args(argv)
    if args.plot is not None:
        plot(args.plot or [str(args.results)], RESULTS / "budget_check.png")
        return 0

    data = args.work / "data"
    if not (data / "meta.json").is_file():
        cli("prepare", *[SHARED / f for f in TRAIN_FILES], "--val", SHARED / VALID_FILE, "--out", data)
    done = {}
    if args.results.is_file():
        for line in args.results.read_text().splitlines():
            r = json.loads(line)
            done[r["run"]] = r
    for budget in args.budgets.split(","):
        for n in range(args.first_seed, args.first_seed + args.repeats):
            name = f"{budget}-{n}"
            if name in done:
                continue
            out = args.work / "runs" / name
            t0 = time.time()
            train = cli("train", "--data", data, "--max-time", budget, "--out", out, "--force", "--json",
                        "--set", f"seed={n}", *[a for kv in args.sets for a in ("--set", kv)])
            wall = time.time() - t0
            s = json.loads(train.stdout)
            cli("evaluate", "loss", out, "--data", SHARED / VALID_FILE)
            ev = json.loads((out / "eval" / "loss.json").read_text())
            rec = {"run": name, "budget": budget, "seed": n, "sets": args.sets, "bpb": ev.get("bits_per_byte"),
                   "eval": ev,
                   "picked": s.get("budget", {}).get("picked"), "label": s["preset"], "steps": s["steps"],
                   "tokens": s["tokens"], "tokens_per_s": s["tokens_per_s"], "time_s": s["time_s"],
                   "picked_budget_s": s.get("budget", {}).get("budget_s"),
                   "probe": s.get("budget", {}).get("probe"), "overrun_s": round(s["ended_at"] - s["budget"]["deadline"], 3)
                   if s.get("budget") else None, "wall_s": round(wall, 1), "stderr_budget": [
                       line for line in train.stderr.splitlines() if line.startswith("budget:")],
                   "loadavg": os.getloadavg()[0], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
            if n == args.first_seed:
                gen = cli("generate", out, *SAMPLE_ARGS, "--json")
                rec["samples_cmd"] = f"tinystories generate RUN {' '.join(SAMPLE_ARGS)}"
                rec["samples"] = gen.stdout
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(rec) + "\n")
            done[name] = rec
            print(f"{name}: {rec['bpb']:.4f} bits per byte ({rec['label']}, {rec['tokens']:,} tokens)", flush=True)

    lines = ["| budget | runs | bits per byte on all of TinyStories-subset-valid.txt | mean | spread (max - min) | recipe |",
             "|---|---|---|---|---|---|"]
    for budget in args.budgets.split(","):
        rs = [r for r in done.values() if r["budget"] == budget]
        if rs:
            v = [r["bpb"] for r in rs]
            lines.append(f"| {budget} | {len(v)} | {', '.join(f'{x:.3f}' for x in v)} | {sum(v) / len(v):.3f} | "
                         f"{max(v) - min(v):.3f} | {rs[0]['label']} |")
    (args.results.parent / "budget_check.md").write_text("\n".join(lines) + "\n")
    if args.table:
        for budget in args.budgets.split(","):
            rs = [r for r in done.values() if r["budget"] == budget]
            if rs:
                write_row(args.table, rs, args.machine)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
