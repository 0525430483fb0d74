"""The budget sweep's decisions, on results written the way the sweep writes them: which runs the next
rung gets, and when the table takes the modern block."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from conftest import sigterm_once_started

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


# ----------------------------------------------------------------------------- the muon sweep (issue 17)

def add_muon_run(res: bs.Results, spec: bs.Spec, budget_s: float, bpb: float, tokens: int = 4_000_000) -> None:
    """A finished run as run_one records it (the fields the table row is built from)."""
    fpt = 6 * spec.hidden ** 2 * spec.layers * 12
    res.add({"kind": "run", "key": spec.key(budget_s), "budget_s": budget_s, **dataclasses.asdict(spec),
             "heads": spec.heads, "bpb": bpb, "params": 2_000_000, "flops_per_token": fpt, "tokens": tokens,
             "tokens_per_s": tokens / budget_s, "steps": tokens // 2048, "warmup_steps": 100, "flops": fpt * tokens,
             "probe_flops_per_s": 1.4e11, "epochs": tokens / 1.47e6, "time": "2026-11-30 05:00:00"})


def muon(h, L, v, lr=None, **kw) -> bs.Spec:
    return bs.Spec(h, L, 32, lr or bs.lr_prior(h, "muon"), vocab=v, **bs.MUON, **kw)


def test_the_first_sweeps_keys_are_unchanged_so_its_results_still_resume():
    assert bs.Spec(64, 8, 16, 0.00566).key(120) == "t120-v8192-h64-l8-hs16-lr0.00566-b8-c256-d0-gpt-neo-s1337"
    assert muon(128, 4, 4096).key(300) == \
        "t300-v4096-h128-l4-hs32-lr0.002-b8-c256-d0-modern-s1337-muon-wsd"
    assert muon(128, 4, 4096, zero_init=True).key(300).endswith("-muon-wsd-z")


def test_the_muon_sweep_tries_every_shape_at_both_vocabularies_then_carries_each_vocabularys_best(tmp_path):
    res = bs.Results(tmp_path / "m.jsonl")
    shapes = [(128, 4, 32), (192, 4, 32), (256, 4, 32)]
    first = next(bs.muon_stages(res, [300, 600], [1], shapes=shapes))
    assert first[0] == "shapes and vocabularies"
    runs = [s for s, _ in first[1]]
    assert {(s.hidden, s.vocab) for s in runs} == {(h, v) for h, _, _ in shapes for v in (4096, 8192)}
    assert all(s.optimizer == "muon" and s.lr_schedule == "wsd" and not s.zero_init and s.block == "modern"
               for s in runs)
    assert all(s.model()["position"] == "rope" and "zero_init" not in s.model() for s in runs)
    # 5 minutes: 128x4 at 4096 leads, 8192's best is 192x4; 256x4 (bigger than the leader) never refined
    add_muon_run(res, muon(128, 4, 4096), 300, 0.886)
    add_muon_run(res, muon(128, 4, 4096, lr=0.001), 300, 0.880)
    add_muon_run(res, muon(192, 4, 8192), 300, 0.900)
    add_muon_run(res, muon(128, 4, 8192), 300, 0.906)
    add_muon_run(res, muon(256, 4, 4096), 300, 0.950)
    add_muon_run(res, bs.Spec(128, 4, 32, 0.002, vocab=4096, block="modern"), 300, 0.500)  # AdamW: not this sweep's
    stages = dict(bs.muon_stages(res, [300, 600], [1], shapes=shapes))
    rung = [s for s, b in stages["rung 10m00s"]]
    assert rung[0] == muon(128, 4, 4096, lr=0.001)          # the leader, at its better rate
    assert muon(192, 4, 8192) in rung                          # 8192's best, so 10 minutes has a row for it
    # 256x4's rate corrected as the leader's was (halved), at the leader's vocabulary
    assert muon(256, 4, 4096, lr=round(bs.lr_prior(256, "muon") / 2, 6)) in rung
    assert len(rung) == 3
    assert stages["dropout at 10m00s"] == []                   # nothing has run at 10 minutes yet


def test_the_muon_sweep_writes_a_row_per_budget_and_vocabulary_and_keeps_the_tables_other_rows(tmp_path):
    import shutil

    from tinystories.train.budget import Table

    table_path = tmp_path / "budget_table.json"
    shutil.copy(bs.REPO / "src" / "tinystories" / "resources" / bs.TABLE_FILE, table_path)
    before = Table.load(table_path)
    res = bs.Results(tmp_path / "m.jsonl")
    add_muon_run(res, muon(128, 4, 4096), 600, 0.801, tokens=8_000_000)
    add_muon_run(res, muon(192, 4, 4096), 600, 0.795, tokens=6_000_000)
    add_muon_run(res, muon(128, 4, 8192), 600, 0.830)
    table = bs.write_muon_rows(res, table_path)
    again = Table.load(table_path)
    assert [dataclasses.asdict(r) for r in again.rows] == \
        [dataclasses.asdict(r) for r in table.rows]
    assert len([r for r in again.rows if r.budget_s == 600]) == 2  # one per vocabulary
    at10 = {again.row_vocab(r): r for r in again.rows if r.budget_s == 600}
    assert at10[4096].hidden == 192 and at10[4096].bpb == 0.795 and at10[4096].tried == 2
    assert at10[4096].optimizer == "muon" and at10[4096].lr_schedule == "wsd" and at10[4096].block == {}
    assert at10[4096].efficiency == round(6e6 / 600 * 6 * 192 ** 2 * 4 * 12 / 1.4e11, 4)
    assert at10[8192].bpb == 0.83 and at10[8192].vocab_size is None
    # every row at another budget is the old table's, unchanged
    assert [dataclasses.asdict(r) for r in again.rows if r.budget_s != 600] == \
        [dataclasses.asdict(r) for r in before.rows if r.budget_s != 600]
    assert sum("10-minute row at vocabulary 4096:" in n for n in again.notes) == 1
    assert any("budget_sweep.py --recipe muon" in n for n in again.notes)
    # and the picker takes the new 4096 row on 4096 data at about its compute
    row, _ = again.pick(at10[4096].compute / at10[4096].efficiency, 4096)
    assert row.hidden == 192 and row.budget_s == 600


def test_the_muon_sweeps_report_writes_the_table_the_markdown_and_the_plot(tmp_path):
    import shutil

    res = bs.Results(tmp_path / "budget_sweep_muon.jsonl")
    res.add({"kind": "probe", "flops_per_s": 1.4e11, "machine": "test machine"})
    add_muon_run(res, muon(128, 4, 4096), 300, 0.886)
    add_muon_run(res, muon(128, 4, 4096, seed=1), 300, 0.890)
    add_muon_run(res, muon(128, 4, 8192), 300, 0.906)
    add_muon_run(res, muon(192, 4, 4096), 600, 0.801)
    table_path = tmp_path / "budget_table.json"
    shutil.copy(bs.REPO / "src" / "tinystories" / "resources" / bs.TABLE_FILE, table_path)
    bs.report(res, table_path, "muon")
    md = (tmp_path / "budget_sweep_muon.md").read_text()
    assert "| 5m00s | 4096 | 2 | 128 x 4, 4 heads of 32 |" in md  # the second seed counts as a run and "| 5m00s | 8192 |" in md
    assert "| 10m00s | 4096 | 1 | 192 x 4, 6 heads of 32 |" in md
    assert "two seeds): 0.004 bits per byte" in md  # 0.890 against 0.886
    assert (tmp_path / "budget_sweep_muon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_interrupted_run_is_not_recorded_as_finished(tiny_data, tmp_path):
    """SIGTERM (what stopping a sweep sends) makes train finish its step and return early; the sweep must
    not take that for a finished run (it once recorded a 10-minute run at 2.03 bpb after 23 s)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "data-v512").symlink_to(tiny_data)
    res = bs.Results(tmp_path / "r.jsonl")
    spec = bs.Spec(32, 1, 16, 0.002, context=64, vocab=512, **bs.MUON)
    with sigterm_once_started(work / "runs" / spec.key(120.0) / "metrics.jsonl"):
        with pytest.raises(KeyboardInterrupt, match="not recorded"):
            bs.run_one(res, spec, 120.0, work)
    assert not res.runs() and not res.done(spec.key(120.0))  # a resumed sweep runs it again


