"""The time-budget picker (`train --max-time T` without a preset) and the optional modern block.

The picker's rule on hand-made tables (nearest row in compute, monotone in the budget, a bigger
vocabulary leaning to smaller rows), the shipped table, a real 20-second run on the tiny_data
fixture that must end by its deadline with the schedule at its floor, an explicit preset winning,
and the modern block (rope + RMSNorm + SwiGLU): gradients, and cached decoding against recompute.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from conftest import assert_one_line_error, run_cli
from tinystories.train.budget import Row, Table, plan, train_flops_per_token, wanted
from tinystories.model.config import ModelConfig
from tinystories.model.gpt_neo import GPTNeo
from tinystories.train.config import TrainConfig


def _table(vocab: int = 8192) -> Table:
    rows = [Row(budget_s=b, compute=c, hidden=h, layers=4, heads=h // 32, context=256, batch_size=8, lr=lr)
            for b, c, h, lr in ((120, 1e12, 64, 4e-3), (600, 1e13, 128, 3e-3), (1800, 1e14, 256, 2e-3))]
    return Table(vocab_size=vocab, probe_flops_per_s=1e10, machine="test", rows=rows[::-1])


def test_rule_picks_the_nearest_row_in_log_compute_and_is_monotone():
    t = _table()
    assert [r.budget_s for r in t.rows] == [120, 600, 1800]  # sorted by compute whatever the file order
    assert t.pick(1e12)[0].budget_s == 120
    assert t.pick(3e12)[0].budget_s == 120       # log distance 0.48 to 1e12, 0.52 to 1e13
    assert t.pick(4e12)[0].budget_s == 600
    assert t.pick(1e9)[0].budget_s == 120        # below the table: its first row
    assert t.pick(1e18)[0].budget_s == 1800      # past it: the last row
    picks = [t.pick(10 ** (e / 10))[0].compute for e in range(100, 160)]
    assert picks == sorted(picks) and len(set(picks)) == 3
    # a bigger vocabulary makes every shape dearer per token: the same compute never picks a bigger row
    for e in range(110, 150):
        c = 10 ** (e / 10)
        assert t.pick(c, 50257)[0].compute <= t.pick(c, 8192)[0].compute
    assert t.pick(4e12, 8192)[1] == 4e12 and t.pick(4e12, 50257)[1] < 4e12


def test_a_budget_with_a_row_per_vocabulary_picks_the_datas_and_names_the_better_one(tiny_data):
    """The data's vocabulary is fixed by `prepare`: at a budget measured at two vocabularies the picker takes
    the row measured at the data's, counts compute at that row's vocabulary, and names a better-scoring row
    at the other one with the --vocab-size that trains it."""
    from tinystories.data.prepare import load_data_dir

    t = _table()
    big = t.rows[-1]
    small = Row(budget_s=1800, compute=1e14, hidden=192, layers=4, heads=6, context=256, batch_size=8, lr=2e-3,
                bpb=0.70, vocab_size=4096)
    big.bpb = 0.80
    t = Table(vocab_size=8192, probe_flops_per_s=1e10, machine="test", rows=[*t.rows, small])
    assert t.pick(1e14)[0].hidden == 256 and t.pick(1e14, 8192)[0].hidden == 256
    assert t.pick(1e14, 4096)[0] is small
    assert t.pick(1e14, 4096)[1] == 1e14          # measured at 4096: no rescaling
    assert t.pick(1e12, 4096)[0].budget_s == 120  # a budget with no 4096 row: the table's row, rescaled
    assert t.pick(1e12, 4096)[1] > 1e12
    assert t.alternatives(big) == [small]
    assert t.alternatives(small) == []            # worse rows are not advertised

    data = load_data_dir(tiny_data)  # its vocabulary is neither: the table's 8192 row, and the note
    lines = []
    plan(TrainConfig(data=str(tiny_data), out="x", max_time=60, threads=1), data, torch.device("cpu"),
         table=Table(vocab_size=8192, probe_flops_per_s=1e-3, machine="test", rows=[big, small]),
         say=lines.append)
    assert any("vocabulary 4,096" in line and "--vocab-size 4096" in line and "0.700" in line for line in lines)
    assert "of the table's 1 rungs" in "\n".join(lines)


def test_a_row_measured_on_another_machine_sits_beside_the_budgets_row_and_is_picked_by_its_compute(tiny_data):
    """A budget's seconds buy different compute on each kind of CPU: runs on a second machine add a row at
    their budget (not replace the sweep machine's), the picker weighs it by compute like any other, and the
    run names the machine that measured the row it took."""
    from tinystories.data.prepare import load_data_dir

    t = _table()
    sweep30 = t.rows[-1]
    other = Row(budget_s=1800, compute=3e13, hidden=160, layers=4, heads=5, context=256, batch_size=8, lr=2e-3,
                mlp="relu2", bpb=0.60, machine="a CPU without bf16, fp32")
    t.put(other, "2 runs there")
    assert len(t.rows) == 4 and sweep30 in t.rows and other in t.rows  # beside, not instead
    assert t.notes == ["the 30-minute row on a CPU without bf16, fp32: 2 runs there"]
    assert len(t.candidates()) == 4
    assert t.pick(3e13)[0] is other               # nearest by compute: between the 10- and 30-minute rows
    assert t.pick(1e14)[0] is sweep30 and t.pick(1e13)[0].budget_s == 600
    assert t.alternatives(sweep30) == []          # another machine's row is not this budget's other vocabulary
    again = Row(**{**sweep30.__dict__, "bpb": 0.5})
    t.put(again, "re-measured")                   # the sweep machine's row is replaced, the other kept
    assert len(t.rows) == 4 and other in t.rows and sweep30 not in t.rows
    assert t.row_machine(other) == "a CPU without bf16, fp32" and t.row_machine(again) == "test"

    data = load_data_dir(tiny_data)
    lines = []
    # a minute buys 1e12-1e13 FLOPs on any CPU: nearer 3e12 than 1e17 by far
    near = Row(**{**other.__dict__, "compute": 3e12})
    far = Row(**{**sweep30.__dict__, "compute": 1e17})
    new, choice = plan(TrainConfig(data=str(tiny_data), out="x", max_time=60, threads=1), data, torch.device("cpu"),
                       table=Table(vocab_size=8192, probe_flops_per_s=1e10, machine="test", rows=[near, far]),
                       say=lines.append)
    assert new.model["hidden"] == 160 and new.model["mlp"] == "relu2"
    assert any("a CPU without bf16, fp32) it trained" in line and "of the table's 2 rungs" in line
               for line in lines), lines


def test_flops_per_token_counts_weights_and_attention():
    h, L, V, T = 64, 2, 1000, 128
    g = ModelConfig(vocab_size=V, context=T, hidden=h, layers=L, heads=2, attention="global")
    weights = L * (4 * h * h + 2 * h * 4 * h) + h * V
    assert train_flops_per_token(g) == pytest.approx(6 * weights + 12 * h * L * (T + 1) / 2)
    # a local layer with window 16 sees at most 16 keys: (1 + 2 + ... + 16 + 112 * 16) / 128 on average
    loc = g.replace(attention="local", window=16)
    assert train_flops_per_token(loc) == pytest.approx(6 * weights + 12 * h * L * (136 + 112 * 16) / 128)
    assert train_flops_per_token(g.replace(mlp="swiglu")) > 6 * L * 4 * h * h  # three MLP matrices


def test_shipped_table_loads_and_is_sane():
    t = Table.load()
    assert t.vocab_size > 0 and t.probe_flops_per_s > 0 and t.machine
    budgets = [r.budget_s for r in t.rows]
    assert budgets == sorted(budgets)  # more time, more compute
    for r in t.rows:
        r.model_config(t.vocab_size)  # a valid model
        assert r.lr > 0 and r.batch_size >= 1 and 0 < r.warmup_frac < 0.5
    # a fixed machine speed picks rows monotone in the budget
    picks = [t.pick(t.probe_flops_per_s * s)[0].budget_s for s in range(30, 7200, 30)]
    assert picks == sorted(picks)


def test_only_a_time_limit_without_preset_asks_for_a_pick():
    assert wanted(TrainConfig(max_time=60))
    assert not wanted(TrainConfig(max_time=60, preset="1M"))
    assert not wanted(TrainConfig(max_time=60, max_steps=10))
    assert not wanted(TrainConfig(max_tokens=1000))


def test_twenty_second_budget_ends_by_its_deadline(tiny_data, tmp_path):
    """The probe and the training both fit in the budget, the cosine reaches its floor at the end,
    and a setting the user gave (lr) is kept while the rest is picked: even one equal to the default (1e-3),
    which only the command line's record of what was given tells apart from the table's rate."""
    assert all(row.lr != 1e-3 for row in Table.load().rows)  # else the kept lr would prove nothing
    out = tmp_path / "run"
    proc = run_cli("train", "--data", tiny_data, "--max-time", "20s", "--out", out, "--json",
                   "--set", "threads=1", "--set", "lr=1e-3", "--set", "final_eval_tokens=4096",
                   "--set", "samples=0", "--set", "log_every=1", check=True)
    picked = next(line for line in proc.stderr.splitlines() if line.startswith("budget: picked hidden"))
    assert "lr 0.001," in picked and "(yours: lr)" in picked, picked
    s = json.loads(proc.stdout)
    b = s["budget"]
    assert b["lr"] == 1e-3 and "lr" not in b["picked"]
    # The run stops before a step would cross the deadline; the slack allows for the final checkpoint and for one
    # slow step on a loaded 2-core machine (tighter bounds flaked there), yet a run that ignored the deadline fails.
    assert s["ended_at"] <= b["deadline"] + 3.0, (s["ended_at"] - b["deadline"])
    assert b["probe"]["seconds"] + s["time_s"] <= 23.0
    assert s["stopped"] == "max_time" and s["steps"] >= 5 and s["time_s"] > 10  # most of it went to training
    assert s["preset"].startswith("auto ") and b["kept"] == ["lr"]
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["lr"] == 1e-3 and "lr" in cfg["given"] and cfg["model"]["hidden"] == b["row"]["hidden"]
    assert cfg["batch_size"] == b["row"]["batch_size"] and cfg["context"] == b["row"]["context"]
    lrs = [r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    floor = 1e-3 * cfg["min_lr_ratio"]
    assert lrs[-1] == pytest.approx(floor, rel=0.15)  # the schedule ran to the deadline
    # the run directory resumes as the same model (its saved config rebuilds the picked shape)
    again = run_cli("train", "--out", out, "--resume", "--max-steps", s["steps"] + 1, "--json", check=True)
    assert "budget:" not in again.stderr and json.loads(again.stdout)["parameters"] == s["parameters"]


def test_explicit_preset_wins_over_the_picker(tiny_data, tmp_path):
    proc = run_cli("train", "--data", tiny_data, "--preset", "1M", "--max-time", "3s", "--out", tmp_path / "p",
                   "--json", "--set", "threads=1", "--set", "model.context=64", "--set", "batch_size=2",
                   "--set", "samples=0", "--set", "final_eval_tokens=1024", check=True)
    s = json.loads(proc.stdout)
    assert "budget:" not in proc.stderr and "budget" not in s and s["preset"] == "1M"


def test_budget_too_short_is_a_one_line_error(tiny_data, tmp_path):
    assert_one_line_error(run_cli("train", "--data", tiny_data, "--max-time", "1s", "--out", tmp_path / "x",
                                  "--set", "threads=1"), "--max-time 1s", "too short")


def test_plan_keeps_user_model_fields(tiny_data):
    from tinystories.data.prepare import load_data_dir

    data = load_data_dir(tiny_data)
    lines = []
    cfg, choice = plan(TrainConfig(data=str(tiny_data), out="x", max_time=120, threads=1,
                                   model={"dropout": 0.2}, warmup_steps=7),
                       data, torch.device("cpu"), table=_table(), say=lines.append)
    assert cfg.model["dropout"] == 0.2 and cfg.warmup_steps == 7
    assert cfg.model["hidden"] == choice["row"]["hidden"] and cfg.max_time < 120
    assert sorted(choice["kept"]) == ["model.dropout", "warmup_steps"]
    assert any("picked" in line for line in lines)



def test_plan_expects_the_speed_of_the_model_the_user_set_not_the_rows(tiny_data):
    """A --set model.hidden that widens the row's model is planned at its own cost per token: fewer tokens
    per second expected, so fewer steps, and the row's warmup fraction of those steps (not of the row's)."""
    from tinystories.data.prepare import load_data_dir

    data = load_data_dir(tiny_data)
    table = _table()
    table.rows = table.rows[:1]  # one row, so both plans pick it whatever their probes measured
    row = table.rows[0]
    base = TrainConfig(data=str(tiny_data), out="x", max_time=120, threads=1)
    cfg_row, plain = plan(base, data, torch.device("cpu"), table=table, say=lambda line: None)
    wide = {"hidden": 2 * row.hidden, "heads": 2 * row.heads}
    cfg_wide, widened = plan(base.replace(model=wide), data, torch.device("cpu"), table=table, say=lambda line: None)
    assert cfg_wide.model["hidden"] == 2 * row.hidden and cfg_row.model["hidden"] == row.hidden

    def cost(m):
        return train_flops_per_token(ModelConfig(**{**m, "vocab_size": data.vocab_size}), row.context)

    # each plan's expected speed is its own probe's FLOP/s over its own model's cost (probes differ a little)
    for choice, cfg in ((plain, cfg_row), (widened, cfg_wide)):
        want = choice["probe"]["flops_per_s"] * row.efficiency / cost(cfg.model)
        assert choice["expected_tokens_per_s"] == pytest.approx(want, rel=1e-3)
    ratio = cost(cfg_wide.model) / cost(cfg_row.model)
    assert ratio > 2  # the wider model costs more than twice as much per token ...
    speed = widened["expected_tokens_per_s"] / plain["expected_tokens_per_s"]
    assert speed < 0.75  # ... so it is expected to train far slower, even if the two probes differ
    # warmup stays the row's fraction of this run's steps
    tokens_per_step = cfg_wide.batch_size * cfg_wide.context
    steps = widened["expected_tokens"] / tokens_per_step
    assert cfg_wide.warmup_steps == pytest.approx(row.warmup_frac * steps, rel=0.05, abs=2)


def test_a_run_is_planned_at_the_median_of_the_machines_recent_probes(tmp_path):
    """One probe in a slow spell does not move the plan: the median of the last PROBE_HISTORY probes of this
    machine, threads and precision does; each precision keeps its own history; a torn file starts again."""
    from tinystories.train.budget import PROBE_HISTORY, Probe, steady

    path = tmp_path / "probe.json"

    def probe(gflops, precision="fp32"):
        return Probe(tokens_per_s=gflops * 100.0, flops_per_s=gflops * 1e9, seconds=18.0, steps=40, device="cpu",
                     precision=precision, threads=2)

    first = steady(probe(60), 4096, path)
    assert (first.history, first.flops_per_s, first.measured_flops_per_s) == (1, 60e9, 60e9)
    planned = [steady(probe(g), 4096, path) for g in (70, 80, 20)]
    assert [p.flops_per_s / 1e9 for p in planned] == [65, 70, 65]  # the slow 20 moves the median by 5, not 45
    slow = planned[-1]
    assert slow.measured_flops_per_s == 20e9 and slow.tokens_per_s == pytest.approx(6500.0)
    later = [steady(probe(g), 4096, path) for g in (75, 72)]
    assert PROBE_HISTORY == 5 and later[-1].history == 5
    assert later[-1].flops_per_s == 72e9  # median of the last five: 70, 80, 20, 75, 72 (the 60 dropped out)
    other = steady(probe(200, "bf16"), 4096, path)
    assert (other.history, other.flops_per_s) == (1, 200e9)
    assert len(json.loads(path.read_text())) == 2
    path.write_text("{torn")
    again = steady(probe(66), 4096, path)
    assert (again.history, again.flops_per_s) == (1, 66e9) and len(json.loads(path.read_text())) == 1


def test_plan_reads_and_extends_the_probe_history(tiny_data):
    """Two plans in a row: the second counts one probe more (up to PROBE_HISTORY), is planned at the median
    of the stored readings, and its budget line says so."""
    from tinystories.data.prepare import load_data_dir
    from tinystories.runtime.device import cache_root
    from tinystories.train.budget import PROBE_HISTORY, PROBE_HISTORY_FILE, Probe, history_key

    data = load_data_dir(tiny_data)
    table = _table()
    base = TrainConfig(data=str(tiny_data), out="x", max_time=120, threads=1)
    _, first = plan(base, data, torch.device("cpu"), table=table, say=lambda line: None)
    lines: list[str] = []
    _, second = plan(base, data, torch.device("cpu"), table=table, say=lines.append)
    assert second["probe"]["history"] == min(PROBE_HISTORY, first["probe"]["history"] + 1) >= 2
    stored = json.loads((cache_root() / PROBE_HISTORY_FILE).read_text())[
        history_key(Probe(**second["probe"]), table.vocab_size)]
    assert stored[-1] == second["probe"]["measured_flops_per_s"]
    assert second["probe"]["flops_per_s"] == pytest.approx(statistics.median(stored))
    assert f"the median of this machine's last {second['probe']['history']} probes" in lines[0]


def test_plan_warns_when_the_run_would_pass_over_the_data_many_times(tiny_data, monkeypatch):
    """On data so small that the budget covers it many times, the run is told it may overfit; below the
    threshold it is not."""
    from tinystories.data.prepare import load_data_dir
    from tinystories.train import budget

    data = load_data_dir(tiny_data)
    cfg = TrainConfig(data=str(tiny_data), out="x", max_time=60, threads=1)
    monkeypatch.setattr(budget, "MANY_EPOCHS", 1)  # a minute covers the tiny test data a few times
    lines = []
    _, choice = plan(cfg, data, torch.device("cpu"), table=_table(), say=lines.append)
    epochs = choice["expected_tokens"] / len(data.train)
    assert epochs > 1.5
    warned = [line for line in lines if "passes over train.bin" in line]
    assert len(warned) == 1 and f"~{epochs:.0f} passes" in warned[0] and "more training data" in warned[0]

    monkeypatch.setattr(budget, "MANY_EPOCHS", 10 * epochs)
    lines.clear()
    plan(cfg, data, torch.device("cpu"), table=_table(), say=lines.append)
    assert lines and not any("passes over train.bin" in line for line in lines)


def test_plan_takes_the_rows_optimizer_schedule_and_block_unless_the_user_gave_them(tiny_data):
    """A row measured with Muon, WSD and a block option hands all three to the run; a --set the user gave
    (here optimizer=adamw, qk_norm=false) wins, and is named as theirs."""
    from tinystories.data.prepare import load_data_dir

    data = load_data_dir(tiny_data)
    table = _table()
    for row in table.rows:
        row.optimizer, row.lr_schedule, row.cooldown_frac, row.muon_lr = "muon", "wsd", 0.3, 0.01
        row.block = {"qk_norm": True, "tie_embeddings": False}
    lines = []
    cfg, choice = plan(TrainConfig(data=str(tiny_data), out="x", max_time=120, threads=1), data,
                       torch.device("cpu"), table=table, say=lines.append)
    assert (cfg.optimizer, cfg.lr_schedule, cfg.cooldown_frac, cfg.muon_lr) == ("muon", "wsd", 0.3, 0.01)
    assert cfg.model["qk_norm"] is True and cfg.model["tie_embeddings"] is False
    picked = next(line for line in lines if "picked" in line)
    assert "muon, wsd (cooldown 0.3), qk_norm, tie_embeddings=False" in picked

    user = TrainConfig(data=str(tiny_data), out="x", max_time=120, threads=1, optimizer="adamw",
                       model={"qk_norm": False}).replace(given=("optimizer",))
    cfg, choice = plan(user, data, torch.device("cpu"), table=table, say=lines.append)
    assert cfg.optimizer == "adamw" and cfg.lr_schedule == "wsd"
    assert cfg.model["qk_norm"] is False and cfg.model["tie_embeddings"] is False
    assert sorted(choice["kept"]) == ["model.qk_norm", "optimizer"]
    # the shipped table's block options are ones the transformers export can express
    from tinystories.model.hf import export_class
    for row in Table.load().rows:
        export_class(row.model_config(8192))  # a UserError if transformers cannot express the row's model


def test_a_keep_best_row_gives_the_run_keep_best_and_enough_validation_passes(tiny_data):
    """A row measured with keep_best (the 60-minute one) hands it to the run with periodic validation to
    choose from: at least EVALS_PER_RUN passes, at most KEEP_BEST_EVALS; the user's keep_best=false wins."""
    from tinystories.data.prepare import load_data_dir
    from tinystories.train.budget import EVALS_PER_RUN, KEEP_BEST_EVALS

    data = load_data_dir(tiny_data)
    table = _table()
    for row in table.rows:
        row.keep_best = True
    lines = []
    cfg, choice = plan(TrainConfig(data=str(tiny_data), out="x", max_time=120, threads=1), data,
                       torch.device("cpu"), table=table, say=lines.append)
    steps = choice["expected_tokens"] / (cfg.batch_size * cfg.context)
    assert cfg.keep_best is True and EVALS_PER_RUN <= steps / cfg.eval_every <= KEEP_BEST_EVALS + 1
    assert "keep_best" in next(line for line in lines if "picked" in line)
    assert "+keep_best" in choice["label"]
    whole = TrainConfig(data=str(tiny_data), out="x", max_time=120, threads=1, eval_tokens=None,
                        given=["eval_tokens"])  # every pass over all of val.bin: planned at its length
    cfg, _ = plan(whole, data, torch.device("cpu"), table=table, say=lines.append)
    assert cfg.keep_best is True and cfg.eval_tokens is None and cfg.eval_every >= 1

    user = TrainConfig(data=str(tiny_data), out="x", max_time=120, threads=1, keep_best=False,
                       given=["keep_best"])
    cfg, choice = plan(user, data, torch.device("cpu"), table=table, say=lines.append)
    assert cfg.keep_best is False and choice["kept"] == ["keep_best"]


