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
