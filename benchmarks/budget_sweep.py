"""The budget sweep: which recipe trains the best story model in 2, 5, 10 and 30 minutes on this machine.

    python benchmarks/budget_sweep.py --work /scratch/sweep          # run (or resume) the whole sweep
    python benchmarks/budget_sweep.py --report                       # redraw plot + tables from the results

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
spread), with the FLOPs its run trained, becomes src/tinystories/resources/budget_table.json:
the table `tinystories train --max-time T` without a preset picks from. The report also writes
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
LR_REFINE = 3                         # shapes re-run at half and twice their rate at the first budget
SEEDS = (1, 2)                        # extra seeds of the first budget's leader
MODERN = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}


def lr_prior(hidden: int) -> float:
    """The first rung's learning rate: 4e-3 at width 128, falling as 1/sqrt(width)."""
    return round(4e-3 * math.sqrt(128 / hidden), 5)


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

    @property
    def heads(self) -> int:
        return self.hidden // self.head_size

    def model(self) -> dict:
        m = {"hidden": self.hidden, "layers": self.layers, "heads": self.heads, "context": self.context,
             "dropout": self.dropout}
        if self.block == "modern":
            m.update(MODERN)
        return m

    def model_config(self, vocab: int | None = None) -> ModelConfig:
        return ModelConfig(vocab_size=vocab or self.vocab, **self.model())

    def shape(self) -> tuple[int, int, int]:
        return (self.hidden, self.layers, self.head_size)

    def label(self) -> str:
        return f"{self.hidden}x{self.layers}/hs{self.head_size}"

    def key(self, budget_s: float) -> str:
        return (f"t{int(budget_s)}-v{self.vocab}-h{self.hidden}-l{self.layers}-hs{self.head_size}-lr{self.lr:g}"
                f"-b{self.batch_size}-c{self.context}-d{self.dropout:g}-{self.block}-s{self.seed}")

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


# ===================================================================== the plan

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
            size = lambda s: s.hidden ** 2 * s.layers  # noqa: E731 (non-embedding weights, up to a constant)
            bigger = [s for s in ranked[1:] if size(s) > size(ranked[0])]
            if bigger:
                big = bigger[0]
                if big.lr == lr_prior(big.hidden):
                    # its rate was never refined: the prior, corrected as the leader's refinement corrected it
                    big = big.with_(lr=round(lr_prior(big.hidden) * ranked[0].lr / lr_prior(ranked[0].hidden), 6))
                if big not in chosen:
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


