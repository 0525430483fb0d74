"""The sampling block: how `generate` picks tokens. Shared by every verb that writes stories.

From Python: `generate(model, tok, prompts, **Sampling(temperature=0.7, top_k=50).kwargs())`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(kw_only=True)
class Sampling:
    """how tokens are picked"""
    max_new_tokens: int = 256
    """longest completion, in tokens"""
    temperature: float = 1.0
    """0 = greedy"""
    top_k: int | None = None
    """sample from the K most likely tokens"""
    top_p: float | None = None
    """nucleus sampling, in (0, 1]"""
    num_beams: int = 1
    """beam search with B beams (deterministic)"""
    num_samples: int = 1
    """completions per prompt"""
    seed: int | None = None
    """same seed, same stories"""

    def check(self) -> None:
        """A UserError naming the option for any setting outside its range."""
        from .sampling import check_options

        check_options(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                      top_p=self.top_p, num_beams=self.num_beams, num_samples=self.num_samples)

    def kwargs(self) -> dict:
        """generate()'s keyword arguments."""
        return asdict(self)
