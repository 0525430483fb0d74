"""The budget sweep: which recipe trains the best story model in 5, 10, 30 and 60 minutes on this machine.

    python benchmarks/budget_sweep.py --work /scratch/sweep          # run (or resume) the whole sweep
    python benchmarks/budget_sweep.py --report                       # redraw plot + tables from the results
    python benchmarks/budget_sweep.py --dry-run                      # the next stage's runs, without training

Two sweeps, one per recipe (`--recipe`):
- `muon` (the default, issue 17): the recipe the 10-minute ablation kept (Muon + WSD cooldown, on rope +
  RMSNorm + SwiGLU) at 5, 10, 30 and 60 minutes, with the
  vocabulary (BPE 4096 or 8192) among the choices and each longer budget's leader also with the ReLU² MLP,
  every model scored on all of the validation file.
  Results: benchmarks/results/budget_sweep_muon.jsonl. Each budget gets a row per vocabulary (the data's
  vocabulary is fixed by `prepare`, so the picker needs both); those rows replace the table's rows at the
  same budget and vocabulary, and the table's other rows stay. See `muon_stages`.
- `adamw`: the first sweep (AdamW on a cosine, GPT-Neo's block against the modern one, at 2, 5, 10 and
  30 minutes, BPE 8192, the first 262,144 validation tokens). Results: benchmarks/results/budget_sweep.jsonl.
  What follows describes it.

It prepares the shared training files (the two .txt heads and the .json; TinyStories-subset-valid.txt as
validation) once per vocabulary into WORK, then trains recipes with `tinystories.train.train`, each for
a fixed wall-clock budget with the cosine schedule ending at the deadline, and scores every model in bits
per byte on the first 262,144 tokens of TinyStories-subset-valid.txt (about 43% of it, ~1,300 stories: the
same text for every run, so rankings are paired; all of it would double the cost of the short runs).
`benchmarks/budget_check.py` scores the picked recipes on the whole file. Every finished run is appended to
benchmarks/results/budget_sweep.jsonl at once, so an interrupted sweep resumes where it stopped.

A full grid at 30 minutes would take days on two cores, so the sweep is successive halving:
  1. every shape of the grid (hidden 64..512, 2..8 layers, head size 16/32/64) at the smallest budget,
     with a learning rate scaled by width; then the best shapes again at half and twice that rate;
  2. at each larger budget, the best few shapes of the one before (each at its best rate), plus the
     best shape bigger than the leader (bigger models gain most from more time; if its rate was never
     refined, the prior's rate corrected by the leader's refinement) and the leader at half
     its rate (longer runs may want a lower one);
  3. beside the halving: the leader of each budget with the modern block (rope + RMSNorm + SwiGLU)
     instead of GPT-Neo's, two more seeds of the 2-minute leader (the run-to-run spread), and at 10
     minutes the leader with other vocabularies, a larger batch and a longer context; at 30 minutes
     with dropout.
The best GPT-Neo recipe at each budget (its modern-block twin where that won by more than the seed
spread), with the FLOPs its run trained, becomes a budget table: benchmarks/results/budget_table_adamw.json,
or with `--table src/tinystories/resources/budget_table.json` the table `tinystories train --max-time T`
without a preset picks from (its report rewrites every row of the table it is given). The report also writes
benchmarks/results/budget_sweep.png (the paper's Figure 6: best loss against compute, the winning shape
at each point) and benchmarks/results/budget_table.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tinystories.train.budget import REFERENCE, TABLE_FILE, Row, Table, train_flops_per_token
from tinystories.model.config import ModelConfig
from tinystories.runtime.files import atomic_write_json, atomic_write_text
from tinystories.runtime.console import format_duration, parse_duration

SHARED = Path(os.environ.get("TINYSTORIES_SHARED_DATA", REPO.parent / "shared" / "data" / "tinystories"))
TRAIN_FILES = ["TinyStories-train-head.txt", "TinyStoriesV2-GPT4-train-head.txt", "tinystories-sample-3000.json"]
VALID_FILE = "TinyStories-subset-valid.txt"
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_VOCAB = 8192                  # the sweep's base vocabulary and the table's: rows without a vocab_size
EVAL_TOKENS = 262_144                 # validation tokens scored per run (train's final_eval_tokens default)

# (hidden, layers, head size): the grid's first rung
SHAPES = [
    (64, 4, 16), (64, 8, 16), (64, 8, 32),
    (128, 2, 32), (128, 4, 16), (128, 4, 32), (128, 4, 64), (128, 8, 16), (128, 8, 32),
    (192, 4, 32), (192, 6, 32), (192, 6, 64),
    (256, 2, 64), (256, 4, 32), (256, 4, 64), (256, 8, 64),
    (384, 2, 64), (384, 4, 64),
    (512, 2, 64), (512, 4, 64),
]
# the muon sweep's grid: widths 96-256 at 4 and 6 layers, heads of 32 (what won every budget so far)
MUON_SHAPES = [(96, 4, 32), (128, 4, 32), (128, 6, 32), (192, 4, 32), (192, 6, 32), (256, 4, 32), (256, 6, 32)]
VOCABS = (4096, 8192)                 # the muon sweep's vocabularies (prepare's default and the old one)
LR_REFINE = 3                         # shapes re-run at half and twice their rate at the first budget
SEEDS = (1, 2)                        # extra seeds of the first budget's leader
MODERN = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
# the recipe issue 17's 10-minute ablation kept, as Spec fields: Muon and WSD each won by 5-10 times the
# seed spread; zero-initialised projections lost alone and added nothing to the two (README, "The
# 10-minute ablation"), so the sweep leaves them off (Spec.zero_init remains, for a sweep that wants them)
MUON = {"block": "modern", "optimizer": "muon", "lr_schedule": "wsd"}


def lr_prior(hidden: int, optimizer: str = "adamw") -> float:
    """The first rung's learning rate, falling as 1/sqrt(width): 4e-3 at width 128 for AdamW (the first
    sweep then refined it to 2e-3), 2e-3 for Muon at width 128 (the rate the table's Muon rows ran at;
    its 192-wide row too, so the refinement stage tests rates either side of the prior)."""
    return round((2e-3 if optimizer == "muon" else 4e-3) * math.sqrt(128 / hidden), 5)


@dataclass(frozen=True)
class Spec:
    hidden: int
    layers: int
    head_size: int
    lr: float
    batch_size: int = 8
    context: int = 256
    vocab: int = DEFAULT_VOCAB
    dropout: float = 0.0
    block: str = "gpt-neo"            # gpt-neo | modern
    seed: int = 1337
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    optimizer: str = "adamw"
    lr_schedule: str = "cosine"
    zero_init: bool = False
    mlp: str | None = None            # None: the block's own (GELU for gpt-neo, SwiGLU for modern); relu2

    @property
    def heads(self) -> int:
        return self.hidden // self.head_size

    def model(self) -> dict:
        m = {"hidden": self.hidden, "layers": self.layers, "heads": self.heads, "context": self.context,
             "dropout": self.dropout}
        if self.block == "modern":
            m.update(MODERN)
        if self.zero_init:
            m["zero_init"] = True
        if self.mlp is not None:
            m["mlp"] = self.mlp
        return m

    def model_config(self, vocab: int | None = None) -> ModelConfig:
        return ModelConfig(vocab_size=vocab or self.vocab, **self.model())

    def shape(self) -> tuple[int, int, int]:
        return (self.hidden, self.layers, self.head_size)

    def label(self) -> str:
        return f"{self.hidden}x{self.layers}/hs{self.head_size}" + (f"+{self.mlp}" if self.mlp else "")

    def key(self, budget_s: float) -> str:
        key = (f"t{int(budget_s)}-v{self.vocab}-h{self.hidden}-l{self.layers}-hs{self.head_size}-lr{self.lr:g}"
               f"-b{self.batch_size}-c{self.context}-d{self.dropout:g}-{self.block}-s{self.seed}")
        if (self.optimizer, self.lr_schedule, self.zero_init) != ("adamw", "cosine", False):
            # the first sweep's keys stay as they were, so its results still resume
            key += f"-{self.optimizer}-{self.lr_schedule}" + ("-z" if self.zero_init else "")
        if self.mlp is not None:  # after the rest, so that every earlier key is unchanged
            key += f"-{self.mlp}"
        return key

    def with_(self, **kw) -> "Spec":
        return dataclasses.replace(self, **kw)


def spec_of(rec: dict) -> Spec:
    return Spec(**{f.name: rec[f.name] for f in dataclasses.fields(Spec) if f.name in rec})


# ===================================================================== results

class Results:
    """The JSONL of finished runs (and probe records), appended to as each one ends."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = []
        if path.is_file():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    self.records.append(json.loads(line))

    def add(self, rec: dict) -> None:
        self.records.append(rec)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def runs(self, budget_s: float | None = None, **where) -> list[dict]:
        out = [r for r in self.records if r.get("kind") == "run" and r.get("bpb") is not None]
        if budget_s is not None:
            out = [r for r in out if r["budget_s"] == budget_s]
        return [r for r in out if all(r.get(k) == v for k, v in where.items())]

    def done(self, key: str) -> bool:
        return any(r.get("key") == key for r in self.records if r.get("kind") == "run")

    def probes(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "probe"]

    def best_shapes(self, budget_s: float, n: int) -> list[Spec]:
        """The n best shapes at a budget (GPT-Neo, default vocab, seed 1337), each with its best run's spec."""
        best: dict[tuple, dict] = {}
        for r in self.runs(budget_s, block="gpt-neo", vocab=DEFAULT_VOCAB, seed=1337):
            s = spec_of(r)
            if s.shape() not in best or r["bpb"] < best[s.shape()]["bpb"]:
                best[s.shape()] = r
        ranked = sorted(best.values(), key=lambda r: r["bpb"])
        return [spec_of(r) for r in ranked[:n]]


    def best_specs(self, budget_s: float, n: int, keep=None, **where) -> list[Spec]:
        """The n best (shape, vocabulary) pairs at a budget among runs matching `where` (seed 1337) and,
        if given, the predicate `keep`, each with its best such run's spec."""
        best: dict[tuple, dict] = {}
        for r in self.runs(budget_s, seed=1337, **where):
            s = spec_of(r)
            if keep is not None and not keep(s):
                continue
            if (s.shape(), s.vocab) not in best or r["bpb"] < best[(s.shape(), s.vocab)]["bpb"]:
                best[(s.shape(), s.vocab)] = r
        return [spec_of(r) for r in sorted(best.values(), key=lambda r: r["bpb"])[:n]]


