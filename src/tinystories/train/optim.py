"""The optimizer."""

from __future__ import annotations

import contextlib

import torch

from .config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on every matrix (2-D weight) and none on biases and norm gains.

    Matrices include the token embedding (tied to the output layer) and the position table,
    as in GPT-2/nanoGPT and in the `transformers` Trainer the paper used.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if device.type in ("cuda", "cpu"):  # fused: one kernel for all parameters instead of a loop
        with contextlib.suppress(RuntimeError, TypeError):
            return torch.optim.AdamW(groups, fused=True, **kw)
    return torch.optim.AdamW(groups, **kw)


