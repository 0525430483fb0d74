"""Capability probes (paper section 4.2): factual knowledge, reasoning and context tracking.

Short prompts that we wrote ourselves (resources/probes.yaml), each stopping where one answer is
expected. The model completes each greedily; the first sentence of the completion (at most 12 words)
is scored pass / partial / fail against the prompt's accepted and partial answers, as whole words.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ..errors import UserError
from .common import check_model_dir, model_fingerprint, report_dir, write_report
from .rouge import tokenize

WINDOW_WORDS = 12
CATEGORIES = ("factual", "reasoning", "context")


@dataclass
class Probe:
    category: str
    prompt: str
    accept: list[str]
    partial: list[str]


def load_probes(path: str | Path | None = None) -> list[Probe]:
    """The packaged probes, or a YAML file of the same shape."""
    try:
        if path is None:
            text = resources.files("tinystories").joinpath("resources", "probes.yaml").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        raw = yaml.safe_load(text)
    except OSError as e:
        raise UserError(f"--probes {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"--probes {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    probes = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(item, dict) or not item.get("prompt") or not item.get("accept"):
            raise UserError(f"--probes {path}: item {i + 1} needs 'prompt' and 'accept'")
        for name in ("accept", "partial"):  # a bare string would be iterated letter by letter ("water": w, a, ...)
            if item.get(name) is not None and not isinstance(item[name], list):
                raise UserError(f"--probes {path}: item {i + 1}'s '{name}' must be a list of answers, "
                                f"e.g. {name}: [{item[name]}]")
        probes.append(Probe(str(item.get("category", "other")), str(item["prompt"]).rstrip(),
                            [str(a) for a in item["accept"]], [str(a) for a in item.get("partial") or []]))
    if not probes:
        raise UserError(f"--probes {path}: no probes in it")
    return probes


def answer_window(completion: str) -> list[str]:
    """The words of the completion's first sentence, at most WINDOW_WORDS of them."""
    text = completion.lstrip()
    m = re.search(r"[.!?\n]", text)
    return tokenize(text[:m.start()] if m else text)[:WINDOW_WORDS]


def _contains(words: list[str], phrase: str) -> bool:
    p = tokenize(phrase)
    return bool(p) and any(words[i:i + len(p)] == p for i in range(len(words) - len(p) + 1))


def score(probe: Probe, completion: str) -> str:
    """'pass' | 'partial' | 'fail'."""
    words = answer_window(completion)
    if any(_contains(words, a) for a in probe.accept):
        return "pass"
    if any(_contains(words, a) for a in probe.partial):
        return "partial"
    return "fail"


def summarize(results: list[dict]) -> dict:
    """Per category: counts, and score = (pass + partial / 2) / n."""
    by: dict[str, dict] = defaultdict(lambda: {"pass": 0, "partial": 0, "fail": 0, "n": 0})
    for r in results:
        for cat in (r["category"], "all"):
            by[cat][r["result"]] += 1
            by[cat]["n"] += 1
    for v in by.values():
        v["score"] = (v["pass"] + 0.5 * v["partial"]) / v["n"]
    order = [c for c in CATEGORIES if c in by] + sorted(c for c in by if c not in CATEGORIES and c != "all") + ["all"]
    return {c: by[c] for c in order}


def run_probes(model_dir: str | Path, probes_file: str | None = None, *, max_new_tokens: int = 24,
               out: str | None = None, device: str = "auto") -> dict:
    """Complete every probe greedily and score it; write probes.json/.md into the report dir."""
    from ..generate.sampling import generate
    from ..model.modeldir import load_model
    from ..runtime.device import resolve_device

    model_dir = check_model_dir(model_dir)
    probes = load_probes(probes_file)
    model, tok = load_model(model_dir, device=resolve_device(device))
    # temperature 0 is greedy; batched, since every prompt wants the same handful of tokens
    completions = generate(model, tok, [p.prompt for p in probes], max_new_tokens=max_new_tokens, temperature=0.0)
    results = []
    for p, [c] in zip(probes, completions):
        results.append({"category": p.category, "prompt": p.prompt, "completion": c.text,
                        "answer_window": " ".join(answer_window(c.text)), "result": score(p, c.text),
                        "accept": p.accept, "partial": p.partial})
    report = {"kind": "probes", "model": {"dir": str(model_dir), "weights_sha256": model_fingerprint(model_dir)},
              "settings": {"probes": probes_file or "packaged", "max_new_tokens": max_new_tokens, "decoding": "greedy"},
              "summary": summarize(results), "results": results}
    write_report(report_dir(model_dir, out), "probes", report, markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"# Probes: {report['model']['dir']}", "", "| category | pass | partial | fail | score |",
             "|---|---|---|---|---|"]
    lines += [f"| {c} | {v['pass']} | {v['partial']} | {v['fail']} | {v['score']:.2f} |"
              for c, v in report["summary"].items()]
    lines += ["", "| category | result | prompt | completion |", "|---|---|---|---|"]
    for r in report["results"]:
        comp = " ".join(r["completion"].split())[:100].replace("|", "\\|")
        lines.append(f"| {r['category']} | {r['result']} | ...{r['prompt'][-60:].replace('|', '/')} | {comp} |")
    return "\n".join(lines) + "\n"
