"""generate --dtype auto: decode a few tokens in fp32 and in bf16, keep the faster.

Why measure: single-prompt decoding reads every weight once per token, so bf16 weights halve the
traffic, and on a CPU both run a whole block in one C call (kernels.decode_block; bf16 weights are
widened to fp32 in registers); but a long prompt's prefill goes through the library's bf16 matrix
product, and a small model's weights sit in cache anyway, so which wins depends on the model's size
and the CPU.
The answer is cached per machine (CPU model and flags, torch version, threads) and model shape in
~/.cache/tinystories/generate_dtype.json. A GPU with bf16 takes it without measuring; a CPU
without bf16 instructions takes fp32 without measuring.

What "identical" means in bf16: greedy decoding picks the largest logit, and bf16 weights move each
logit by about 2^-8 of its size. So bf16 greedy output equals fp32's token for token up to the first
step whose fp32 top-2 logit gap is within that rounding; from there the two may continue
differently (tests/test_precision.py checks this on a trained model).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from ..model.gpt_neo import GPTNeo
from ..runtime.device import cache_key, cache_root, cpu_fingerprint, cpu_has_bf16, read_cache
from ..runtime.files import atomic_write_json
from .sampling import generate

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MARGIN = 0.03  # bf16 must decode this much faster; within it fp32 (exact) wins the tie
PROBE_TOKENS = 48
PROBE_PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play"
CACHE_NAME = "generate_dtype.json"


def _tokens_per_s(model: GPTNeo, tok: Tokenizer, reps: int = 2) -> float:
    best = float("inf")
    with torch.inference_mode():
        generate(model, tok, [PROBE_PROMPT], max_new_tokens=4, temperature=0)  # warm-up: caches, kernels
        for _ in range(reps):
            t = time.perf_counter()
            out = generate(model, tok, [PROBE_PROMPT], max_new_tokens=PROBE_TOKENS, temperature=0)[0][0]
            if model.wte.weight.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t) / max(1, len(out.tokens)))
    return 1.0 / best


def choose_dtype(name: str, model: GPTNeo, tok: Tokenizer, *, cache: Path | None = None,
                 say: Callable[[str], None] | None = None) -> torch.dtype:
    """The dtype to decode `model` (fp32, on its device) in: 'fp32' or 'bf16' as asked, or 'auto'."""
    if name != "auto":
        return DTYPES[name]
    device = model.wte.weight.device
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type != "cpu" or not cpu_has_bf16():
        return torch.float32
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    what = {"cpu": cpu_fingerprint(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "model": model.config.to_dict()}
    key = cache_key(what)
    path = cache or cache_root() / CACHE_NAME
    known = read_cache(path)
    speeds = known.get(key)
    cached = isinstance(speeds, dict) and {"fp32", "bf16"} <= speeds.keys()
    if not cached:
        speeds = {"fp32": _tokens_per_s(model, tok),
                  "bf16": _tokens_per_s(copy.deepcopy(model).to(torch.bfloat16), tok)}
        try:
            atomic_write_json(path, {**known, key: speeds})
        except OSError as e:
            say(f"dtype auto: could not cache the result in {path} ({e})")
    pick = "bf16" if speeds["bf16"] > (1 + MARGIN) * speeds["fp32"] else "fp32"
    say(f"dtype auto: {pick} (fp32 {speeds['fp32']:,.0f} tokens/s, bf16 {speeds['bf16']:,.0f} tokens/s; "
        f"{'cached' if cached else 'measured now'})")
    return DTYPES[pick]
