"""The end of a `synth` run: kept and rejected counts by reason, what happened on the wire, the tokens spent, and
the corpus's diversity (paper section 4.4's tools): how often each vocabulary word was asked for and used,
Rouge-2 self-similarity between stories, and the share that open with "Once upon a time"."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from ..instruct.words import word_forms, word_tokens
from .gates import REASONS
from .vocab import Vocabulary

WIRE = ("requests", "http_429", "http_5xx", "timeouts", "connect_errors", "malformed")


def word_usage(stories: list[str], vocab: Vocabulary) -> Counter:
    """vocabulary word -> the number of stories using it in any inflection (word_forms, one lookup a token)."""
    owner: dict[str, set[str]] = {}
    for w, _ in vocab.all_words():
        for form in word_forms(w):
            owner.setdefault(form, set()).add(w)
    used: Counter = Counter()
    for story in stories:
        hit: set[str] = set()
        for t in {t.lower() for t in word_tokens(story)}:
            hit |= owner.get(t, set())
        used.update(hit)
    return used


def diversity(kept: list[dict], rejected: list[dict], vocab: Vocabulary, used: Counter, seed: int, sample: int,
              similarity: Callable[[list[str]], list[float]] | None) -> dict:
    """The corpus's diversity; `used` is `word_usage` of the kept stories."""
    stories = [r["story"] for r in kept]
    asked = Counter(w for r in kept + rejected for w in r["words"].values())
    n_vocab = len(vocab)
    out = {
        "vocabulary_words": n_vocab,
        "asked_distinct": len(asked), "asked_share": len(asked) / n_vocab,
        "asks_per_asked_word": {"mean": sum(asked.values()) / max(1, len(asked)), "max": max(asked.values(), default=0)},
        "used_distinct": len(used), "used_share": len(used) / n_vocab,
        "most_used": used.most_common(10),
        "once_upon_a_time_share": (sum(s.lstrip(" \"'").lower().startswith("once upon a time") for s in stories)
                                   / len(stories)) if stories else None,
        "rouge2_self_similarity": None,
    }
    if similarity is not None and len(stories) >= 2:
        picked = random.Random(seed).sample(stories, min(sample, len(stories)))
        r = similarity(picked)
        out["rouge2_self_similarity"] = {"stories": len(picked), "mean": sum(r) / len(r), "max": max(r),
                                         "share_above_0.5": sum(x > 0.5 for x in r) / len(r)}
    return out


def build_report(kept: list[dict], rejected: list[dict], vocab: Vocabulary, client, budget, cfg,
                 similarity: Callable[[list[str]], list[float]] | None) -> dict:
    reasons = Counter(r["reason"] for r in rejected)
    words = {w: {"pos": pos, "asked": 0, "used": 0} for w, pos in vocab.all_words()}
    for r in kept + rejected:
        for w in r["words"].values():
            if w in words:
                words[w]["asked"] += 1
    used = word_usage([r["story"] for r in kept], vocab)
    for w, c in used.items():
        words[w]["used"] = c
    tokens = {"prompt": budget.prompt, "completion": budget.completion}
    if cfg.price_in is not None and cfg.price_out is not None:
        tokens["cost"] = budget.cost(budget.prompt, budget.completion)
    return {
        "kind": "synth", "out": str(cfg.out), "model": cfg.model, "seed": cfg.seed, "n": cfg.n,
        "kept": len(kept),
        "rejected": {r: reasons[r] for r in (*REASONS, *sorted(set(reasons) - set(REASONS)))
                     if reasons[r]},
        "this_run": {k: client.stats[k] for k in WIRE},
        "tokens": tokens,
        "diversity": diversity(kept, rejected, vocab, used, cfg.seed, cfg.report_sample, similarity),
        "words": words,
    }


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(report: dict) -> str:
    d = report["diversity"]
    lines = [f"# synth: {report['out']}", "",
             f"model {report['model']}, seed {report['seed']}, --n {report['n']}", "",
             "| outcome | stories |", "|---|---|", f"| kept | {report['kept']} |"]
    lines += [f"| rejected: {reason} | {c} |" for reason, c in report["rejected"].items()]
    lines += ["", "| this run, on the wire | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["this_run"].items()]
    t = report["tokens"]
    cost = f"; cost {t['cost']:.4f}" if "cost" in t else ""
    once = d["once_upon_a_time_share"]
    asks = d["asks_per_asked_word"]
    lines += ["", f"Tokens (all runs): {t['prompt']:,} prompt + {t['completion']:,} completion{cost}.", "",
              "| diversity | value |", "|---|---|",
              f"| vocabulary words asked for (of {d['vocabulary_words']}) | {d['asked_distinct']} ({d['asked_share']:.1%}) |",
              f"| asks per asked word (mean / max) | {asks['mean']:.2f} / {asks['max']} |",
              f"| vocabulary words used by some kept story | {d['used_distinct']} ({d['used_share']:.1%}) |",
              f"| stories opening with \"Once upon a time\" | {'-' if once is None else format(once, '.1%')} |"]
    r = d["rouge2_self_similarity"]
    if r:
        lines += [f"| max Rouge-2 F to another story, mean / max ({r['stories']} stories) | {_f(r['mean'])} / {_f(r['max'])} |",
                  f"| stories with a max Rouge-2 F above 0.5 | {r['share_above_0.5']:.1%} |"]
    if d["most_used"]:
        lines += ["", "Most used vocabulary words (stories): "
                  + ", ".join(f"{w} ({c})" for w, c in d["most_used"]) + "."]
    return "\n".join(lines) + "\n"
