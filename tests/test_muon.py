"""Muon (issue 17): `optimizer=muon` puts the blocks' matrices under torch.optim.Muon and the rest
under AdamW, each with its lr; it resumes bit-exactly, trains under bf16 autocast and under DDP; and
the learning-rate schedules (cosine, wsd, constant) have the shapes they promise."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_env

from tinystories.model.config import ModelConfig
from tinystories.model.gpt_neo import GPTNeo
from tinystories.model.modeldir import load_model
from tinystories.train.config import TrainConfig
from tinystories.train.loop import train
from tinystories.runtime.device import cpu_has_bf16
from tinystories.train.optim import Muon, MuonAdamW, is_hidden_matrix, make_optimizer, newton_schulz_dtype
from tinystories.train.schedule import lr_at

TINY = {"preset": "1M", "model": {"hidden": 32, "layers": 2, "heads": 2, "context": 64, "tie_embeddings": False},
        "batch_size": 4, "threads": 1, "precision": "fp32", "eval_every": 0, "samples": 0,
        "final_eval_tokens": 2048, "optimizer": "muon", "lr": 3e-3, "muon_lr": 6e-3, "warmup_steps": 2, "log_every": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny tensors: a second thread only adds waiting (a lot of it on a loaded machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "data": str(data), "out": str(out), **kw})


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_muon_takes_exactly_the_hidden_matrices_and_steps_like_its_parts():
    cfg = ModelConfig(vocab_size=64, context=32, hidden=32, layers=2, heads=4, tie_embeddings=False,
                      value_embeddings=True, x0_mix=True)
    torch.manual_seed(0)
    model = GPTNeo(cfg)
    tc = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=4e-3, weight_decay=0.1)
    opt = make_optimizer(model, tc, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {f"blocks.{i}.{w}.weight" for i in range(2) for w in ("attn.qkv", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {"wte.weight", "wpe.weight", "vte.weight", "lm_head.weight", "ln_f.weight", "blocks.0.attn.ve_gain",
            "blocks.1.x_gains", "blocks.0.attn.out_proj.bias"} <= adamw
    assert muon.isdisjoint(adamw) and len(muon | adamw) == len(list(model.parameters()))

    # One step equals torch's Muon (match_rms_adamw, lr 4e-3) on the matrices and AdamW (lr 1e-3) on the rest.
    twin = GPTNeo(cfg)
    twin.load_state_dict(model.state_dict())
    named = list(twin.named_parameters())
    ref_muon = torch.optim.Muon([p for n, p in named if is_hidden_matrix(n, p)], lr=4e-3, weight_decay=0.1,
                                adjust_lr_fn="match_rms_adamw")
    rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
    ref_adamw = torch.optim.AdamW([{"params": [p for _, p in rest if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for _, p in rest if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    ids = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    for m in (model, twin):
        m(ids[:, :-1], ids[:, 1:]).backward()
    for g in opt.param_groups:  # what the training loop does every step
        g["lr"] = 1e-3
    opt.muon.ns_dtype = torch.bfloat16  # torch's own iteration (the fp32 one is checked below)
    opt.step()
    ref_muon.step()
    ref_adamw.step()
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6), n
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)  # the loop's value is left as it wrote it


def _muon_steps(opt_cls, step, params0, grads, **kw) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    opt = opt_cls(params, lr=2e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", **kw)
    for g in grads:  # three steps, so the momentum buffers and nesterov carry over
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        step(opt)
    return [p.detach() for p in params]


def test_our_muon_step_is_torchs_update_and_runs_the_iteration_in_fp32_where_asked():
    """`Muon.step_in(dtype)` is torch.optim.Muon's update with the Newton-Schulz iteration in `dtype`:
    in bf16 it equals torch's step bit for bit (tall, wide and square matrices, three steps); in fp32 it
    is the same update, computed without the bf16 rounding. On a CPU without bf16 instructions the
    budget recipe's optimizer takes fp32 (torch emulates bf16 products there, ~25x slower)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (16, 40), (24, 24)]
    params0 = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    ref = _muon_steps(torch.optim.Muon, lambda o: o.step(), params0, grads)
    ours_bf16 = _muon_steps(Muon, lambda o: o.step_in(torch.bfloat16), params0, grads)
    ours_fp32 = _muon_steps(Muon, lambda o: o.step(), params0, grads, ns_dtype=torch.float32)
    for r, a, b, p0 in zip(ref, ours_bf16, ours_fp32, params0):
        assert torch.equal(r, a)
        assert 0 < (b - r).norm() < 0.03 * (r - p0).norm()   # the same update, without bf16's rounding
    # without nesterov the iteration starts from the momentum buffer itself, which the next step must find unchanged
    plain = _muon_steps(Muon, lambda o: o.step(), params0, grads[:2], ns_dtype=torch.float32, nesterov=False)
    torch_plain = _muon_steps(torch.optim.Muon, lambda o: o.step(), params0, grads[:2], nesterov=False)
    for a, r, p0 in zip(plain, torch_plain, params0):
        assert (a - r).norm() < 0.03 * (r - p0).norm()
    assert newton_schulz_dtype(torch.device("cpu")) == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert newton_schulz_dtype(torch.device("cuda")) == torch.bfloat16
    opt = make_optimizer(GPTNeo(ModelConfig(vocab_size=64, context=16, hidden=32, layers=1, heads=2)),
                         TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert opt.muon.ns_dtype == newton_schulz_dtype(torch.device("cpu"))


def test_resume_with_muon_is_bit_exact(tiny_data, tmp_path):
    same = {"checkpoint_every": 6, "decay_steps": 12, "lr_schedule": "wsd"}  # one schedule for both halves
    full = train(_cfg(tiny_data, tmp_path / "full", max_steps=12, **same))
    train(_cfg(tiny_data, tmp_path / "half", max_steps=6, **same))
    resumed = train(_cfg(tiny_data, tmp_path / "half", max_steps=12, **same), resume=True)
    assert full["steps"] == resumed["steps"] == 12
    assert _losses(tmp_path / "full") == _losses(tmp_path / "half")
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "half")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_muon_trains_under_bf16_autocast(tiny_data, tmp_path):
    train(_cfg(tiny_data, tmp_path / "bf16", max_steps=15, precision="bf16", checkpoint_every=0))
    losses = _losses(tmp_path / "bf16")
    assert len(losses) == 15 and losses[-1] < losses[0] - 0.3


