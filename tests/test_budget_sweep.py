"""The budget sweep's decisions, on results written the way the sweep writes them: which runs the next
rung gets, and when the table takes the modern block."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import budget_sweep as bs  # noqa: E402


def add_run(res: bs.Results, spec: bs.Spec, budget_s: float, bpb: float) -> None:
    res.add({"kind": "run", "key": spec.key(budget_s), "budget_s": budget_s, **dataclasses.asdict(spec),
             "heads": spec.heads, "bpb": bpb})


def first_rung(tmp_path: Path, modern_bpb: float, seed_bpb: float) -> bs.Results:
    """The 2-minute rung as the shipped sweep saw it: 128x4 best at half its prior rate."""
    res = bs.Results(tmp_path / "r.jsonl")
    lead = bs.Spec(128, 4, 32, 0.002)
    add_run(res, lead.with_(lr=bs.lr_prior(128)), 120, 1.58)
    add_run(res, lead, 120, 1.379)
    add_run(res, bs.Spec(64, 8, 16, bs.lr_prior(64)), 120, 1.381)
    add_run(res, bs.Spec(128, 8, 32, bs.lr_prior(128)), 120, 1.69)
    add_run(res, lead.with_(seed=1), 120, seed_bpb)
    add_run(res, lead.with_(block="modern"), 120, modern_bpb)
    return res


def test_the_modern_block_is_taken_only_when_it_wins_by_more_than_the_seed_spread(tmp_path):
    res = first_rung(tmp_path, modern_bpb=1.289, seed_bpb=1.413)  # spread 0.034, modern 0.090 better
    assert list(bs.block_wins(res)) == [120]
    res = first_rung(tmp_path / "b", modern_bpb=1.35, seed_bpb=1.413)  # 0.029 better: within the spread
    assert bs.block_wins(res) == {}
    res = first_rung(tmp_path / "c", modern_bpb=1.37, seed_bpb=1.380)  # spread 0.001: the 0.02 floor holds
    assert bs.block_wins(res) == {}


def test_the_next_rung_carries_the_leader_and_a_bigger_shape_at_a_corrected_rate(tmp_path):
    res = first_rung(tmp_path, modern_bpb=1.289, seed_bpb=1.413)
    stages = dict(bs.stages(res, [120, 600], [1], shapes=[(128, 4, 32), (64, 8, 16), (128, 8, 32)], lean=True))
    rung = stages["rung 10m00s"]
    # the leader at its best rate; 128x8 never had its rate refined, so it gets the prior (4e-3) corrected
    # as the leader's refinement corrected its own (4e-3 -> 2e-3)
    assert rung == [(bs.Spec(128, 4, 32, 0.002), 600), (bs.Spec(128, 8, 32, 0.002), 600)]
    assert "batch and context at 10m00s" not in stages  # lean: no variants past the first budget
