"""`evaluate compare`: saved evaluation reports of several runs side by side, in one table and one plot.

Each argument is a run/model directory (its eval/*.json reports are read), a report directory, or one
report file. Whatever kinds of report the runs have (loss, gpt-eval, probes, diversity, instruct) become rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .common import REPORT_DIR, fmt

KINDS = ("loss", "gpt-eval", "probes", "diversity", "instruct")


def load_reports(path: str | Path) -> dict[str, dict]:
    """{kind: report} from a run dir (RUN/eval/*.json), a report dir, or a single report file."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif (p / REPORT_DIR).is_dir():
        files = sorted((p / REPORT_DIR).glob("*.json"))
    elif p.is_dir():
        files = sorted(p.glob("*.json"))
    else:
        raise UserError(f"{path}: no such run directory or report file")
    reports = {}
    for f in files:
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and r.get("kind") in KINDS:
            reports[r["kind"]] = r
    if not reports:
        raise UserError(f"{path}: no evaluation reports found; run `tinystories evaluate loss|gpt-eval|probes|"
                        "diversity|instruct` on it first")
    return reports


def rows_for(kind: str, r: dict) -> list[tuple[str, float | None, tuple | None]]:
    """(metric name, value, 95% interval or None) for one report."""
    if kind == "loss":
        return [("loss: nats/token", r["nats_per_token"], None), ("loss: perplexity", r["perplexity"], None),
                ("loss: bits/byte", r["bits_per_byte"], None)]
    if kind == "gpt-eval":
        out = [(f"gpt-eval: {cat}", v["mean"], tuple(v["ci95"])) for cat, v in r["summary"].items()]
        return out + [("gpt-eval: unparseable", r["unparseable"], None)]
    if kind == "probes":
        return [(f"probes: {cat}", v["score"], None) for cat, v in r["summary"].items()]
    if kind == "diversity":
        s = r["summary"]
        return [("diversity: Rouge-2 p vs original", s["rouge2_p_vs_original"].get("mean"), None),
                ("diversity: max Rouge-2 F between generated", s["max_rouge2_f_between_generated"].get("mean"), None),
                ("diversity: Rouge-2 p vs closest training", s["rouge2_p_vs_closest_training_story"].get("mean"), None)] + \
               [(f"diversity: {k}-grams found in training", v, None) for k, v in s["kgram_share_found"].items()]
    if kind == "instruct":
        return [(f"instruct: {k.replace('_', ' ')}", v["mean"], tuple(v["ci95"]))
                for k, v in r["summary"].items() if isinstance(v, dict)]
    return []


def compare(paths: list[str], plot_path: str | Path | None = "compare.png") -> dict:
    """The comparison as {"runs", "rows": [{"metric", "values", "ci95"}], "markdown"}; draws the plot."""
    if len(paths) < 1:
        raise UserError("give at least one run directory or report file")
    names = _names(paths)
    per_run = [load_reports(p) for p in paths]
    metrics: dict[str, dict] = {}
    for name, reports in zip(names, per_run):
        for kind in KINDS:
            if kind in reports:
                for metric, value, ci in rows_for(kind, reports[kind]):
                    m = metrics.setdefault(metric, {"metric": metric, "values": {}, "ci95": {}})
                    m["values"][name] = value
                    m["ci95"][name] = ci
    rows = list(metrics.values())
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in rows:
        cells = []
        for n in names:
            v, ci = m["values"].get(n), m["ci95"].get(n)
            cell = fmt(v, 0) if isinstance(v, int) else fmt(v, 3)
            if ci and ci[0] is not None:
                cell += f" ({ci[0]:.2f}-{ci[1]:.2f})"
            cells.append(cell)
        lines.append(f"| {m['metric']} | " + " | ".join(cells) + " |")
    result = {"runs": dict(zip(names, map(str, paths))), "rows": rows, "markdown": "\n".join(lines) + "\n"}
    if plot_path:
        plot(result, Path(plot_path))
    return result


def _names(paths: list[str]) -> list[str]:
    """Short labels: the directory name, made unique with its parent where two share one."""
    names = []
    for p in paths:
        p = Path(p).resolve()
        base = p.parent if p.is_file() or p.name == REPORT_DIR else p
        if base.name == REPORT_DIR:
            base = base.parent
        names.append(base.name)
    for i, n in enumerate(names):
        if names.count(n) > 1:
            names[i] = f"{Path(paths[i]).resolve().parent.name}/{n}#{i + 1}"
    return names


def plot(result: dict, path: Path) -> None:
    """One figure: a panel per report kind, grouped bars per metric, one colour per run, 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for m in result["rows"]:
        kind, _, label = m["metric"].partition(": ")
        if label in ("perplexity", "unparseable"):   # other scales; they stay in the table
            continue
        groups.setdefault(kind, []).append({**m, "label": label})
    runs = list(result["runs"])
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(5.5 * max(len(groups), 1), 4), squeeze=False)
    width = 0.8 / max(len(runs), 1)
    for ax, (kind, ms) in zip(axes[0], groups.items()):
        for j, run in enumerate(runs):
            xs = [i + (j - (len(runs) - 1) / 2) * width for i in range(len(ms))]
            vals = [m["values"].get(run) or 0 for m in ms]
            err = None
            cis = [m["ci95"].get(run) for m in ms]
            if any(c and c[0] is not None for c in cis):
                err = [[max(v - (c[0] if c and c[0] is not None else v), 0) for v, c in zip(vals, cis)],
                       [max((c[1] if c and c[1] is not None else v) - v, 0) for v, c in zip(vals, cis)]]
            ax.bar(xs, vals, width, yerr=err, capsize=2, label=run)
        ax.set_xticks(range(len(ms)))
        ax.set_xticklabels([m["label"] for m in ms], rotation=30, ha="right", fontsize=8)
        ax.set_title(kind)
        if kind in ("probes", "diversity"):      # shares
            ax.set_ylim(0, 1)
        elif kind == "gpt-eval":                 # grades out of 10
            ax.set_ylim(0, 10)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
