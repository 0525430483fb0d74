"""Training batches: seeded, resumable windows over a memmapped train.bin."""

from __future__ import annotations

import numpy as np
import torch

# ===================================================================== data

class TokenWindows:
    """Training sequences from one token file, in a seeded order that is a pure function of position.

    The file is cut into windows of `context + 1` tokens (input and shifted target). Each epoch
    visits every window once in a permutation drawn from (seed, epoch), with the window grid shifted
    by a random offset so that epochs see different boundaries. Sample i of the whole run is
    therefore known without any state, and resuming needs only the count of samples consumed.
    Processes of a DDP run take disjoint slices of the same global sequence.
    """

    def __init__(self, tokens: np.ndarray, context: int, seed: int):
        self.tokens, self.context, self.seed = tokens, context, seed
        self.n = max(0, (len(tokens) - context) // context)  # windows that fit at any shift < context
        self._epochs: dict[int, tuple[int, np.ndarray]] = {}

    def _epoch(self, e: int) -> tuple[int, np.ndarray]:
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, e])
            self._epochs = {e: (int(rng.integers(self.context)), rng.permutation(self.n))}
        return self._epochs[e]

    def batch(self, first: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples first .. first+size-1 as (inputs, targets), int64 [size, context]."""
        T, rows = self.context, []
        for i in range(first, first + size):
            e, j = divmod(i, self.n)
            shift, perm = self._epoch(e)
            start = shift + int(perm[j]) * T
            rows.append(np.asarray(self.tokens[start:start + T + 1], dtype=np.int64))
        xy = torch.from_numpy(np.stack(rows))
        return xy[:, :-1], xy[:, 1:]


