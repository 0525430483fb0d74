"""Speed must not cost quality: the fast defaults against a plain fp32 run, same seed, same tokens.

    python benchmarks/quality_check.py [--preset 8M] [--steps 100] [--tolerance 0.02] [--precision bf16]

Trains the preset twice on the shared TinyStories files (prepared once with a 10K BPE, cached
with run.py's models): once as `tinystories train` runs by default (precision=auto, compile=auto,
the fused CPU kernels), once plain (precision=fp32, compile=off, TINYSTORIES_KERNELS=0: SDPA and
the library cross-entropy). Both see the same batches in the same order. It prints both final
validation losses and passes if they differ by at most the tolerance (nats/token); exit status 1
if not. --precision sets the fast run's precision (default auto; bf16 checks the bf16 kernels
and autocast even where auto would pick fp32). On a GPU it checks torch.compile as well.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(data: Path, out: Path, preset: str, steps: int, fast: bool, eval_tokens: int, precision: str) -> dict:
    env = dict(os.environ, TINYSTORIES_QUIET="1", PYTHONPATH=str(ROOT / "src"))
    sets = ["seed=1234", "eval_every=0", "checkpoint_every=0", "samples=0", f"final_eval_tokens={eval_tokens}"]
    if fast:
        sets.append(f"precision={precision}")
    else:
        env["TINYSTORIES_KERNELS"] = "0"
        sets += ["precision=fp32", "compile=off"]
    cmd = [sys.executable, "-m", "tinystories", "train", "--data", str(data), "--preset", preset,
           "--max-steps", str(steps), "--out", str(out), "--force", "--json"]
    for s in sets:
        cmd += ["--set", s]
    t = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"training failed:\n{r.stderr}")
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    summary["wall_s"] = time.time() - t
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="8M")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps of batch 8 x 512 (100 = 409,600 tokens)")
    ap.add_argument("--eval-tokens", type=int, default=131_072, help="validation tokens scored at the end")
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="the fast run's precision")
    args = ap.parse_args()

    from run import bench_data

    data = bench_data()
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for name, fast in (("fast defaults", True), ("plain fp32", False)):
            res[name] = s = run(data, Path(tmp) / name.replace(" ", "-"), args.preset, args.steps, fast, args.eval_tokens,
                                  args.precision)
            print(f"{name:>14}: val loss {s['val_loss']:.4f} nats/token after {s['tokens']:,} tokens; "
                  f"{s['tokens_per_s']:,.0f} tokens/s ({s['device']}, {s['precision']}, compile {s['compile']})",
                  flush=True)
    diff = abs(res["fast defaults"]["val_loss"] - res["plain fp32"]["val_loss"])
    ok = diff <= args.tolerance
    print(f"difference {diff:.4f} nats/token (tolerance {args.tolerance}): {'PASS' if ok else 'FAIL'}; "
          f"speed-up {res['fast defaults']['tokens_per_s'] / res['plain fp32']['tokens_per_s']:.2f}x")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