def test_plan_reserves_time_for_the_last_validation_pass_over_all_of_val(tiny_data):
    """The last periodic pass may start just before the deadline, so the plan keeps its time out of training.
    eval_tokens=None (every pass over all of val.bin) is the longest pass; it once reserved nothing for it."""
    from tinystories.data.prepare import load_data_dir

    data = load_data_dir(tiny_data)
    table = _table()
    table.rows = table.rows[:1]

    def planned(**kw):
        cfg = TrainConfig(data=str(tiny_data), out="x", max_time=120, threads=1, given=list(kw), **kw)
        return plan(cfg, data, torch.device("cpu"), table=table, say=lambda line: None)[1]

    whole = planned(eval_tokens=None, eval_every=10)
    pass_s = len(data.val) / (2.5 * whole["expected_tokens_per_s"])  # forward only, as the plan counts it
    assert whole["eval_s"] == pytest.approx(pass_s, rel=1e-2, abs=2e-4) and whole["eval_s"] > 0
    some = planned(eval_tokens=1024, eval_every=10)
    assert some["eval_s"] == pytest.approx(1024 / (2.5 * some["expected_tokens_per_s"]), rel=1e-2, abs=2e-4)
    assert planned(eval_tokens=None, eval_every=0)["eval_s"] == 0  # no periodic passes, nothing to reserve