def test_a_runs_probe_measures_in_the_precision_the_planner_probes_and_trains_in(tiny_data, tmp_path):
    """A row's efficiency is its run's speed over its probe's, and `train --max-time` multiplies it by a probe
    taken in the precision it trains in. The Muon sweep once probed in fp32 beside runs that trained in bf16,
    so its rows expected 1.3-1.5x the speed they trained at. Asked for bf16 (any CPU runs it, slowly without the
    instructions), a run's probe and its training are both bf16, and the row carries their ratio."""
    from tinystories.model.config import ModelConfig
    from tinystories.train.budget import Table, train_flops_per_token

    work = tmp_path / "work"
    work.mkdir()
    (work / "data-v512").symlink_to(tiny_data)
    res = bs.Results(tmp_path / "r.jsonl")
    spec = bs.Spec(32, 1, 16, 0.002, context=64, vocab=512, **bs.MUON)
    bs.run_one(res, spec, 4.0, work, eval_tokens=2048, precision="bf16")
    [rec] = res.runs()
    assert rec["probe_precision"] == rec["precision"] == "bf16" and rec["tokens"] > 0
    table = tmp_path / "table.json"
    table.write_text(json.dumps(Table.load().to_dict()))  # the shipped table: its rows at other vocabularies stay
    [row] = [r for r in bs.write_muon_rows(res, table).rows if r.vocab_size == 512]
    per_token = train_flops_per_token(ModelConfig(**{**spec.model(), "vocab_size": 512}))
    assert row.efficiency == pytest.approx(rec["tokens_per_s"] * per_token / rec["probe_flops_per_s"], rel=1e-3)


