"""MLP neurons: the tokens each neuron of a layer fires hardest on, over held-out stories (paper 5.2).

Memory is flat in the number of stories: every neuron keeps a running top-k (values and token
positions, merged story by story), and only the stories that still hold one of those tokens are
kept (bounded by neurons x k, not by the stories read). Each neuron's top-k tokens get a role
category (`roles.py`); purity is the share of the most common one. The control draws, for each
neuron, k tokens uniformly from all the tokens read (the top-k of randomly shuffled activations),
so its purity is what the categories' frequencies alone give.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from .capture import capture, mlp_activation
from .roles import CATEGORIES, category, purity
from .stories import TokenText, iter_story_ids

DIGITS = 4
SENTENCE_MAX = 40   # tokens shown on each side of a top token at most, when its sentence is long


def rnd(x: float) -> float:
    return round(float(x), DIGITS)


class StoryView:
    """One story's tokens as text: words, sentence starts and ends."""

    def __init__(self, ids: list[int], token_text):
        self.ids = ids
        self.texts = [token_text(i) for i in ids]
        self.ends = [i for i, t in enumerate(self.texts) if _ends_sentence(t, i)]

    def sentence(self, p: int) -> tuple[int, int]:
        """[start, end) of the sentence holding token p, cut to SENTENCE_MAX tokens each side; a line
        break shows with the sentence it ends."""
        if p > 1 and not self.texts[p].strip():
            return self.sentence(p - 1)[0], p + 1
        start = max([e + 1 for e in self.ends if e < p], default=1)
        end = min([e + 1 for e in self.ends if e >= p], default=len(self.ids))
        return max(start, p - SENTENCE_MAX), min(end, p + SENTENCE_MAX + 1)

    def word(self, p: int) -> tuple[int, int]:
        """[start, end) of the tokens of the word holding token p (a word may span tokens)."""
        a = p
        while a > 1 and _continues(self.texts[a - 1], self.texts[a]):
            a -= 1
        b = p + 1
        while b < len(self.texts) and _continues(self.texts[b - 1], self.texts[b]):
            b += 1
        return a, b

    def category(self, p: int, names: frozenset[str]) -> str:
        a, b = self.word(p)
        word = "".join(self.texts[a:b])
        start = a <= 1 or any(e == a - 1 for e in self.ends) or _after_open_quote(self.texts, a, self.ends)
        prev = None
        if a > 1:
            pa, pb = self.word(a - 1)
            pw = "".join(self.texts[pa:pb]).strip()
            pstart = pa <= 1 or any(e == pa - 1 for e in self.ends)
            pc = category(pw, pstart, None, names)
            prev = pc if pc in ("NAME", "ADJ") else pw.lower()
        return category(word, start, prev, names)


def _ends_sentence(text: str, i: int) -> bool:
    if i == 0:
        return True  # the <|endoftext|> before the story
    t = text.rstrip().rstrip("\"'\u201d\u2019")
    return "\n" in text or t.endswith((".", "!", "?"))


def _continues(prev: str, cur: str) -> bool:
    return bool(cur) and not cur[0].isspace() and (cur[0].isalpha() or cur[0] == "'") and prev[-1:].isalpha()


def _after_open_quote(texts: list[str], a: int, ends: list[int]) -> bool:
    # '"Look!' opens a sentence after the quote token.
    return a > 1 and texts[a - 1].strip() in ('"', '\u201c', ' "') and (a - 2) in ends


@dataclass
class TopK:
    """Per neuron, the k largest activations seen so far and their global token indices."""
    neurons: int
    k: int
    values: torch.Tensor = field(init=False)
    where: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.values = torch.full((self.neurons, self.k), float("-inf"))
        self.where = torch.full((self.neurons, self.k), -1, dtype=torch.long)

    def merge(self, acts: torch.Tensor, first: int) -> None:
        """acts [T, neurons] of tokens with global indices first..first+T-1."""
        T = acts.size(0)
        vals = torch.cat([self.values, acts.T.float()], 1)
        where = torch.cat([self.where, torch.arange(first, first + T).expand(self.neurons, T)], 1)
        self.values, idx = vals.topk(min(self.k, vals.size(1)), dim=1)
        self.where = where.gather(1, idx)
        if self.values.size(1) < self.k:  # fewer tokens than k so far
            pad = self.k - self.values.size(1)
            self.values = torch.cat([self.values, torch.full((self.neurons, pad), float("-inf"))], 1)
            self.where = torch.cat([self.where, torch.full((self.neurons, pad), -1, dtype=torch.long)], 1)


