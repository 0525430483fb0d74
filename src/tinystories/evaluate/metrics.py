"""Loss over a token stream, and bits per byte: the numbers training and evaluation both report.

One definition for both so that `train`'s validation figure and `evaluate loss` agree:
the stream is cut into non-overlapping windows of `context` tokens; each window predicts
its tokens from the ones before it inside the window. Bits per byte divides the summed
nats by ln 2 and by the UTF-8 bytes of the stories, so it does not depend on the tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class StreamLoss:
    nats: float      # summed over predicted tokens
    tokens: int      # predicted tokens

    @property
    def mean(self) -> float:
        return self.nats / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.mean, 700.0))

    def bits_per_byte(self, text_bytes: int, token_fraction: float = 1.0) -> float:
        """`token_fraction` < 1 when only part of the stream was scored: the bytes are scaled alike."""
        return self.nats / math.log(2) / (text_bytes * token_fraction)


@torch.no_grad()
def stream_loss(model, tokens: np.ndarray, context: int, batch_size: int = 8, max_tokens: int | None = None,
                device=None, autocast_dtype: torch.dtype | None = None, progress=None) -> StreamLoss:
    """Mean next-token loss over `tokens` (1-D ids), in windows of `context`.

    `max_tokens` scores only the first windows (a fixed prefix, so it is the same every call).
    `progress`, if given, is called with the number of tokens scored after each batch.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device or next(model.parameters()).device)
    n = len(tokens) - 1                      # tokens that have a predecessor
    if max_tokens is not None:
        n = min(n, max_tokens)
    full, tail = divmod(n, context)
    # full windows in batches, then the one shorter window at the end (if any)
    groups = [[s * context for s in range(b, min(b + batch_size, full))] for b in range(0, full, batch_size)]
    if tail:
        groups.append([full * context])
    nats, count = 0.0, 0
    for starts in groups:
        T = min(context, n - starts[0])
        x = torch.from_numpy(np.stack([np.asarray(tokens[s:s + T], dtype=np.int64) for s in starts])).to(device)
        y = torch.from_numpy(np.stack([np.asarray(tokens[s + 1:s + T + 1], dtype=np.int64) for s in starts])).to(device)
        with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            logits = model(x)
        nats += torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                                  reduction="sum").item()
        count += y.numel()
        if progress is not None:
            progress(y.numel())
    model.train(was_training)
    return StreamLoss(nats, count)