# --------------------------------------------------------------------------- the modern block

def _modern(**kw) -> GPTNeo:
    cfg = ModelConfig(vocab_size=97, context=40, hidden=32, layers=2, heads=4, window=8,
                      position="rope", norm="rmsnorm", mlp="swiglu", **kw)
    torch.manual_seed(0)
    m = GPTNeo(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_modern_block_backward_matches_finite_differences_and_trains():
    m = _modern().double()
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))

    def loss_fn():  # in float64 throughout (forward's own loss is computed in fp32)
        return torch.nn.functional.cross_entropy(m(x[:, :-1]).reshape(-1, 97), x[:, 1:].reshape(-1))

    loss_fn().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # autograd against central differences on entries that rope, RMSNorm and SwiGLU all lie behind
    for p in (m.blocks[0].attn.qkv.weight, m.blocks[1].mlp.gate_up.weight, m.blocks[0].ln_1.weight):
        for idx in [(0,), (5,)] if p.dim() == 1 else [(1, 3), (40, 7)]:
            with torch.no_grad():
                keep = p[idx].item()
                p[idx] = keep + 1e-6
                up = loss_fn().item()
                p[idx] = keep - 1e-6
                down = loss_fn().item()
                p[idx] = keep
            assert p.grad[idx].item() == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-9)
    # and it learns: a few AdamW steps on one batch
    m = _modern()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = m(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_modern_block_cached_decoding_equals_full_recompute():
    """Token by token through the KV cache (rope positions from the cache slot, the local window on
    the second layer) gives the logits of one full forward pass."""
    m = _modern(attention=["global", "local"]).eval()
    x = torch.randint(0, 97, (3, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(3, 30)
        parts = [m(x[:, :7], cache=cache, start=0)]
        for t in range(7, 30):
            parts.append(m(x[:, t:t + 1], cache=cache, start=t))
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
