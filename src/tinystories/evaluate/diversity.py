"""Diversity and memorization (paper section 4.4.1): is the model writing new stories or copying?

Take `stories` (100) training stories at random, keep the first ~40% of each as a prompt, and let the
model complete it. Then, with Rouge on words (see rouge.py):
  s_i  Rouge-2 precision of completion i against the original ending  (copying the story it came from?)
  r_i  max over j != i of Rouge-2 F between completions i and j          (are completions alike?)
       -- the same for the original endings, as the dataset's own baseline
  g    the share of the completions' distinct k-grams (k = 2..6) found anywhere in the training corpus
  h_i  Rouge-2 precision of completion i against its closest training story (copying any story?)
The last two stream the whole corpus once through `ngram_index.CorpusScan`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..runtime.console import progress
from .common import check_model_dir, fmt, model_fingerprint, report_dir, write_report
from .ngram_index import CorpusScan
from .rouge import rouge_f, rouge_precision, tokenize


@dataclass
class DiversityConfig:
    """Is the model copying its training data? Rouge and k-gram overlap of its story endings."""
    model_dir: str
    """run or model directory"""
    train: list[str] = field(default_factory=list)
    """the training stories: any sources `prepare` accepts"""
    stories: int = 100
    """training stories to cut and complete"""
    cut: float = 0.4
    """share of each story's words kept as the prompt"""
    max_new_tokens: int = 300
    """longest completion, in tokens"""
    temperature: float = 1.0
    """sampling temperature"""
    seed: int = 0
    """seed of the completions"""
    out: str | None = None
    """report directory (default MODEL_DIR/eval)"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps"""


def cut_story(story: str, fraction: float) -> tuple[str, str]:
    """(prompt, original ending): the prompt ends after the word where `fraction` of the words are reached."""
    words = list(re.finditer(r"\S+", story))
    if len(words) < 2:
        return story, ""
    keep = min(max(1, round(fraction * len(words))), len(words) - 1)
    end = words[keep - 1].end()
    return story[:end], story[end:]


def sample_stories(sources: list[str], n: int, seed: int, keep=None) -> tuple[list[str], int]:
    """n stories drawn uniformly (reservoir sampling, one pass) from those with at least 10 words that
    `keep` accepts (if given), and how many stories the sources hold in all."""
    from ..data.sources import iter_stories

    rng = random.Random(seed)
    picked: list[str] = []
    seen = total = 0
    with progress(desc="sampling stories", unit="story", unit_scale=True) as bar:
        for source in sources:
            for story in iter_stories(source):
                total += 1
                bar.update()
                if len(story.split()) < 10 or (keep is not None and not keep(story)):
                    continue                  # too short to cut in two, or too long for the model
                seen += 1
                if len(picked) < n:
                    picked.append(story)
                else:
                    j = rng.randrange(seen)
                    if j < n:
                        picked[j] = story
    if not picked:
        raise UserError(f"--train {' '.join(sources)}: no story of 10 words or more that fits the model's context")
    return picked, total


def diversity_metrics(completions: list[str], endings: list[str]) -> dict:
    """s_i, r_i (and r_i of the original endings): everything that needs no corpus."""
    toks = [tokenize(t) for t in completions]
    orig = [tokenize(t) for t in endings]

    def max_f(docs: list[list[str]]) -> list[float]:
        return [max((rouge_f(a, b) for j, b in enumerate(docs) if j != i), default=0.0) for i, a in enumerate(docs)]

    return {"s": [rouge_precision(t, o) for t, o in zip(toks, orig)], "r": max_f(toks), "r_original": max_f(orig)}