@torch.inference_mode()
def scan_neurons(model, tokenizer, stories: list[str], layer: int, k: int = 20, seed: int = 0,
                 progress=None) -> dict:
    """Stream `stories` through the model and keep each neuron's top-k tokens at `layer`."""
    cfg = model.config
    mlp = model.blocks[layer].mlp
    device = next(model.parameters()).device
    top = TopK(cfg.mlp_width, k)
    kept: dict[int, tuple[int, list[int]]] = {}     # story number -> (first global index, ids)
    starts: list[int] = []                          # first global index of each story (ints: tiny)
    categories = Counter()                          # over every token read: the control's population
    token_text = TokenText(tokenizer)
    names: set[str] = set()
    total = kept_max = 0
    with capture(model, layers=[layer], attention=False) as got:
        for n, ids in enumerate(iter_story_ids(tokenizer, stories, cfg.context)):
            model(torch.tensor([ids], device=device), last_only=True)
            acts = mlp_activation(mlp, got.mlp_pre[layer])[0, 1:].cpu()   # not the <|endoftext|> in front
            first = total + 1
            starts.append(total)
            top.merge(acts, first)
            view = StoryView(ids, token_text)
            names.update(_mid_sentence_names(view))
            kept[n] = (total, ids)
            live = set(_story_of(starts, top.where[top.where >= 0].unique().tolist()))
            for s in [s for s in kept if s not in live]:
                del kept[s]
            kept_max = max(kept_max, len(kept))
            categories.update(view.category(p, frozenset()) for p in range(1, len(ids)))
            total += len(ids)
            if progress:
                progress(1)
    names_f = frozenset(names)
    neurons = _neuron_rows(top, kept, starts, token_text, names_f)
    return {"layer": layer, "stories": len(starts), "tokens": total - len(starts), "k": k,
            "stories_kept_max": kept_max, "neurons": neurons, **_summary(neurons, categories, k, seed)}


def _mid_sentence_names(view: StoryView) -> set[str]:
    out = set()
    for p in range(2, len(view.ids)):
        t = view.texts[p]
        if t.startswith(" ") and t[1:2].isupper() and t[1:].isalpha() and (p - 1) not in view.ends:
            out.add(t[1:].lower())
    return out - {"i"}


def _story_of(starts: list[int], where: list[int]) -> list[int]:
    return (np.searchsorted(np.asarray(starts), np.asarray(where), side="right") - 1).tolist()


def _neuron_rows(top: TopK, kept: dict, starts: list[int], token_text, names: frozenset[str]) -> list[dict]:
    views: dict[int, StoryView] = {}
    rows = []
    for j in range(top.neurons):
        entries, counts = [], Counter()
        for v, g in zip(top.values[j].tolist(), top.where[j].tolist()):
            if g < 0:
                continue
            s = _story_of(starts, [g])[0]
            base, ids = kept[s]
            view = views.get(s) or views.setdefault(s, StoryView(ids, token_text))
            p = g - base
            cat = view.category(p, names)
            counts[cat] += 1
            a, b = view.sentence(p)
            entries.append({"activation": rnd(v), "token": view.texts[p], "category": cat, "story": s,
                            "position": p, "sentence": view.texts[a:b], "at": p - a})
        role, share = purity(counts)
        rows.append({"neuron": j, "max": entries[0]["activation"] if entries else None, "role": role,
                     "purity": rnd(share), "categories": {c: counts[c] for c in CATEGORIES if counts[c]},
                     "top": entries})
    return rows


def _summary(neurons: list[dict], population: Counter, k: int, seed: int) -> dict:
    """Purity of the neurons against the shuffled control, and the largest activation overall."""
    rng = np.random.default_rng(seed)
    cats = [c for c in CATEGORIES if population[c]]
    pool = np.array([population[c] for c in cats], dtype=np.int64)
    control = []
    for _ in neurons:
        draw = rng.multivariate_hypergeometric(pool, min(k, int(pool.sum())))
        control.append(purity({c: int(x) for c, x in zip(cats, draw)})[1])
    control = np.array(control)
    real = np.array([n["purity"] for n in neurons])
    q95 = float(np.quantile(control, 0.95))
    best = max(neurons, key=lambda n: n["max"] if n["max"] is not None else float("-inf"))
    roles = Counter(n["role"] for n in neurons)
    return {"largest": {"neuron": best["neuron"], "activation": best["max"]},
            "purity": {"mean": rnd(real.mean()), "control_mean": rnd(control.mean()),
                       "control_q95": rnd(q95), "above_control_q95": rnd((real > q95).mean())},
            "roles": {c: roles[c] for c in CATEGORIES if roles[c]},
            "population": {c: population[c] for c in cats}}
