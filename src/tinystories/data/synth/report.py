"""The end of a `synth` run: kept and rejected counts by reason, what happened on the wire, the tokens spent, and
the corpus's diversity (paper section 4.4's tools): how often each vocabulary word was asked for and used,
Rouge-2 self-similarity between stories, and the share that open with "Once upon a time"."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable

from ..instruct.words import word_forms, word_tokens
from .gates import REASONS
from .vocab import Vocabulary

WIRE = ("requests", "http_429", "http_5xx", "timeouts", "connect_errors", "malformed")


def _owners(vocab: Vocabulary) -> dict[str, set[str]]:
    """spelling -> the vocabulary words it is a form of (word_forms): one lookup a story token."""
    owner: dict[str, set[str]] = {}
    for w, _ in vocab.all_words():
        for form in word_forms(w):
            owner.setdefault(form, set()).add(w)
    return owner


class CorpusStats:
    """The report's numbers, gathered in one pass over the records (a corpus need not fit in memory): words
    asked for and used, "Once upon a time" openings, and a uniform sample of stories (reservoir) for Rouge-2."""

    def __init__(self, vocab: Vocabulary, sample: int = 200, seed: int = 0):
        self.vocab, self.k, self.rng = vocab, sample, random.Random(seed)
        self.owner = _owners(vocab)
        self.asked: Counter = Counter()
        self.used: Counter = Counter()
        self.reasons: Counter = Counter()
        self.kept = self.once = 0
        self.sample: list[str] = []

    def add(self, rec: dict) -> None:
        """A kept record, or a rejected one (it has a "reason")."""
        self.asked.update(rec.get("words", {}).values())
        if "reason" in rec:
            self.reasons[rec["reason"]] += 1
            return
        story = rec["story"]
        self.kept += 1
        self.once += story.lstrip(" \"'").lower().startswith("once upon a time")
        hit: set[str] = set()
        for t in {t.lower() for t in word_tokens(story)}:
            hit |= self.owner.get(t, set())
        self.used.update(hit)
        if len(self.sample) < self.k:
            self.sample.append(story)
        elif (j := self.rng.randrange(self.kept)) < self.k:
            self.sample[j] = story

    def diversity(self, similarity: Callable[[list[str]], list[float]] | None) -> dict:
        n_vocab, asked = len(self.vocab), self.asked
        out = {
            "vocabulary_words": n_vocab,
            "asked_distinct": len(asked), "asked_share": len(asked) / n_vocab,
            "asks_per_asked_word": {"mean": sum(asked.values()) / max(1, len(asked)),
                                    "max": max(asked.values(), default=0)},
            "used_distinct": len(self.used), "used_share": len(self.used) / n_vocab,
            "most_used": self.used.most_common(10),
            "once_upon_a_time_share": self.once / self.kept if self.kept else None,
            "rouge2_self_similarity": None,
        }
        if similarity is not None and len(self.sample) >= 2:
            r = similarity(self.sample)
            out["rouge2_self_similarity"] = {"stories": len(r), "mean": sum(r) / len(r), "max": max(r),
                                             "share_above_0.5": sum(x > 0.5 for x in r) / len(r)}
        return out


def build_report(records: Iterable[dict], rejects: Iterable[dict], vocab: Vocabulary, client, budget, cfg,
                 similarity: Callable[[list[str]], list[float]] | None) -> dict:
    """The run's report from its kept and rejected records (streamed), the client's wire counts and the budget."""
    stats = CorpusStats(vocab, cfg.report_sample, cfg.seed)
    for rec in itertools.chain(records, rejects):
        stats.add(rec)
    words = {w: {"pos": pos, "asked": stats.asked[w], "used": stats.used[w]} for w, pos in vocab.all_words()}
    tokens = {"prompt": budget.prompt, "completion": budget.completion}
    if cfg.price_in is not None and cfg.price_out is not None:
        tokens["cost"] = budget.cost(budget.prompt, budget.completion)
    reasons = stats.reasons
    return {
        "kind": "synth", "out": str(cfg.out), "model": cfg.model, "seed": cfg.seed, "n": cfg.n,
        "kept": stats.kept,
        "rejected": {r: reasons[r] for r in (*REASONS, *sorted(set(reasons) - set(REASONS))) if reasons[r]},
        "this_run": {k: client.stats[k] for k in WIRE},
        "tokens": tokens,
        "diversity": stats.diversity(similarity),
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