@pytest.mark.slow
def test_muon_under_ddp_equals_one_process(tiny_data, tmp_path):
    """Two gloo processes with half the batch each take the same steps as one process with all of it."""
    sets = [f"{k}={v}" for k, v in TINY.items() if k not in ("preset", "model", "batch_size")]
    args = ["--preset", "1M", "--max-steps", "6", *[a for s in sets for a in ("--set", s)],
            *[a for k, v in TINY["model"].items() for a in ("--set", f"model.{k}={str(v).lower()}")],
            "--set", "batch_size=2", "--set", "checkpoint_every=0"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tinystories", "train", "--data", str(tiny_data), "--out", str(tmp_path / "ddp"), *args],
                          capture_output=True, text=True, env=cli_env(), timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(_cfg(tiny_data, tmp_path / "one", max_steps=6, checkpoint_every=0))
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "one"), abs=1e-4)


# ------------------------------------------------------------------ schedules

def test_wsd_holds_the_peak_then_cools_down_to_the_floor():
    cfg = TrainConfig(lr=1e-2, warmup_steps=10, lr_schedule="wsd", cooldown_frac=0.2, min_lr_ratio=0.1)
    lrs = [lr_at(cfg, s, 110, None) for s in range(110)]
    assert lrs[9] < lrs[10] == 1e-2
    assert all(lr == 1e-2 for lr in lrs[10:90])              # stable: the first 80% after warmup
    assert all(a > b for a, b in itertools.pairwise(lrs[90:]))  # then a straight fall
    assert lrs[90] == pytest.approx(1e-2) and lr_at(cfg, 110, 110, None) == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(1e-3 + 0.9e-2 * 0.5)


def test_wsd_on_the_clock_cools_down_by_the_deadline():
    cfg = TrainConfig(lr=1e-2, warmup_steps=0, lr_schedule="wsd", cooldown_frac=0.25, min_lr_ratio=0.0)
    assert lr_at(cfg, 500, None, 0.7) == 1e-2
    assert lr_at(cfg, 500, None, 0.875) == pytest.approx(0.5e-2)
    assert lr_at(cfg, 500, None, 1.0) == 0.0


def test_cosine_and_constant_are_unchanged():
    cos = TrainConfig(lr=1e-2, warmup_steps=0, min_lr_ratio=0.1)
    assert lr_at(cos, 0, 100, None) == pytest.approx(1e-2)
    assert lr_at(cos, 50, 100, None) == pytest.approx(0.55e-2)
    assert lr_at(cos.replace(lr_schedule="constant"), 99, 100, None) == 1e-2


def test_bad_settings_are_one_line_errors():
    from tinystories.errors import UserError

    with pytest.raises(UserError, match="optimizer must be one of adamw, muon"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(UserError, match="lr_schedule must be one of cosine, wsd, constant"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(UserError, match="cooldown_frac"):
        TrainConfig(cooldown_frac=1.5)