# ===================================================================== the plan

def bigger_shape(ranked: list[Spec], prior=lr_prior) -> Spec | None:
    """The best shape bigger than the leader (bigger models gain most from more time), at its best rate;
    a rate never refined is the prior corrected as the leader's refinement corrected the leader's."""
    size = lambda s: s.hidden ** 2 * s.layers  # noqa: E731 (non-embedding weights, up to a constant)
    bigger = [s for s in ranked[1:] if size(s) > size(ranked[0])]
    if not bigger:
        return None
    big, lead = bigger[0], ranked[0]
    if big.lr == prior(big.hidden, big.optimizer):
        big = big.with_(lr=round(prior(big.hidden, big.optimizer) * lead.lr / prior(lead.hidden, lead.optimizer), 6))
    return big


def stages(res: Results, budgets: list[float], keep: list[int], shapes=SHAPES, lean: bool = False):
    """(name, [(spec, budget)]) in order; each stage is computed from the results of those before it,
    so the generator must be advanced only after a stage's runs are done. `lean` (a sweep that must
    fit in an hour): two shapes refined, one extra seed, and no batch/context/vocabulary/dropout
    variants nor modern block past the first budget."""
    b0 = budgets[0]
    yield "shapes", [(Spec(h, L, hs, lr_prior(h)), b0) for h, L, hs in shapes]
    top = res.best_shapes(b0, 2 if lean else LR_REFINE)
    yield "learning rates", [(s.with_(lr=round(s.lr * m, 6)), b0) for s in top for m in (0.5, 2.0)]
    lead = res.best_shapes(b0, 1)
    yield "seeds", [(lead[0].with_(seed=sd), b0) for sd in SEEDS[:1 if lean else None]] if lead else []
    yield f"modern block at {format_duration(b0)}", [(lead[0].with_(block="modern"), b0)] if lead else []
    for i, b in enumerate(budgets[1:], 1):
        prev = budgets[i - 1]
        k = keep[min(i - 1, len(keep) - 1)]
        ranked = res.best_shapes(prev, len(SHAPES))
        chosen = ranked[:k]
        if ranked:
            big = bigger_shape(ranked)
            if big is not None and big not in chosen:
                chosen.append(big)
            if k >= 3:
                chosen.append(ranked[0].with_(lr=round(ranked[0].lr * 0.5, 6)))
        yield f"rung {format_duration(b)}", [(s, b) for s in chosen]
        if lean:
            continue
        lead = res.best_shapes(b, 1)
        yield f"modern block at {format_duration(b)}", [(lead[0].with_(block="modern"), b)] if lead else []
        if not lead:
            continue
        s = lead[0]
        if i == 1:  # batch and context, around the second budget's leader
            yield f"batch and context at {format_duration(b)}", [
                (s.with_(batch_size=2 * s.batch_size), b), (s.with_(batch_size=max(1, s.batch_size // 2)), b),
                (s.with_(context=512, batch_size=max(1, s.batch_size // 2)), b)]
        if b == 600:  # the budget: does another prepare default vocabulary do better?
            yield "vocabularies at 10m", [(s.with_(vocab=4096), b), (s.with_(vocab=2048), b)]
        if b == budgets[-1]:
            yield f"dropout at {format_duration(b)}", [(s.with_(dropout=0.1), b)]


def muon_stages(res: Results, budgets: list[float], keep: list[int], shapes=MUON_SHAPES, vocabs=VOCABS):
    """The muon sweep's stages, (name, [(spec, budget)]) in order, each computed from the results before it:
      1. every shape at every vocabulary at the first budget, at the width's prior rate;
      2. the best two (shape, vocabulary) pairs again at half and twice their rate, and the leader with a
         second seed (the run-to-run spread);
      3. at each larger budget: the best `keep` pairs of the budget before, the best of each vocabulary
         (so that every budget has a row per vocabulary), and the best shape bigger than the leader at
         its vocabulary;
      4. after each larger budget's rung, its leader with the ReLU² MLP: ReLU² won the 10-minute ablation
         stacked on Muon + WSD (0.8047 against 0.8102, 5% more tokens/s on the Zen 4) and now exports (as
         ArceeForCausalLM), so the sweep measures it where the rows are chosen; a win carries it on to the
         next rung as that (shape, vocabulary)'s best run;
      5. at the last budget, its leader with residual dropout 0.1 (the data runs out: 1.5M tokens are
         seen 10-20 times in an hour, and the first hour-long tries memorised them)."""
    where = {"optimizer": "muon"}
    b0 = budgets[0]
    yield "shapes and vocabularies", [(Spec(h, L, hs, lr_prior(h, "muon"), vocab=v, **MUON), b0)
                                      for h, L, hs in shapes for v in vocabs]
    # the best two pairs ranked by their prior-rate runs only: ranked by each pair's best run, a pair
    # whose refined rate won dropped out and the next pair was refined too (the sweep's resume did that)
    top = res.best_specs(b0, 2, keep=lambda s: s.lr == lr_prior(s.hidden, "muon"), **where)
    yield "learning rates", [(s.with_(lr=round(s.lr * m, 6)), b0) for s in top for m in (0.5, 2.0)]
    lead = res.best_specs(b0, 1, **where)
    yield "seeds", [(lead[0].with_(seed=SEEDS[0]), b0)] if lead else []
    for i, b in enumerate(budgets[1:], 1):
        ranked = res.best_specs(budgets[i - 1], len(shapes) * len(vocabs) * 3, **where)
        chosen = ranked[:keep[min(i - 1, len(keep) - 1)]]
        def new(spec):  # one run per (shape, vocabulary) and budget, whatever its rate
            return all((c.shape(), c.vocab) != (spec.shape(), spec.vocab) for c in chosen)

        for v in vocabs:
            best_v = next((s for s in ranked if s.vocab == v), None)
            if best_v is not None and new(best_v):
                chosen.append(best_v)
        # the best shape bigger than the leader at the leader's vocabulary
        big = bigger_shape([s for s in ranked if s.vocab == ranked[0].vocab]) if ranked else None
        if big is not None and new(big):
            chosen.append(big)
        yield f"rung {format_duration(b)}", [(s, b) for s in chosen]
        lead = res.best_specs(b, 1, **where)
        yield f"relu2 at {format_duration(b)}", [(lead[0].with_(mlp="relu2"), b)] if lead else []
    lead = res.best_specs(budgets[-1], 1, **where)
    yield f"dropout at {format_duration(budgets[-1])}", [(lead[0].with_(dropout=0.1), budgets[-1])] if lead else []


# ===================================================================== running

def data_dir(work: Path, vocab: int) -> Path:
    from tinystories.data.prepare import prepare

    out = work / f"data-v{vocab}"
    if not (out / "meta.json").is_file():
        prepare([SHARED / f for f in TRAIN_FILES], out, vocab_size=vocab, val=[SHARED / VALID_FILE])
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torch

    return f"{cpu} ({os.cpu_count()} cores), {torch.get_num_threads()} threads, torch {torch.__version__}"


def git_commit() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
    return ""


def run_probe(res: Results, seconds: float = 10.0, precision: str = "auto") -> None:
    from tinystories.train.budget import probe, probe_precision

    p = probe(seconds, precision=probe_precision(precision, DEFAULT_VOCAB, None, seconds / 4))
    res.add({"kind": "probe", **p.to_dict(), "machine": machine(), "loadavg": os.getloadavg()[0],
             "commit": git_commit(), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"probe: reference {REFERENCE['hidden']}x{REFERENCE['layers']} at {p.tokens_per_s:,.0f} tokens/s = "
          f"{p.flops_per_s / 1e9:.1f} GFLOP/s", flush=True)


def refuse_interrupted(summary: dict, what: str) -> None:
    """KeyboardInterrupt if `train` was stopped (Ctrl-C / SIGTERM): it saved and returned early, and that
    is not a finished run (one was once recorded at 2.03 bpb after 23 s of a 10-minute budget), so the
    caller records nothing and a resumed sweep or ablation runs it again."""
    if summary.get("stopped") == "interrupted":
        raise KeyboardInterrupt(f"{what}: interrupted after {summary['time_s']:.0f}s; not recorded")


def run_one(res: Results, spec: Spec, budget_s: float, work: Path, eval_tokens: int | None = None,
            precision: str = "auto") -> None:
    import torch

    from tinystories.train.budget import measure_speed, probe, probe_precision
    from tinystories.train.precision import choose_precision
    from tinystories.train.config import TrainConfig
    from tinystories.train.loop import TrainingDiverged, train

    key = spec.key(budget_s)
    data = data_dir(work, spec.vocab)
    mcfg = spec.model_config()
    # the machine's speed right now (a shared machine drifts): this run's budget in compute. The probe runs
    # in the precision the planner's probe will (`tinystories train --max-time`), and the speed estimate in
    # the one this run trains in: a row's efficiency is its run's speed over its probe's, and an fp32 probe
    # beside bf16 runs made the 5- and 10-minute rows expect 1.3-1.5x the speed they train at.
    ref = probe(3.0, precision=probe_precision(precision, DEFAULT_VOCAB, None, 0.75))
    tps, _ = measure_speed(mcfg, spec.batch_size, spec.context, 3.0, precision=choose_precision(
        precision, mcfg, spec.batch_size, spec.context, torch.device("cpu"), seconds=0.75, say=lambda line: None).precision)
    steps = tps * budget_s / (spec.batch_size * spec.context)
    cfg = TrainConfig(data=str(data), out=str(work / "runs" / key), preset="1M", model=spec.model(),
                      batch_size=spec.batch_size, context=spec.context, lr=spec.lr, seed=spec.seed,
                      optimizer=spec.optimizer, lr_schedule=spec.lr_schedule,
                      warmup_steps=max(1, round(spec.warmup_frac * steps)), weight_decay=spec.weight_decay,
                      max_time=budget_s, eval_every=0, checkpoint_every=0, keep_checkpoints=1,
                      final_eval_tokens=eval_tokens, samples=0, precision=precision)
    load0, t0 = os.getloadavg()[0], time.time()
    rec = {"kind": "run", "key": key, "budget_s": budget_s, **dataclasses.asdict(spec), "heads": spec.heads,
           "params": sum(p for p in _params(mcfg).values()), "flops_per_token": train_flops_per_token(mcfg),
           "measured_tokens_per_s": round(tps, 1), "warmup_steps": cfg.warmup_steps,
           "probe_flops_per_s": ref.flops_per_s, "probe_precision": ref.precision, "compute": budget_s * ref.flops_per_s}
    try:
        s = train(cfg, force=True)
    except TrainingDiverged as e:
        rec.update(bpb=None, diverged=str(e))
    else:
        refuse_interrupted(s, key)
        rec.update(bpb=s.get("val_bpb"), val_loss=s.get("val_loss"), val_tokens=s.get("val_tokens"),
                   steps=s["steps"], tokens=s["tokens"], tokens_per_s=s["tokens_per_s"], train_s=s["time_s"],
                   precision=s.get("precision"),
                   flops=s["tokens"] * rec["flops_per_token"], epochs=s["tokens"] / _train_tokens(data))
    rec.update(wall_s=round(time.time() - t0, 1), loadavg=[round(load0, 2), round(os.getloadavg()[0], 2)],
               threads=torch.get_num_threads(), commit=git_commit(), time=time.strftime("%Y-%m-%d %H:%M:%S"))
    res.add(rec)
    bpb = f"{rec['bpb']:.4f} bpb" if rec.get("bpb") is not None else "diverged"
    print(f"  {key}: {bpb}, {rec.get('tokens', 0):,} tokens at {rec.get('tokens_per_s', 0):,.0f} tok/s "
          f"({rec['wall_s']:.0f}s)", flush=True)


def _params(mcfg: ModelConfig) -> dict:
    from tinystories.model.config import parameter_counts

    c = parameter_counts(mcfg)
    return {"total": c["total"]}


def _train_tokens(data: Path) -> int:
    return json.loads((data / "meta.json").read_text())["splits"]["train"]["tokens"]


# ===================================================================== report

def best_per_budget(res: Results, block: str = "gpt-neo", vocab: int = DEFAULT_VOCAB) -> dict[float, dict]:
    out: dict[float, dict] = {}
    for r in res.runs(block=block, vocab=vocab):
        if r["budget_s"] not in out or r["bpb"] < out[r["budget_s"]]["bpb"]:
            out[r["budget_s"]] = r
    return dict(sorted(out.items()))


def probe_flops(res: Results) -> float:
    vals = sorted(p["flops_per_s"] for p in res.probes())
    assert vals, "no probe record: run the sweep first"
    return vals[len(vals) // 2]


def efficiency(res: Results, spec: Spec) -> float:
    """A model's training FLOP/s relative to the reference model's: the median over every run of its
    shape, batch and context of (its speed x its FLOPs per token) / the probe taken just before it."""
    def same(r):
        t = spec_of(r)
        return (t.shape(), t.batch_size, t.context, t.block, t.vocab) == \
            (spec.shape(), spec.batch_size, spec.context, spec.block, spec.vocab)

    vals = sorted(r["measured_tokens_per_s"] * r["flops_per_token"] / r["probe_flops_per_s"]
                  for r in res.runs() if same(r) and r.get("probe_flops_per_s"))
    return round(vals[len(vals) // 2], 4) if vals else 1.0


MIN_MARGIN = 0.02                     # bits per byte: "clearly" is at least this, and at least the seed spread


def block_wins(res: Results) -> dict[float, dict]:
    """The modern block's run at each budget where it beat GPT-Neo's best by more than the run-to-run
    spread (seeds of the same recipe): there, and only there, the table takes it. GPT-Neo stays the
    default unless it loses clearly."""
    sp = spread(res)
    margin = max(MIN_MARGIN, sp[0] if sp else 0.0)
    return {b: twin for b, (neo, twin) in modern_twins(res).items() if twin["bpb"] < neo["bpb"] - margin}


def write_table(res: Results, path: Path) -> Table:
    """The budget table: the best GPT-Neo recipe at each budget (or its modern-block twin where that won
    clearly, see `block_wins`), with the FLOPs its run really trained."""
    rows = []
    wins = block_wins(res)
    for b, r in best_per_budget(res).items():
        r = wins.get(b, r)
        block = MODERN if r["block"] == "modern" else {}
        tried = len({rr["key"] for rr in res.runs(b)})
        rows.append(Row(**block, budget_s=b, compute=r["flops"], hidden=r["hidden"], layers=r["layers"], heads=r["heads"],
                        context=r["context"], batch_size=r["batch_size"], lr=r["lr"], warmup_frac=r["warmup_frac"],
                        weight_decay=r["weight_decay"], dropout=r["dropout"], bpb=round(r["bpb"], 4),
                        tokens=r["tokens"], tokens_per_s=r["tokens_per_s"], tried=tried,
                        efficiency=efficiency(res, spec_of(r))))
    probes = res.probes()
    table = Table(vocab_size=DEFAULT_VOCAB, probe_flops_per_s=probe_flops(res), machine=probes[0]["machine"],
                  rows=rows, metric=f"bits per byte on the first {EVAL_TOKENS:,} tokens of {VALID_FILE}",
                  notes=[f"written by benchmarks/budget_sweep.py from {len(res.runs())} runs",
                         f"training data: {', '.join(TRAIN_FILES)}; BPE vocab {DEFAULT_VOCAB}",
                         "compute = the FLOPs the winning run trained (6 x weights + attention, per token, x tokens); "
                         "efficiency = that model's FLOP/s over the reference model's, measured back to back"])
    atomic_write_json(path, table.to_dict())
    return table


def scaling_fit(best: dict[float, dict]) -> tuple[float, int, float] | None:
    """Slopes of log(parameters) and log(tokens) against log(FLOPs) over the budgets' best runs."""
    rs = list(best.values())
    if len(rs) < 3:
        return None

    def slope(ys):
        xs = [math.log(r["flops"]) for r in rs]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)

    return slope([math.log(r["params"]) for r in rs]), len(rs), slope([math.log(r["tokens"]) for r in rs])


def modern_twins(res: Results) -> dict[float, tuple[dict, dict]]:
    """(GPT-Neo's best run, its modern-block twin) for every budget where the leader ran with both blocks."""
    out = {}
    for b, neo in best_per_budget(res).items():
        twin = [r for r in res.runs(b, block="modern") if spec_of(r).with_(block="gpt-neo") == spec_of(neo)]
        if twin:
            out[b] = (neo, twin[0])
    return out


def modern_verdict(res: Results) -> list[tuple[float, float, float]]:
    """(budget, GPT-Neo bpb, modern bpb) for every budget where the leader ran with both blocks."""
    return [(b, neo["bpb"], twin["bpb"]) for b, (neo, twin) in modern_twins(res).items()]


def spread(res: Results) -> tuple[float, list[float]] | None:
    """The first budget leader's bpb over seeds: (max - min, values)."""
    if not res.runs():
        return None
    b0 = min(r["budget_s"] for r in res.runs())
    lead = res.best_shapes(b0, 1)
    if not lead:
        return None
    vals = [r["bpb"] for r in res.runs(b0) if spec_of(r).with_(seed=1337) == lead[0]]
    return (max(vals) - min(vals), vals) if len(vals) > 1 else None


def write_markdown(res: Results, table: Table, path: Path) -> None:
    lines = [f"Machine: {table.machine}. Reference probe: {table.probe_flops_per_s / 1e9:.1f} GFLOP/s "
             f"({REFERENCE['hidden']}x{REFERENCE['layers']}, batch {REFERENCE['batch_size']} x {REFERENCE['context']}).",
             f"Metric: {table.metric}. Training data: the three shared training files, BPE {DEFAULT_VOCAB}.", "",
             "| budget | training FLOPs (T) | recipes run | best shape | params | lr | batch | tokens | epochs | bits/byte |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    best = {**best_per_budget(res), **block_wins(res)}
    for row in table.rows:
        r = best.get(row.budget_s, {})
        lines.append(f"| {format_duration(row.budget_s)} | {row.compute / 1e12:.1f} | {row.tried} | "
                     f"{row.hidden} x {row.layers}, {row.heads} heads of {row.hidden // row.heads}"
                     f"{', ' + row.position + ' + ' + row.norm + ' + ' + row.mlp if row.position != 'learned' else ''} | "
                     f"{r.get('params', 0) / 1e6:.2f}M | {row.lr:g} | {row.batch_size} x {row.context} | "
                     f"{(row.tokens or 0) / 1e6:.2f}M | {r.get('epochs', 0):.1f} | {row.bpb:.3f} |")
    fit = scaling_fit(best)
    if fit:
        lines += ["", f"The best model's size grows with compute as about compute^{fit[0]:.2f} (least squares on the "
                      f"{fit[1]} budgets, parameters including the embedding), and its training tokens as "
                      f"compute^{fit[2]:.2f}: the paper's section 6 polynomial law, at this tiny scale."]
    mv = modern_verdict(res)
    if mv:
        lines += ["", "GPT-Neo block against the modern block (rope + RMSNorm + SwiGLU), the same recipe otherwise:", "",
                  "| budget | GPT-Neo | modern | difference |", "|---|---|---|---|"]
        lines += [f"| {format_duration(b)} | {n:.3f} | {m:.3f} | {m - n:+.3f} |" for b, n, m in mv]
        wins = block_wins(res)
        lines += ["", "The table takes the modern block where it won by more than the run-to-run spread (and at "
                  f"least {MIN_MARGIN}): " + (", ".join(format_duration(b) for b in wins) if wins else "nowhere") + "."]
    sp = spread(res)
    if sp:
        lines += ["", f"Run-to-run spread (the first budget's leader over {len(sp[1])} seeds): "
                      f"{sp[0]:.3f} bits per byte ({', '.join(f'{v:.3f}' for v in sp[1])})."]
    var = [r for r in res.runs() if r["budget_s"] == 600 and best.get(600) and r["key"] != best[600]["key"]
           and spec_of(r).shape() == spec_of(best[600]).shape() and r["block"] == "gpt-neo"]
    if var:
        lines += ["", "Around the 10-minute leader (one change each):", "",
                  "| change | tokens | bits/byte |", "|---|---|---|"]
        lead = spec_of(best[600])
        for r in sorted(var, key=lambda r: r["bpb"]):
            s = spec_of(r)
            diff = ", ".join(f"{f.name} {getattr(s, f.name)}" for f in dataclasses.fields(Spec)
                             if getattr(s, f.name) != getattr(lead, f.name))
            lines.append(f"| {diff} | {r['tokens'] / 1e6:.2f}M | {r['bpb']:.3f} |")
    lines += ["", f"All {len(res.runs())} runs: benchmarks/results/budget_sweep.jsonl."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _figure():
    """Both sweeps' plots: a figure of two panels (every run against FLOPs; the best against minutes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)


def _left_panel(ax, ylabel: str, legend_size: int) -> None:
    """Both sweeps' plots: the left panel's axes (bits per byte against training FLOPs, log scale)."""
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (6 x weights + attention, per token, x tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title("every run, and the best shape at each budget", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=legend_size)


def _finish(fig, ax2, res: Results, title: str, path: Path) -> None:
    """Both sweeps' plots: the right panel's labels (minutes on this machine), the title, the PNG."""
    import io

    from tinystories.runtime.files import atomic_write_bytes

    ax2.minorticks_off()
    ax2.set_xlabel("training time on this machine")
    ax2.set_ylabel("bits per byte")
    probes = res.probes()
    ax2.set_title(probes[0]["machine"] if probes else "", fontsize=8)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def plot(res: Results, path: Path) -> None:
    """Figure 6 of the paper, for this machine: every run's bits per byte against the FLOPs it trained
    with, the best at each budget joined and labelled with its shape; beside it, best against minutes."""
    fig, ax, ax2 = _figure()
    neo = res.runs(block="gpt-neo", vocab=DEFAULT_VOCAB)
    budgets = sorted({r["budget_s"] for r in neo})
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for i, b in enumerate(budgets):
        rs = [r for r in neo if r["budget_s"] == b]
        ax.scatter([r["flops"] for r in rs], [r["bpb"] for r in rs], s=16, alpha=0.45,
                   color=cmap(i / max(1, len(budgets) - 1)), label=f"{format_duration(b)} runs")
    best = best_per_budget(res)
    xs, ys = [r["flops"] for r in best.values()], [r["bpb"] for r in best.values()]
    ax.plot(xs, ys, "k-o", lw=1.5, ms=6, label="best at each budget")
    for r in best.values():
        ax.annotate(f"{spec_of(r).label()}\nlr {r['lr']:g}", (r["flops"], r["bpb"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    _left_panel(ax, f"bits per byte on {VALID_FILE}", 8)

    mins = [b / 60 for b in best]
    ax2.plot(mins, ys, "k-o", label="GPT-Neo block, best recipe")
    mv = modern_verdict(res)
    if mv:
        ax2.plot([b / 60 for b, _, _ in mv], [m for _, _, m in mv], "s--", color="tab:orange",
                 label="modern block (rope + RMSNorm + SwiGLU), same recipe: the table takes it where it wins clearly")
    for v, marker in ((4096, "^"), (2048, "v")):
        rs = res.runs(block="gpt-neo", vocab=v)
        if rs:
            ax2.scatter([r["budget_s"] / 60 for r in rs], [r["bpb"] for r in rs], marker=marker, s=40,
                        label=f"BPE vocab {v}, same recipe", zorder=3)
    for b, r in best.items():
        ax2.annotate(f"{r['bpb']:.3f}", (b / 60, r["bpb"]), textcoords="offset points", xytext=(-12, -14), fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xticks(mins, [format_duration(b) for b in best])
    _finish(fig, ax2, res, "What to train in the time you have (TinyStories, BPE 8192, the three shared training "
            "files)", path)


# ===================================================================== the muon sweep's report

def best_muon(res: Results) -> dict[tuple[float, int], dict]:
    """The best muon run at each (budget, vocabulary), in budget order."""
    out: dict[tuple[float, int], dict] = {}
    for r in res.runs(optimizer="muon"):
        k = (r["budget_s"], r["vocab"])
        if k not in out or r["bpb"] < out[k]["bpb"]:
            out[k] = r
    return dict(sorted(out.items()))


def muon_tried(res: Results, budget_s: float, vocab: int) -> int:
    """The muon runs at a budget and vocabulary (each seed a run)."""
    return len({x["key"] for x in res.runs(budget_s, optimizer="muon", vocab=vocab)})


def write_muon_rows(res: Results, path: Path) -> Table:
    """Each budget's best muon run at each vocabulary, written into the budget table at `path` as the row
    for that budget and vocabulary (`Table.put`: the table's rows at other budgets or vocabularies stay)."""
    table = Table.load(path) if path.is_file() else None
    vocab = table.vocab_size if table else DEFAULT_VOCAB
    rows = []
    for (b, v), r in best_muon(res).items():
        spec = spec_of(r)
        row = Row(**{**MODERN, "mlp": spec.mlp or MODERN["mlp"]}, budget_s=b, compute=r["flops"],
                  hidden=spec.hidden, layers=spec.layers, heads=spec.heads, context=spec.context, batch_size=spec.batch_size, lr=spec.lr,
                  warmup_frac=round(r["warmup_steps"] / max(1, r["steps"]), 4), weight_decay=spec.weight_decay,
                  dropout=spec.dropout, bpb=round(r["bpb"], 4), tokens=r["tokens"], tokens_per_s=r["tokens_per_s"],
                  tried=muon_tried(res, b, v),
                  efficiency=round(r["tokens_per_s"] * r["flops_per_token"] / r["probe_flops_per_s"], 4),
                  optimizer=spec.optimizer, lr_schedule=spec.lr_schedule,
                  block={"zero_init": True} if spec.zero_init else {}, vocab_size=None if v == vocab else v)
        rows.append((row, f"the best of {row.tried} runs of benchmarks/budget_sweep.py --recipe muon "
                          f"({r['time'][:10]}), bpb on all of {VALID_FILE}"))
    if table is None:
        table = Table(vocab_size=vocab, probe_flops_per_s=probe_flops(res), machine=res.probes()[0]["machine"],
                      rows=[row for row, _ in rows], metric=f"bits per byte on all of {VALID_FILE}", notes=[])
    for row, how in rows:
        table.put(row, how)
    atomic_write_json(path, table.to_dict())
    return table


def write_muon_markdown(res: Results, path: Path) -> None:
    probes = res.probes()
    lines = [f"Machine: {probes[0]['machine'] if probes else '?'}. Recipe: Muon + WSD (cooldown 0.2), rope + RMSNorm + "
             "SwiGLU (ReLU² where the shape says so), batch 8 x 256.",
             f"Metric: bits per byte on all of {VALID_FILE}. Training data: the three shared training files.", "",
             "| budget | vocabulary | recipes run | best shape | params | lr | dropout | tokens | epochs | bits/byte |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (b, v), r in best_muon(res).items():
        s = spec_of(r)
        mlp = ", ReLU²" if s.mlp == "relu2" else ""
        lines.append(f"| {format_duration(b)} | {v} | {muon_tried(res, b, v)} | {s.hidden} x {s.layers}, {s.heads} heads of "
                     f"{s.head_size}{mlp} | {r['params'] / 1e6:.2f}M | {s.lr:g} | {s.dropout:g} | {r['tokens'] / 1e6:.2f}M | "
                     f"{r.get('epochs', 0):.1f} | {r['bpb']:.3f} |")
    seeds = [r for r in res.runs(optimizer="muon") if r["seed"] != 1337]
    for r in seeds:
        twin = [x for x in res.runs(r["budget_s"], optimizer="muon")
                if x["seed"] != r["seed"] and spec_of(x).with_(seed=r["seed"]) == spec_of(r)]
        if twin:
            lines += ["", f"Run-to-run spread ({spec_of(r).label()} at vocabulary {r['vocab']}, "
                          f"{format_duration(r['budget_s'])}, two seeds): {abs(twin[0]['bpb'] - r['bpb']):.3f} bits per byte."]
    lines += ["", f"All {len(res.runs(optimizer='muon'))} runs: {res.path.name}."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_muon(res: Results, path: Path) -> None:
    """Figure 6 for the muon sweep: every run's bits per byte against the FLOPs it trained with (colour:
    budget; marker: vocabulary), each vocabulary's best per budget joined; beside it, best against minutes."""
    import matplotlib

    fig, ax, ax2 = _figure()
    runs = res.runs(optimizer="muon")
    budgets = sorted({r["budget_s"] for r in runs})
    cmap = matplotlib.colormaps["viridis"]
    markers = dict(zip(VOCABS, ("^", "o")))
    for i, b in enumerate(budgets):
        for v in VOCABS:
            rs = [r for r in runs if r["budget_s"] == b and r["vocab"] == v]
            if rs:
                ax.scatter([r["flops"] for r in rs], [r["bpb"] for r in rs], s=18, alpha=0.5,
                           marker=markers.get(v, "s"), color=cmap(i / max(1, len(budgets) - 1)),
                           label=f"{format_duration(b)}, BPE {v}")
    best = best_muon(res)
    for v in VOCABS:
        pts = [(b, r) for (b, vv), r in best.items() if vv == v]
        if not pts:
            continue
        ax.plot([r["flops"] for _, r in pts], [r["bpb"] for _, r in pts], "-", marker=markers.get(v, "s"),
                color="k" if v == DEFAULT_VOCAB else "tab:red", lw=1.4, label=f"best at each budget, BPE {v}")
        for _, r in pts:
            ax.annotate(spec_of(r).label(), (r["flops"], r["bpb"]), textcoords="offset points", xytext=(5, 5),
                        fontsize=7)
        ax2.plot([b / 60 for b, _ in pts], [r["bpb"] for _, r in pts], "-", marker=markers.get(v, "s"),
                 label=f"BPE {v}")
        for b, r in pts:
            ax2.annotate(f"{r['bpb']:.3f}", (b / 60, r["bpb"]), textcoords="offset points", xytext=(-12, -14),
                         fontsize=8)
    _left_panel(ax, f"bits per byte on all of {VALID_FILE}", 7)
    ax2.set_xscale("log")
    ax2.set_xticks([b / 60 for b in budgets], [format_duration(b) for b in budgets])
    _finish(fig, ax2, res, "What to train in the time you have: Muon + WSD (TinyStories, the three shared training "
            "files)", path)


def report(res: Results, table_path: Path, recipe: str = "adamw") -> None:
    """The table the picker reads, and beside the results file: budget_table.md and budget_sweep.png
    (the muon sweep: budget_sweep_muon.md and budget_sweep_muon.png)."""
    if not res.runs():
        print("no finished runs yet")
        return
    out = res.path.parent
    if recipe == "muon":
        write_muon_rows(res, table_path)
        write_muon_markdown(res, out / "budget_sweep_muon.md")
        plot_muon(res, out / "budget_sweep_muon.png")
        print((out / "budget_sweep_muon.md").read_text())
        return
    out = res.path.parent
    out.mkdir(parents=True, exist_ok=True)
    table = write_table(res, table_path)
    write_markdown(res, table, out / "budget_table.md")
    plot(res, out / "budget_sweep.png")
    print((out / "budget_table.md").read_text())


# ===================================================================== main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "budget-sweep",
                    help="prepared data and run directories (default: runs/budget-sweep)")
    ap.add_argument("--recipe", choices=("muon", "adamw"), default="muon",
                    help="muon: the ablation's recipe at 5/10/30/60 minutes and two vocabularies (default); "
                         "adamw: the first sweep")
    ap.add_argument("--results", type=Path, default=None,
                    help="the JSONL of finished runs (default: benchmarks/results/budget_sweep_muon.jsonl, or "
                         "budget_sweep.jsonl for --recipe adamw)")
    ap.add_argument("--table", type=Path, default=None,
                    help="where to write the budget table (default: the shipped one for muon, which replaces "
                         "only its own budgets' rows; budget_table_adamw.json beside the results for adamw, whose "
                         "report rewrites every row)")
    ap.add_argument("--budgets", default=None,
                    help="comma-separated budgets, smallest first (default 5m,10m,30m,60m; adamw: 2m,5m,10m,30m)")
    ap.add_argument("--keep", default=None,
                    help="shapes carried to each larger budget (default 3,2,1 for muon, whose rungs are longer; "
                         "5,3,2 for adamw)")
    ap.add_argument("--report", action="store_true", help="only redraw the plot and tables from the results")
    ap.add_argument("--dry-run", action="store_true", help="print the stages and their runs without training")
    ap.add_argument("--shapes", type=int, default=None, metavar="N", help="only the first N shapes (pilots)")
    ap.add_argument("--grid", default=None, metavar="SHAPES",
                    help="the first rung's shapes instead of the full grid, e.g. 128x8/32,256x4/64 (hidden x layers / head size)")
    ap.add_argument("--lean", action="store_true",
                    help="fewer runs around the halving (see stages()): the sweep in about an hour on 2 cores")
    ap.add_argument("--eval-tokens", type=int, default=None, metavar="N",
                    help=f"score the first N validation tokens (0 = all; default: all for muon, {EVAL_TOKENS:,} "
                         "for adamw)")
    args = ap.parse_args(argv)
    muon = args.recipe == "muon"
    args.results = args.results or RESULTS / ("budget_sweep_muon.jsonl" if muon else "budget_sweep.jsonl")
    args.budgets = args.budgets or ("5m,10m,30m,60m" if muon else "2m,5m,10m,30m")
    if args.eval_tokens is None:
        args.eval_tokens = 0 if muon else EVAL_TOKENS
    args.table = args.table or (REPO / "src" / "tinystories" / "resources" / TABLE_FILE if muon
                                else args.results.parent / "budget_table_adamw.json")
    if muon and args.lean:
        ap.error("--lean applies to --recipe adamw (the muon sweep's rungs are set by --keep)")
    budgets = [parse_duration(b.strip(), "--budgets") for b in args.budgets.split(",")]
    keep = [int(k) for k in (args.keep or ("3,2,1" if muon else "5,3,2")).split(",")]
    res = Results(args.results)
    if args.report:
        report(res, args.table, args.recipe)
        return 0
    os.environ.setdefault("TINYSTORIES_QUIET", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    if not res.probes() and not args.dry_run:
        run_probe(res)
    shapes = (MUON_SHAPES if muon else SHAPES)[:args.shapes]
    if args.grid:
        try:
            shapes = [tuple(int(v) for v in g.replace("/", "x").split("x")) for g in args.grid.split(",")]
            assert all(len(t) == 3 and t[0] % t[2] == 0 for t in shapes)
        except (ValueError, AssertionError):
            ap.error(f"--grid {args.grid!r}: expected HIDDENxLAYERS/HEADSIZE,... with the head size dividing hidden")
    plan = muon_stages(res, budgets, keep, shapes) if muon else stages(res, budgets, keep, shapes, lean=args.lean)
    for name, runs in plan:
        todo = [(s, b) for s, b in dict.fromkeys(runs) if not res.done(s.key(b))]
        print(f"== {name}: {len(runs)} runs, {len(todo)} to do", flush=True)
        for spec, b in todo:
            if args.dry_run:
                print(f"  would run {spec.key(b)}")
                continue
            run_one(res, spec, b, args.work, args.eval_tokens or None)
        if todo and not args.dry_run:
            run_probe(res, 5.0)  # the machine's speed between stages: drift or a busy neighbour shows here
            with contextlib.redirect_stdout(sys.stderr):
                report(res, args.table, args.recipe)
        if args.dry_run and todo:
            break  # later stages depend on these results
    if not args.dry_run and res.runs():
        report(res, args.table, args.recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
