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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "budget-check")
    ap.add_argument("--budgets", default="10m,30m")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS / "budget_check.jsonl")
    args = ap.parse_args(argv)

    data = args.work / "data"
    if not (data / "meta.json").is_file():
        cli("prepare", *[SHARED / f for f in TRAIN_FILES], "--val", SHARED / VALID_FILE, "--out", data)
    done = {}
    if args.results.is_file():
        for line in args.results.read_text().splitlines():
            r = json.loads(line)
            done[r["run"]] = r
    for budget in args.budgets.split(","):
        for n in range(1, args.repeats + 1):
            name = f"{budget}-{n}"
            if name in done:
                continue
            out = args.work / "runs" / name
            t0 = time.time()
            train = cli("train", "--data", data, "--max-time", budget, "--out", out, "--force", "--json",
                        "--set", f"seed={n}")
            wall = time.time() - t0
            s = json.loads(train.stdout)
            cli("evaluate", "loss", out, "--data", SHARED / VALID_FILE)
            ev = json.loads((out / "eval" / "loss.json").read_text())
            rec = {"run": name, "budget": budget, "seed": n, "bpb": ev.get("bits_per_byte"), "eval": ev,
                   "picked": s.get("budget", {}).get("picked"), "label": s["preset"], "steps": s["steps"],
                   "tokens": s["tokens"], "tokens_per_s": s["tokens_per_s"], "time_s": s["time_s"],
                   "probe": s.get("budget", {}).get("probe"), "overrun_s": round(s["ended_at"] - s["budget"]["deadline"], 3)
                   if s.get("budget") else None, "wall_s": round(wall, 1), "stderr_budget": [
                       line for line in train.stderr.splitlines() if line.startswith("budget:")],
                   "loadavg": os.getloadavg()[0], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
            if n == 1:
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
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