def run_probe(res: Results, seconds: float = 10.0) -> None:
    from tinystories.train.budget import probe

    p = probe(seconds)
    res.add({"kind": "probe", **p.to_dict(), "machine": machine(), "loadavg": os.getloadavg()[0],
             "commit": git_commit(), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"probe: reference {REFERENCE['hidden']}x{REFERENCE['layers']} at {p.tokens_per_s:,.0f} tokens/s = "
          f"{p.flops_per_s / 1e9:.1f} GFLOP/s", flush=True)


def run_one(res: Results, spec: Spec, budget_s: float, work: Path, eval_tokens: int | None = None) -> None:
    import torch

    from tinystories.train.budget import measure_speed, probe
    from tinystories.train.config import TrainConfig
    from tinystories.train.loop import TrainingDiverged, train

    key = spec.key(budget_s)
    data = data_dir(work, spec.vocab)
    mcfg = spec.model_config()
    # the machine's speed right now (a shared machine drifts): this run's budget in compute
    ref = probe(3.0)
    tps, _ = measure_speed(mcfg, spec.batch_size, spec.context, 3.0)
    steps = tps * budget_s / (spec.batch_size * spec.context)
    cfg = TrainConfig(data=str(data), out=str(work / "runs" / key), preset="1M", model=spec.model(),
                      batch_size=spec.batch_size, context=spec.context, lr=spec.lr, seed=spec.seed,
                      warmup_steps=max(1, round(spec.warmup_frac * steps)), weight_decay=spec.weight_decay,
                      max_time=budget_s, eval_every=0, checkpoint_every=0, keep_checkpoints=1,
                      final_eval_tokens=eval_tokens, samples=0)
    load0, t0 = os.getloadavg()[0], time.time()
    rec = {"kind": "run", "key": key, "budget_s": budget_s, **dataclasses.asdict(spec), "heads": spec.heads,
           "params": sum(p for p in _params(mcfg).values()), "flops_per_token": train_flops_per_token(mcfg),
           "measured_tokens_per_s": round(tps, 1), "warmup_steps": cfg.warmup_steps,
           "probe_flops_per_s": ref.flops_per_s, "compute": budget_s * ref.flops_per_s}
    try:
        s = train(cfg, force=True)
    except TrainingDiverged as e:
        rec.update(bpb=None, diverged=str(e))
    else:
        rec.update(bpb=s.get("val_bpb"), val_loss=s.get("val_loss"), val_tokens=s.get("val_tokens"),
                   steps=s["steps"], tokens=s["tokens"], tokens_per_s=s["tokens_per_s"], train_s=s["time_s"],
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


def plot(res: Results, path: Path) -> None:
    """Figure 6 of the paper, for this machine: every run's bits per byte against the FLOPs it trained
    with, the best at each budget joined and labelled with its shape; beside it, best against minutes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tinystories.runtime.files import atomic_write_bytes

    fig = Figure(figsize=(13, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
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
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (6 x weights + attention, per token, x tokens)")
    ax.set_ylabel(f"bits per byte on {VALID_FILE}")
    ax.set_title("every run, and the best shape at each budget", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)

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
    ax2.minorticks_off()
    ax2.set_xlabel("training time on this machine")
    ax2.set_ylabel("bits per byte")
    probes = res.probes()
    ax2.set_title(probes[0]["machine"] if probes else "", fontsize=8)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle("What to train in the time you have (TinyStories, BPE 8192, the three shared training files)",
                 fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def report(res: Results, table_path: Path) -> None:
    """The table the picker reads, and beside the results file: budget_table.md and budget_sweep.png."""
    if not res.runs():
        print("no finished runs yet")
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
    ap.add_argument("--results", type=Path, default=RESULTS / "budget_sweep.jsonl", help="the JSONL of finished runs")
    ap.add_argument("--table", type=Path, default=REPO / "src" / "tinystories" / "resources" / TABLE_FILE,
                    help="where to write the budget table")
    ap.add_argument("--budgets", default="2m,5m,10m,30m", help="comma-separated budgets, smallest first")
    ap.add_argument("--keep", default="5,3,2", help="shapes carried to each larger budget")
    ap.add_argument("--report", action="store_true", help="only redraw the plot and tables from the results")
    ap.add_argument("--dry-run", action="store_true", help="print the stages and their runs without training")
    ap.add_argument("--shapes", type=int, default=None, metavar="N", help="only the first N shapes (pilots)")
    ap.add_argument("--grid", default=None, metavar="SHAPES",
                    help="the first rung's shapes instead of the full grid, e.g. 128x8/32,256x4/64 (hidden x layers / head size)")
    ap.add_argument("--lean", action="store_true",
                    help="fewer runs around the halving (see stages()): the sweep in about an hour on 2 cores")
    ap.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS, metavar="N",
                    help=f"score the first N validation tokens (default {EVAL_TOKENS:,}; 0 = all)")
    args = ap.parse_args(argv)
    budgets = [parse_duration(b.strip(), "--budgets") for b in args.budgets.split(",")]
    keep = [int(k) for k in args.keep.split(",")]
    res = Results(args.results)
    if args.report:
        report(res, args.table)
        return 0
    os.environ.setdefault("TINYSTORIES_QUIET", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    if not res.probes() and not args.dry_run:
        run_probe(res)
    shapes = SHAPES[:args.shapes]
    if args.grid:
        try:
            shapes = [tuple(int(v) for v in g.replace("/", "x").split("x")) for g in args.grid.split(",")]
            assert all(len(t) == 3 and t[0] % t[2] == 0 for t in shapes)
        except (ValueError, AssertionError):
            ap.error(f"--grid {args.grid!r}: expected HIDDENxLAYERS/HEADSIZE,... with the head size dividing hidden")
    for name, runs in stages(res, budgets, keep, shapes, lean=args.lean):
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
                report(res, args.table)
        if args.dry_run and todo:
            break  # later stages depend on these results
    if not args.dry_run and res.runs():
        report(res, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
