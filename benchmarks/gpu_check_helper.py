"""The Python parts of benchmarks/gpu_check.sh (see there).

    gpu_check_helper.py deterministic-train TRAIN_ARGS...     `tinystories train` under torch's deterministic kernels
    gpu_check_helper.py kill-after-checkpoint RUN_DIR -- CMD  run CMD, SIGKILL it 10 steps after its first checkpoint
    gpu_check_helper.py report WORK RESULTS_DIR STAMP LOG     write the results file (markdown + json)
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def deterministic_train(args: list[str]) -> int:
    import torch

    from tinystories.cli import main

    # without these an uninterrupted run does not reproduce itself (atomics in embedding backward)
    torch.use_deterministic_algorithms(True)
    return main(["train", *args])


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def kill_after_checkpoint(run_dir: Path, cmd: list[str], timeout: float = 38.0) -> int:
    from tinystories.train import checkpoint as ckpt

    proc = subprocess.Popen(cmd)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            done = ckpt.list_checkpoints(run_dir) if run_dir.is_dir() else []
            step = max((r.get("step", 0) for r in _records(run_dir)), default=0)
            if done and step >= done[0][0] + 10:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                print(f"killed at step {step}, after the checkpoint of step {done[0][0]}")
                return 0
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
    print("the run ended before it could be killed after a checkpoint", file=sys.stderr)
    return 1


def _bf16_peak() -> float:
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    best = float("inf")
    for i in range(10):
        torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def _speed(work: Path) -> dict:
    from tinystories.model.config import preset_config
    from tinystories.train.budget import train_flops_per_token

    records = [r for r in _records(work / "speed") if "tokens_per_s" in r]
    if len(records) < 3:
        return {"error": "the speed run logged fewer than 3 intervals"}
    steady = records[2:]  # the first intervals include compilation
    tps = statistics.median(r["tokens_per_s"] for r in steady)
    cfg = json.loads((work / "speed" / "train_config.json").read_text())
    flops = train_flops_per_token(preset_config("33M", vocab_size=10_000), cfg.get("context") or 512)
    peak = _bf16_peak()
    return {"tokens_per_s": tps, "flops_per_token": flops, "bf16_peak_flops": peak, "mfu": tps * flops / peak,
            "steps": steady[-1]["step"], "batch_size": cfg["batch_size"]}


def _resume(work: Path) -> dict:
    whole = [(r["step"], r["loss"]) for r in _records(work / "whole") if "loss" in r]
    parts = [(r["step"], r["loss"]) for r in _records(work / "killed") if "loss" in r]
    first_diff = next((a[0] for a, b in zip(whole, parts) if a != b), None)
    return {"bit_exact": bool(whole) and whole == parts, "steps": len(whole), "resumed_steps": len(parts),
            "first_difference_at_step": first_diff}


def report(work: Path, results_dir: Path, stamp: str, log: Path) -> int:
    import torch

    gpu = torch.cuda.get_device_name()
    res = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "speed": _speed(work),
           "resume": _resume(work)}
    gen = work / "generate.json"
    if gen.is_file():
        res["generate"] = json.loads(gen.read_text())
    name = f"gpu_check_{gpu.replace(' ', '_').replace('/', '_')}_{stamp}"
    sp, rs = res["speed"], res["resume"]
    lines = [f"# GPU check {stamp} UTC: {gpu}, torch {res['torch']}, CUDA {res['cuda']}", ""]
    if "error" in sp:
        lines.append(f"- 33M, compile + bf16: {sp['error']}")
    else:
        lines.append(f"- 33M, compile + bf16, batch {sp['batch_size']} x 512, {sp['steps']} steps: "
                     f"{sp['tokens_per_s']:,.0f} tokens/s, MFU {sp['mfu']:.1%} of the measured bf16 peak "
                     f"({sp['bf16_peak_flops'] / 1e12:,.0f} TFLOP/s)")
    lines.append(f"- kill and resume (deterministic kernels, {rs['steps']} steps): "
                 + ("bit-exact" if rs["bit_exact"] else f"NOT bit-exact (first difference at step "
                                                        f"{rs['first_difference_at_step']})"))
    for row in res.get("generate", {}).get("generate_trained", []):
        lines.append(f"- generate {row['shape']}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in row["tokens_per_s"].items())
                     + f"; identical to transformers: {row['identical']}")
    lines += ["", "## Log", "", "```", log.read_text()[-20000:], "```", ""]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.md").write_text("\n".join(lines))
    (results_dir / f"{name}.json").write_text(json.dumps(res, indent=2))
    print("\n".join(lines[:8]))
    print(f"written: {results_dir / name}.md")
    return 0


if __name__ == "__main__":
    verb, rest = sys.argv[1], sys.argv[2:]
    if verb == "deterministic-train":
        sys.exit(deterministic_train(rest))
    if verb == "kill-after-checkpoint":
        sys.exit(kill_after_checkpoint(Path(rest[0]), rest[rest.index("--") + 1:]))
    if verb == "report":
        sys.exit(report(Path(rest[0]), Path(rest[1]), rest[2], Path(rest[3])))
    sys.exit(f"unknown verb {verb!r}; see the docstring")
