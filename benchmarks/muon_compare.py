"""Muon against AdamW on a preset at equal tokens (issue 17): the same model, data order and schedule,
only the optimizer differs.

    python benchmarks/muon_compare.py --data DATA_DIR --preset 8M --tokens 600000 --seeds 1

Each run is `tinystories train --data DATA --preset P --max-tokens N --set optimizer=O --set seed=S
--set warmup_steps=W` through the command line (lr 1e-3, batch 8 x 512 and the cosine are the defaults, so
`muon_lr` = lr; the short warm-up suits a run of ~150 steps; precision auto), scored on the first
262,144 validation tokens (the run's own final validation). Every finished run is appended to
benchmarks/results/muon_compare.jsonl and skipped on a re-run; a table with the gap and tokens/s is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "muon_compare.jsonl"


def run(data: str, preset: str, tokens: int, optimizer: str, seed: int, warmup: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "tinystories", "train", "--data", data, "--preset", preset, "--max-tokens",
           str(tokens), "--out", str(out), "--force", "--json", "--set", f"optimizer={optimizer}",
           "--set", f"seed={seed}", "--set", f"warmup_steps={warmup}", "--set", "samples=0",
           "--set", "checkpoint_every=0"]
    load0 = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    s = json.loads(proc.stdout)
    return {"preset": preset, "tokens_asked": tokens, "optimizer": optimizer, "seed": seed,
            "bpb": s.get("val_bpb"), "val_loss": s.get("val_loss"), "tokens": s["tokens"], "steps": s["steps"],
            "tokens_per_s": s["tokens_per_s"], "lr": s.get("config", {}).get("lr"), "warmup_steps": warmup,
            "precision": s.get("precision"), "loadavg": round(load0, 2),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="8M")
    ap.add_argument("--tokens", type=int, default=600_000)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    rows = [json.loads(line) for line in args.results.read_text().splitlines()] if args.results.is_file() else []
    with tempfile.TemporaryDirectory(prefix="muon-compare-") as tmp:
        for seed in range(1, args.seeds + 1):
            for opt in ("adamw", "muon"):
                if any((r["preset"], r["tokens_asked"], r["optimizer"], r["seed"]) == (args.preset, args.tokens, opt, seed)
                       for r in rows):
                    continue
                rec = run(args.data, args.preset, args.tokens, opt, seed, args.warmup, Path(tmp) / f"{opt}-{seed}")
                rows.append(rec)
                args.results.parent.mkdir(parents=True, exist_ok=True)
                with open(args.results, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{opt} seed {seed}: {rec['bpb']:.4f} bpb, {rec['tokens']:,} tokens at "
                      f"{rec['tokens_per_s']:,.0f} tokens/s", flush=True)
    mine = [r for r in rows if (r["preset"], r["tokens_asked"]) == (args.preset, args.tokens)]
    print(f"| optimizer ({args.preset}, {args.tokens:,} tokens) | bits per byte | mean | tokens/s |\n|---|---|---|---|")
    for opt in ("adamw", "muon"):
        rs = [r for r in mine if r["optimizer"] == opt]
        if rs:
            bpbs = [r["bpb"] for r in rs]
            print(f"| {opt} | {', '.join(f'{b:.4f}' for b in bpbs)} | {statistics.mean(bpbs):.4f} | "
                  f"{statistics.mean(r['tokens_per_s'] for r in rs):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
