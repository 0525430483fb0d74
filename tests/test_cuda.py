"""The GPU paths (issue 16): compile, bf16, CUDA-graph decoding, exact resume, DDP with NCCL.

All but the last are `cuda`-marked: skipped without a GPU (conftest), run by
benchmarks/gpu_check.sh on one. They train the shared tiny data with the project's own `train()`,
a few seconds each on a GPU. The last runs gpu_check.sh's dry run anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, cli_env

import tinystories
from tinystories.generate.sampling import generate
from tinystories.model.config import preset_config
from tinystories.train import checkpoint as ckpt
from tinystories.train.config import TrainConfig
from tinystories.train.loop import train
from tinystories.train.precision import choose_precision

SMALL = {"hidden": 64, "layers": 2, "heads": 4, "window": 32}


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), preset="1M", context=128, batch_size=8, lr=5e-3, warmup_steps=5,
                samples=0, eval_every=0, final_eval_tokens=4096, log_every=1, device="cuda", model=SMALL)
    return TrainConfig.from_dict({**base, **kw})


def _losses(run_dir) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.cuda
def test_auto_precision_on_a_gpu_is_bf16_without_measuring():
    said = []
    choice = choose_precision("auto", preset_config("1M"), 8, 512, torch.device("cuda"), say=said.append)
    assert choice.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16") and not choice.speeds


@pytest.mark.cuda
def test_compiled_bf16_training_learns_with_fp32_master_weights(tiny_data, tmp_path):
    summary = train(_cfg(tiny_data, tmp_path / "run", max_steps=40, precision="bf16", compile="on"))
    assert summary["precision"] == "bf16" and summary["device"].startswith("cuda")
    losses = [loss for _, loss in _losses(tmp_path / "run")]
    assert losses[-1] < losses[0] - 0.5, losses
    weights, _, _ = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"))
    assert all(w.dtype == torch.float32 for w in weights.values())


@pytest.mark.cuda
def test_resume_is_bit_exact_with_deterministic_kernels(tiny_data, tmp_path):
    """Stopped at step 20 and resumed to 30: the same losses, bit for bit, as 30 steps in one go.
    GPU kernels that sum with atomics (embedding backward) are not reproducible even without a
    resume, so this runs under torch's deterministic algorithms."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        common = dict(precision="bf16", decay_steps=30, checkpoint_every=10)
        train(_cfg(tiny_data, tmp_path / "whole", max_steps=30, **common))
        train(_cfg(tiny_data, tmp_path / "parts", max_steps=20, **common))
        train(_cfg(tiny_data, tmp_path / "parts", max_steps=30, **common), resume=True)
    finally:
        torch.use_deterministic_algorithms(False)
    assert _losses(tmp_path / "parts") == _losses(tmp_path / "whole")


@pytest.mark.cuda
def test_cuda_graph_decoding_equals_eager_decoding(tiny_model, monkeypatch):
    model, tok = tinystories.load(tiny_model, device="cuda")
    prompts = ["Once upon a time there was a little dog", "Lily wanted to"]
    out = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("TINYSTORIES_CUDA_GRAPHS", flag)
        out[flag] = [c[0].tokens for c in generate(model, tok, prompts, max_new_tokens=60, temperature=0)]
    assert out["1"] == out["0"] and all(len(t) > 0 for t in out["1"])


@pytest.mark.cuda
def test_ddp_with_nccl_trains(tiny_data, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs one GPU per process; this machine has one (the DDP code path is tested on CPU "
                    "with gloo in test_train)")
    out = tmp_path / "ddp"
    args = ["--preset", "1M", "--max-steps", "10", "--set", "context=128", "--set", "batch_size=4",
            "--set", "device=cuda", "--set", "samples=0", "--set", "eval_every=0", "--set", "log_every=1",
            *[a for k, v in SMALL.items() for a in ("--set", f"model.{k}={v}")]]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "tinystories", "train", "--data", str(tiny_data), "--out", str(out), *args],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [10]


def test_gpu_check_dry_run_prints_every_step_and_runs_nothing(tmp_path):
    env = {**cli_env(), "GPU_CHECK_WORK": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("[dry run]")]
    assert steps == ["install", "tests", "prepare", "train", "whole", "killed", "resumed", "generate", "report"]
    assert "--preset 33M" in proc.stdout and "compile=on" in proc.stdout and "precision=bf16" in proc.stdout
    limits = [int(line.split("(<=")[1].split("s)")[0]) for line in proc.stdout.splitlines() if "(<=" in line]
    assert sum(limits) <= 9 * 60
    assert not (tmp_path / "work").exists()
