"""The optimizer: AdamW, or Muon for the hidden matrices with AdamW for the rest.

Both come out of `make_optimizer` as one object with `step`, `zero_grad`, `state_dict`,
`load_state_dict` and `param_groups`, so the training loop, the grad scaler and checkpoints
treat them alike.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..errors import UserError
from ..runtime.device import cpu_has_bf16
from .config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW (cfg.optimizer "adamw") or `MuonAdamW` ("muon") over the model's trainable parameters."""
    if cfg.optimizer == "muon":
        return MuonAdamW(model, cfg, device)
    return make_adamw(list(model.named_parameters()), cfg, device)


def make_adamw(named: list[tuple[str, torch.nn.Parameter]], cfg: TrainConfig,
               device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on every matrix (2-D weight) and none on biases and norm gains.

    Matrices include the token embedding (tied to the output layer) and the position table,
    as in GPT-2/nanoGPT and in the `transformers` Trainer the paper used.
    """
    params = [p for _, p in named if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    if device.type in ("cuda", "cpu"):  # fused: one kernel for all parameters instead of a loop
        with contextlib.suppress(RuntimeError, TypeError):
            return torch.optim.AdamW(groups, fused=True, **kw)
    return torch.optim.AdamW(groups, **kw)


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """What Muon optimizes: the 2-D weights inside the blocks (attention and MLP projections).

    The token/value embeddings, the position table and the output layer are lookups or a
    classifier, not hidden linear maps, and gains, biases and mixing scalars are not matrices:
    those stay with AdamW, as in the Muon write-ups."""
    return p.dim() == 2 and name.startswith("blocks.")


class MuonAdamW:
    """`torch.optim.Muon` on the hidden matrices, AdamW on everything else, as one optimizer.

    Learning-rate convention: Muon runs with adjust_lr_fn="match_rms_adamw" (Moonshot's), which
    scales each matrix's orthogonalized update to the RMS an AdamW update has, so `muon_lr` is on
    AdamW's scale (None = the same as `lr`; torch's own default of 1e-3 with the "original"
    adjustment would be far too low). The loop writes the schedule's lr (on `lr`'s scale) into every
    group; the Muon groups apply it times muon_lr / lr at each step, so both follow one schedule.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        hidden = [p for n, p in named if is_hidden_matrix(n, p)]
        self.adamw = make_adamw([(n, p) for n, p in named if not is_hidden_matrix(n, p)], cfg, device)
        self.muon = Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw",
                         ns_dtype=newton_schulz_dtype(device))
        muon_lr = cfg.muon_lr or cfg.lr
        for g in self.muon.param_groups:
            g["lr_ratio"] = muon_lr / cfg.lr
        self.hidden_ids = {id(p) for p in hidden}

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    @property
    def state(self):
        return {**self.adamw.state, **self.muon.state}

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "MuonAdamW.step takes no closure"
        self.adamw.step()
        base = [g["lr"] for g in self.muon.param_groups]
        for g in self.muon.param_groups:
            g["lr"] = g["lr"] * g["lr_ratio"]
        try:
            self.muon.step()
        finally:  # the loop's value stays what the loop wrote (state_dict and logs read it)
            for g, lr in zip(self.muon.param_groups, base):
                g["lr"] = lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"kind": "muon+adamw", "adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "muon+adamw":
            raise UserError("the checkpoint holds a plain AdamW state: resume it with --set optimizer=adamw")
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 (torch's choice) on a GPU and on a CPU with bf16 instructions; fp32 on a CPU without them,
    where torch emulates each bf16 product at about 1 GFLOP/s."""
    return torch.bfloat16 if device.type != "cpu" or cpu_has_bf16() else torch.float32


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz orthogonalization of `g`, as torch.optim.Muon runs it, in `dtype`."""
    a, b, c = coefficients
    x = g.to(dtype)
    wide = g.size(0) > g.size(1)
    if wide:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1; not in place: in fp32 `x` may be the momentum buffer
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


def muon_lr_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning-rate factor for `adjust_lr_fn`."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    return 1.0


class Muon(torch.optim.Muon):
    """torch.optim.Muon, with its Newton-Schulz iteration in `ns_dtype`.

    torch runs the iteration in bf16 (`grad.bfloat16()`). On a CPU without bf16 instructions (AMD Zen 3,
    Intel before Cooper Lake) each bf16 product is emulated: on a 2-core Zen 3 the iteration took 371 ms a
    step for the 96 x 4 budget model (645 ms at 128 x 4, 2.8 s at 192 x 4) against 16, 27 and 74 ms in
    fp32, and `train --max-time 10m` trained at 3,590 tokens/s where it planned 11,300. With
    `ns_dtype=torch.float32` the step below makes the same update with the iteration in fp32. With bf16
    torch's own step runs, so results on machines with bf16 are what they were. Same state and
    state_dict as torch's, so checkpoints move between the two."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kw):
        super().__init__(params, **kw)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "Muon.step takes no closure"
        if self.ns_dtype == torch.bfloat16:
            return super().step()
        self.step_in(self.ns_dtype)
        return None

    @torch.no_grad()
    def step_in(self, dtype: torch.dtype) -> None:
        """One step of torch's update (its `_single_tensor_muon`) with the iteration in `dtype`."""
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * muon_lr_scale(group["adjust_lr_fn"], p.shape))
