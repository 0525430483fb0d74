"""precision=auto: time the model being trained in fp32 and in bf16, keep the faster.

Why measure the real step: on a CPU with bf16 instructions a matrix-product probe says bf16 is
faster, but a small-head model spends its step in attention, the loss and per-op overhead, where
bf16 can lose (issue 16: the 1M preset ran 2.6x slower in bf16). So a few real training steps of a
fresh model with the run's shape, batch and threads decide, and the answer is cached per machine
(CPU model and flags, torch version, threads), model shape and batch in
~/.cache/tinystories/precision.json, so the probe is paid once.

A GPU with bf16 takes it without measuring (tensor cores make it the faster one); fp16 is never
picked automatically (it needs loss scaling). A CPU without bf16 instructions takes fp32 without
measuring: torch emulates bf16 there, tens of times slower.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model.config import ModelConfig
from ..model.gpt_neo import GPTNeo
from ..runtime.device import (
    AUTOCAST,
    cache_key as machine_cache_key,
    cache_root,
    cpu_fingerprint,
    cpu_has_bf16,
    read_cache,
    resolve_precision,
)
from ..runtime.files import atomic_write_json
from .config import TrainConfig
from .optim import make_optimizer

PROBE_SECONDS = 2.0  # per precision: at least 3 timed steps unless a step takes longer than this
# bf16 must win by this much: within it the two are a tie on a shared machine, and fp32 is exact.
MARGIN = 0.03
CACHE_NAME = "precision.json"


@dataclass
class PrecisionChoice:
    precision: str                                          # fp32 | bf16 | fp16
    speeds: dict[str, float] = field(default_factory=dict)  # training tokens/s per precision, when measured
    cached: bool = False                                    # speeds read from the cache, not measured now
    reason: str = ""                                        # one line: why this precision

    def line(self) -> str:
        if not self.speeds:
            return f"precision {self.precision}: {self.reason}"
        speeds = ", ".join(f"{p} {tps:,.0f} tokens/s" for p, tps in self.speeds.items())
        return f"precision auto: {self.precision} ({speeds}; {'cached' if self.cached else 'measured now'})"


def measure_speed(mcfg: ModelConfig, batch_size: int, context: int, seconds: float, device=None,
                  precision: str = "fp32", seed: int = 0) -> tuple[float, int]:
    """Training tokens/s of a fresh `mcfg` model on random tokens, and the number of timed steps.

    One untimed step first (allocations, kernel selection), then steps until `seconds` have passed
    (at least 3, or 1 once twice `seconds` have passed). The speed is the median step's, so one hiccup
    of a shared machine does not count. The global RNG is left as it was.
    """
    t0 = time.perf_counter()
    device = torch.device(device or "cpu")
    state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = GPTNeo(mcfg).to(device).train()
        opt = make_optimizer(model, TrainConfig(), device)
        x = torch.randint(0, mcfg.vocab_size, (batch_size, context + 1), device=device)
        dtype = AUTOCAST[precision]

        def step() -> float:
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t

        step()
        times: list[float] = []
        while True:
            # at least 3 timed steps, unless a loaded machine has already taken twice the time asked
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds and (len(times) >= 3 or (times and elapsed >= 2 * seconds)):
                break
            times.append(step())
    finally:
        torch.set_rng_state(state)
    times.sort()
    return batch_size * context / times[len(times) // 2], len(times)


def pick(speeds: dict[str, float]) -> str:
    """The faster precision of measured {precision: tokens/s}; bf16 only when it wins by MARGIN."""
    return "bf16" if speeds.get("bf16", 0.0) > (1 + MARGIN) * speeds.get("fp32", 0.0) else "fp32"


def cache_key(mcfg: ModelConfig, batch_size: int, context: int, device: torch.device) -> str:
    what = {"cpu": cpu_fingerprint(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": device.type, "model": mcfg.to_dict(), "batch": batch_size, "context": context}
    return machine_cache_key(what)


def _load() -> float:
    """Runnable processes per core (1-minute load average): above 1, other work shares the cores."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def _stale(entry: dict) -> bool:
    # Timed on a busy machine (more runnable processes than cores) and the machine is much quieter
    # now: those times said more about the neighbours than about the model, so time it again.
    then = float(entry.get("load", 0.0))
    return then > 1.0 and _load() < then / 2


def choose_precision(name: str, mcfg: ModelConfig, batch_size: int, context: int, device: torch.device, *,
                     seconds: float = PROBE_SECONDS, cache: Path | None = None,
                     say: Callable[[str], None] | None = None) -> PrecisionChoice:
    """The precision to train `mcfg` at `batch_size` x `context` on `device` with the current threads.

    `name` other than 'auto' is checked and kept. On a CPU with bf16, 'auto' times a fresh model in
    both precisions (or reads the times from `cache`, default ~/.cache/tinystories/precision.json)
    and says what it picked with both speeds.
    """
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if name != "auto" or device.type != "cpu":
        p = resolve_precision(name, device)
        return PrecisionChoice(p, reason="as asked" if name != "auto" else f"{device.type} default")
    if not cpu_has_bf16():
        choice = PrecisionChoice("fp32", reason="this CPU has no bf16 instructions")
        say(choice.line())
        return choice
    path = cache or cache_root() / CACHE_NAME
    key = cache_key(mcfg, batch_size, context, device)
    entry = read_cache(path).get(key)
    if isinstance(entry, dict) and {"fp32", "bf16"} <= entry.keys() and not _stale(entry):
        speeds, cached = {p: float(entry[p]) for p in ("fp32", "bf16")}, True
    else:
        say(f"precision auto: timing a few training steps in fp32 and bf16 (about {4 * seconds:.0f}s, once per "
            f"machine and shape)")
        speeds = {p: measure_speed(mcfg, batch_size, context, seconds, device, p)[0] for p in ("fp32", "bf16")}
        cached = False
        try:  # re-read: another run may have added its own entry meanwhile
            atomic_write_json(path, {**read_cache(path), key: {**speeds, "load": _load(), "model": mcfg.to_dict(),
                                                          "batch": batch_size, "context": context,
                                                          "threads": torch.get_num_threads()}})
        except OSError as e:  # a read-only home costs a probe per run, nothing else
            say(f"precision auto: could not cache the result in {path} ({e})")
    choice = PrecisionChoice(pick(speeds), speeds, cached, "measured")
    say(choice.line())
    return choice