def diversity(cfg: DiversityConfig) -> dict:
    """Run the section 4.4.1 experiment; write diversity.json/.md/.png into the report dir."""
    from ..data.sources import iter_stories

    model_dir = check_model_dir(cfg.model_dir)
    if not cfg.train:
        raise UserError("--train: give the training stories (a file, data source or hub dataset name)")
    if not 0 < cfg.cut < 1:
        raise UserError(f"--cut must be between 0 and 1, got {cfg.cut}")
    weights = model_fingerprint(model_dir)
    from ..model.modeldir import load_model
    from ..runtime.device import resolve_device

    model, tok = load_model(model_dir, device=resolve_device(cfg.device))
    room = model.config.context - 8       # a prompt must leave the model room to write

    def fits(story: str) -> bool:         # a token is at least ~2 characters: only long stories are encoded
        prompt = cut_story(story, cfg.cut)[0]
        return len(prompt) < 2 * room or len(tok.encode(prompt)) + 1 < room

    picked, n_train = sample_stories(cfg.train, cfg.stories, cfg.seed, keep=fits)
    prompts, endings = zip(*(cut_story(s, cfg.cut) for s in picked))
    completions = _complete(cfg, model, tok, list(prompts))

    metrics = diversity_metrics(completions, list(endings))
    scan = CorpusScan(completions)
    with progress(desc="scanning corpus", unit="story", unit_scale=True, total=n_train) as bar:
        scan.scan((s for src in cfg.train for s in iter_stories(src)), progress=bar.update)
    kgrams = scan.kgram_report()
    h = [c.score for c in scan.closest]

    def stats(xs):
        return {"mean": sum(xs) / len(xs), "max": max(xs), "min": min(xs)} if xs else {}

    report = {
        "kind": "diversity",
        "model": {"dir": str(model_dir), "weights_sha256": weights},
        "settings": {"train": cfg.train, "stories": len(picked), "cut": cfg.cut, "max_new_tokens": cfg.max_new_tokens,
                     "temperature": cfg.temperature, "seed": cfg.seed, "training_stories": n_train},
        "summary": {"rouge2_p_vs_original": stats(metrics["s"]), "max_rouge2_f_between_generated": stats(metrics["r"]),
                    "max_rouge2_f_between_original": stats(metrics["r_original"]),
                    "rouge2_p_vs_closest_training_story": stats(h),
                    "kgram_share_found": {k: v["share_found"] for k, v in kgrams.items()}},
        "kgrams": kgrams,
        "stories": [{"prompt": p, "original_ending": e, "completion": c, "rouge2_p_vs_original": s, "max_rouge2_f": r,
                     "max_rouge2_f_original": ro, "closest": {"rouge2_p": cl.score, "index": cl.index, "text": cl.text}}
                    for p, e, c, s, r, ro, cl in zip(prompts, endings, completions, metrics["s"], metrics["r"],
                                                     metrics["r_original"], scan.closest)],
    }
    out = report_dir(model_dir, cfg.out)
    write_report(out, "diversity", report, markdown(report))
    plot(report, out / "diversity.png")
    return report


def _complete(cfg: DiversityConfig, model, tok, prompts: list[str]) -> list[str]:
    """One completion per prompt, each prompt with its own seed: rows of one batch would share a random
    stream, which could make completions of different prompts alike and bias the very thing measured."""
    from ..generate.sampling import generate

    out: list[str] = []
    for i, prompt in enumerate(progress(prompts, desc="generating", unit="story")):
        [[c]] = generate(model, tok, [prompt], max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                         seed=cfg.seed * 1_000_003 + i)
        out.append(c.text.strip())
    return out


def markdown(report: dict) -> str:
    s = report["summary"]
    rows = [("Rouge-2 precision vs the original ending (s_i)", s["rouge2_p_vs_original"]),
            ("max Rouge-2 F between generated stories (r_i)", s["max_rouge2_f_between_generated"]),
            ("max Rouge-2 F between original endings", s["max_rouge2_f_between_original"]),
            ("Rouge-2 precision vs closest training story (h_i)", s["rouge2_p_vs_closest_training_story"])]
    lines = [f"# Diversity: {report['model']['dir']}", "",
             f"{report['settings']['stories']} training stories cut at {report['settings']['cut']:.0%} and completed; "
             f"corpus: {report['settings']['training_stories']} stories.", "",
             "| measure | mean | min | max |", "|---|---|---|---|"]
    lines += [f"| {name} | {fmt(v.get('mean'), 3)} | {fmt(v.get('min'), 3)} | {fmt(v.get('max'), 3)} |"
              for name, v in rows]
    lines += ["", "| k | generated k-grams | found in training corpus | share |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['distinct']} | {v['found']} | {fmt(v['share_found'], 3)} |"
              for k, v in report["kgrams"].items()]
    worst = max(report["stories"], key=lambda x: x["closest"]["rouge2_p"])
    lines += ["", "## The completion closest to a training story", "",
              f"Rouge-2 precision {worst['closest']['rouge2_p']:.3f}.", "", "**Prompt:** " + worst["prompt"], "",
              "**Completion:** " + worst["completion"], "", "**Closest training story:** " + worst["closest"]["text"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Histograms of s_i, r_i (with the original endings'), h_i, and the k-gram share found per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = report["stories"]
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
    bins = [i / 20 for i in range(21)]
    ax[0].hist([x["rouge2_p_vs_original"] for x in st], bins=bins)
    ax[0].set_title("Rouge-2 precision vs original ending")
    ax[1].hist([x["max_rouge2_f"] for x in st], bins=bins, alpha=0.7, label="generated")
    ax[1].hist([x["max_rouge2_f_original"] for x in st], bins=bins, alpha=0.7, label="original endings")
    ax[1].legend()
    ax[1].set_title("max Rouge-2 F to another story")
    ax[2].hist([x["closest"]["rouge2_p"] for x in st], bins=bins)
    ax[2].set_title("Rouge-2 precision vs closest training story")
    ks = list(report["kgrams"])
    ax[3].bar(ks, [report["kgrams"][k]["share_found"] or 0 for k in ks])
    ax[3].set_ylim(0, 1)
    ax[3].set_xlabel("k")
    ax[3].set_title("share of generated k-grams in training data")
    for a in ax[:3]:
        a.set_xlim(0, 1)
        a.set_ylabel("stories")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

