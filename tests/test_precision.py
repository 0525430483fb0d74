"""precision=auto (issue 16): real training steps of the model decide, the answer is cached per
machine, shape and batch, and the run says what it picked with both speeds."""

from __future__ import annotations

import json

import pytest
import torch

from tinystories.errors import UserError
from tinystories.model.config import ModelConfig
from tinystories.runtime.device import cpu_has_bf16
from tinystories.train.precision import MARGIN, cache_key, choose_precision, pick

CPU = torch.device("cpu")
TINY = ModelConfig(vocab_size=128, context=64, hidden=32, layers=1, heads=4, window=16)


def test_pick_takes_the_faster_and_calls_a_near_tie_for_fp32():
    assert pick({"fp32": 8558.0, "bf16": 3343.0}) == "fp32"     # issue 16's 1M preset
    assert pick({"fp32": 1000.0, "bf16": 2000.0}) == "bf16"
    assert pick({"fp32": 1000.0, "bf16": 1000.0 * (1 + MARGIN / 2)}) == "fp32"  # within the noise: exact wins
    assert pick({"fp32": 1000.0}) == "fp32"


def test_explicit_precisions_are_kept_or_refused():
    said = []
    assert choose_precision("fp32", TINY, 2, 32, CPU, say=said.append).precision == "fp32"
    assert choose_precision("bf16", TINY, 2, 32, CPU, say=said.append).precision == "bf16"
    with pytest.raises(UserError, match="fp16"):
        choose_precision("fp16", TINY, 2, 32, CPU)
    assert said == []  # nothing measured, nothing to say


def test_auto_reads_a_known_answer_from_the_cache(tmp_path):
    """A cached entry for this machine and shape decides without timing anything."""
    if not cpu_has_bf16():
        pytest.skip("no bf16 instructions: auto is fp32 without measuring")
    cache = tmp_path / "precision.json"
    key = cache_key(TINY, 2, 32, CPU)
    said = []
    for speeds, want in (({"fp32": 100.0, "bf16": 180.0}, "bf16"), ({"fp32": 100.0, "bf16": 90.0}, "fp32")):
        cache.write_text(json.dumps({key: speeds}))
        choice = choose_precision("auto", TINY, 2, 32, CPU, cache=cache, say=said.append)
        assert (choice.precision, choice.cached, choice.speeds) == (want, True, speeds)
    assert said[-1] == "precision auto: fp32 (fp32 100 tokens/s, bf16 90 tokens/s; cached)"


def test_auto_measures_once_per_shape_and_caches(tmp_path):
    cache = tmp_path / "precision.json"
    said = []
    first = choose_precision("auto", TINY, 2, 32, CPU, seconds=0.05, cache=cache, say=said.append)
    if not cpu_has_bf16():
        assert first.precision == "fp32" and not first.speeds and "no bf16" in said[-1]
        return
    assert not first.cached and set(first.speeds) == {"fp32", "bf16"} and all(v > 0 for v in first.speeds.values())
    assert first.precision == pick(first.speeds)
    assert "fp32" in said[-1] and "bf16" in said[-1] and "measured now" in said[-1]
    again = choose_precision("auto", TINY, 2, 32, CPU, seconds=0.05, cache=cache, say=said.append)
    assert again.cached and again.speeds == first.speeds and again.precision == first.precision
    other = choose_precision("auto", TINY, 4, 32, CPU, seconds=0.05, cache=cache, say=said.append)  # new batch
    assert not other.cached
    assert len(json.loads(cache.read_text())) == 2


# --------------------------------------------------------------------------- generation's dtype

PROMPTS = ["Once upon a time there was a little dog", "Tom and his mom went to the park. They"]


def test_bf16_greedy_output_equals_fp32_up_to_a_near_tie(tiny_model):
    """bf16 weights follow fp32's greedy tokens until fp32's top-2 logit gap is within bf16 rounding."""
    import tinystories
    from tinystories.generate.sampling import generate, prompt_ids

    model, tok = tinystories.load(tiny_model)
    bf = tinystories.load(tiny_model, dtype=torch.bfloat16)[0]
    with torch.inference_mode():
        for p in PROMPTS:
            a = generate(model, tok, [p], max_new_tokens=40, temperature=0)[0][0].tokens
            b = generate(bf, tok, [p], max_new_tokens=40, temperature=0)[0][0].tokens
            i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
            if i is None:
                assert len(a) == len(b) or min(len(a), len(b)) == 40
                continue
            ids = torch.tensor([prompt_ids(tok, p) + a[:i]])
            logits = model(ids)[0, -1]
            top2 = logits.topk(2).values
            gap = (top2[0] - top2[1]).item()
            err = (bf(ids)[0, -1].float() - logits).abs().max().item()  # what bf16 moved the logits by here
            assert gap <= 2 * err and gap < 2 ** -5 * logits.abs().max().item(), (p, i, gap, err)


def test_generate_dtype_auto_measures_once_and_caches(tiny_model, tmp_path):
    import tinystories
    from tinystories.generate.dtype import choose_dtype

    model, tok = tinystories.load(tiny_model)
    said = []
    cache = tmp_path / "generate_dtype.json"
    assert choose_dtype("bf16", model, tok, cache=cache) == torch.bfloat16 and not cache.exists()
    first = choose_dtype("auto", model, tok, cache=cache, say=said.append)
    if not cpu_has_bf16():
        assert first == torch.float32 and not said
        return
    assert first in (torch.float32, torch.bfloat16) and "measured now" in said[-1]
    speeds = next(iter(json.loads(cache.read_text()).values()))
    assert (first == torch.bfloat16) == (speeds["bf16"] > (1 + MARGIN) * speeds["fp32"])
    assert choose_dtype("auto", model, tok, cache=cache, say=said.append) == first and "cached" in said[-1]