def test_the_muon_rate_stage_stays_the_same_once_a_refined_rate_wins(tmp_path):
    """The rate stage refines the best two pairs at their prior rate. Once one pair's refined rate beats
    its prior, a resumed sweep must not drop that pair and refine the third one too (it once did)."""
    res = bs.Results(tmp_path / "m.jsonl")
    shapes = [(96, 4, 32), (128, 4, 32)]
    add_muon_run(res, muon(128, 4, 4096), 300, 0.863)
    add_muon_run(res, muon(96, 4, 4096), 300, 0.869)
    add_muon_run(res, muon(128, 4, 8192), 300, 0.870)
    add_muon_run(res, muon(96, 4, 8192), 300, 0.880)
    rates = dict(bs.muon_stages(res, [300, 600], [1], shapes=shapes))["learning rates"]
    assert {(s.hidden, s.vocab) for s, _ in rates} == {(128, 4096), (96, 4096)} and len(rates) == 4
    for spec, budget in rates:  # the refinement runs; 96x4 at twice its rate wins the rung
        add_muon_run(res, spec, budget, 0.858 if spec.hidden == 96 and spec.lr > bs.lr_prior(96, "muon") else 0.9)
    again = dict(bs.muon_stages(res, [300, 600], [1], shapes=shapes))["learning rates"]
    assert again == rates and all(res.done(s.key(b)) for s, b in again)  # nothing new to run


def test_each_longer_rungs_leader_is_tried_with_relu2_and_a_win_is_the_row_and_the_next_rungs_run(tmp_path):
    """ReLU² exports now (ArceeForCausalLM), so the sweep measures it at each budget past the first: the
    rung's leader with mlp=relu2. Its key is new (earlier keys unchanged); if it wins, it is the budget's
    row (with its MLP) and the (shape, vocabulary) the next rung carries."""
    from tinystories.model.hf import export_class
    from tinystories.train.budget import Table

    res = bs.Results(tmp_path / "m.jsonl")
    shapes = [(128, 4, 32), (192, 4, 32)]
    assert muon(128, 4, 4096).key(600) == "t600-v4096-h128-l4-hs32-lr0.002-b8-c256-d0-modern-s1337-muon-wsd"
    assert muon(128, 4, 4096, mlp="relu2").key(600).endswith("-muon-wsd-relu2")
    assert bs.spec_of({**dataclasses.asdict(muon(128, 4, 4096)), "extra": 1}).mlp is None  # old records
    add_muon_run(res, muon(128, 4, 4096), 300, 0.86)
    add_muon_run(res, muon(192, 4, 4096), 300, 0.89)
    stages = dict(bs.muon_stages(res, [300, 600, 1800], [2], shapes=shapes))
    assert stages["relu2 at 10m00s"] == []  # the 10-minute rung has not run
    add_muon_run(res, muon(128, 4, 4096), 600, 0.800, tokens=8_000_000)
    add_muon_run(res, muon(192, 4, 4096), 600, 0.805, tokens=6_000_000)
    stages = dict(bs.muon_stages(res, [300, 600, 1800], [2], shapes=shapes))
    relu2 = muon(128, 4, 4096, mlp="relu2")
    assert stages["relu2 at 10m00s"] == [(relu2, 600)]
    assert relu2.model()["mlp"] == "relu2" and muon(128, 4, 4096).model()["mlp"] == "swiglu"
    add_muon_run(res, relu2, 600, 0.794, tokens=8_200_000)
    stages = dict(bs.muon_stages(res, [300, 600, 1800], [2], shapes=shapes))
    assert stages["relu2 at 10m00s"] == [(relu2, 600)]  # the same run: done, so the sweep skips it
    assert [s for s, _ in stages["rung 30m00s"]][0] == relu2  # the winner is what 30 minutes runs
    table_path = tmp_path / "t.json"
    (tmp_path / "t.json").write_text((bs.REPO / "src" / "tinystories" / "resources" / bs.TABLE_FILE).read_text())
    bs.write_muon_rows(res, table_path)
    row = next(r for r in Table.load(table_path).rows if r.budget_s == 600 and r.vocab_size == 4096)
    assert (row.mlp, row.bpb, row.position, row.norm) == ("relu2", 0.794, "rope", "rmsnorm")
    assert export_class(row.model_config(4096)) == "ArceeForCausalLM"  # the table may pick it by default
    assert "ReLU²" in next(line for line in _muon_md(res, tmp_path).splitlines() if line.startswith("| 10m00s | 4096"))


def _muon_md(res: bs.Results, tmp_path: Path) -> str:
    bs.write_muon_markdown(res, tmp_path / "m.md")
    return (tmp_path / "m.md").read_text()
