"""The ablation's machinery (benchmarks/ablation.py): real short runs on real data, what it records, how it
resumes, what it refuses to record, and the verdict rule its table applies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import sigterm_once_started

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablation  # noqa: E402


def test_an_interrupted_run_records_nothing_and_a_rerun_finishes_it(tiny_data, tmp_path, capsys):
    """SIGTERM makes train save and return early; that must not be recorded as a finished run (the sweep
    once recorded 2.03 bpb after 23 s of a 10-minute budget). The rerun then trains it and records it."""
    results, work = tmp_path / "ablation.jsonl", tmp_path / "work"
    argv = ["--data", str(tiny_data), "--only", "baseline", "--seeds", "1", "--smoke", "--budget", "8s",
            "--results", str(results), "--work", str(work)]
    with sigterm_once_started(work / "baseline-s1" / "metrics.jsonl"):
        with pytest.raises(KeyboardInterrupt, match="not recorded"):
            ablation.main(argv)
    assert not results.exists() or not results.read_text().strip()

    ablation.main(argv)
    (rec,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert rec["variant"] == "baseline" and rec["seed"] == 1 and rec["budget_s"] == 8.0
    assert 0.5 < rec["bpb"] < 8 and rec["tokens"] > 0  # a real score of a real run
    # the base is the budget table's recipe written out as settings
    assert "model.position=\"rope\"" in rec["sets"] and "seed=1" in rec["sets"]
    capsys.readouterr()
    ablation.main(argv)  # resumes: everything is done, nothing runs
    assert "0 run(s) to go (1 done)" in capsys.readouterr().out
    assert len(results.read_text().splitlines()) == 1


def _rows(name: str, bpbs: list[float]) -> list[dict]:
    return [{"variant": name, "seed": i + 1, "budget_s": 600.0, "smoke": False, "bpb": b, "tokens_per_s": 1000.0}
            for i, b in enumerate(bpbs)]


def test_a_change_wins_or_loses_only_by_more_than_the_seed_spread():
    rows = (_rows("baseline", [0.850, 0.852]) + _rows("muon", [0.830, 0.831]) + _rows("qk_norm", [0.880, 0.870])
            + _rows("wsd", [0.849, 0.853]) + _rows("x0_mix", [0.840]))
    out = ablation.table(rows, ["baseline", "muon", "qk_norm", "wsd", "x0_mix", "softcap"], 600.0, False)
    line = {r.split(" | ")[0].lstrip("| "): r for r in out.splitlines()}
    assert "| -0.0205 | wins |" in line["muon"]
    assert "| +0.0240 | loses |" in line["qk_norm"]  # by more than its own spread (0.010)
    assert "within the spread" in line["wsd"]  # -0.0005 against a spread of 0.004
    assert "wins (one seed)" in line["x0_mix"]
    assert "not run" in line["softcap"]
