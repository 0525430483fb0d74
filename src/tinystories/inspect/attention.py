"""Attention heads: what each head attends to on one text, and a per-head table over held-out stories.

The table's label rule (README, "Inspecting a model"): over all queries of the stories,
- `offset_share` = the mean attention mass at the single most-used relative offset d (key = query - d);
- `position_share` = the mean mass at the single most-used absolute key position p;
a head is **positional** at offset d when offset_share >= POSITIONAL_SHARE and offset_share >=
position_share; **positional** at position p (the first token, p = 0) when position_share >=
POSITIONAL_SHARE; otherwise **semantic**: what it attends to depends on the tokens, and the table lists
the tokens it most attends to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .capture import attention_probs, capture
from .stories import TokenText, iter_story_ids

POSITIONAL_SHARE = 0.5   # a head sending at least half its mass to one offset (or position) is positional
TOP_TOKENS = 10          # attended tokens listed per semantic head
MIN_TOKEN_COUNT = 3      # a token must occur this often as a key to be listed (one-off tokens are noise)
DIGITS = 4               # numbers are rounded once, here; the JSON and the HTML show the same values


def rnd(x: float) -> float:
    return round(float(x), DIGITS)


@dataclass
class HeadAccumulator:
    """Running sums over queries for every (layer, head); memory is fixed by the model's shape and
    vocabulary, not by the number of stories."""
    layers: int
    heads: int
    context: int
    vocab: int

    def __post_init__(self):
        L, H = self.layers, self.heads
        self.queries = 0
        self.distance = torch.zeros(L, H, dtype=torch.float64)
        self.entropy = torch.zeros(L, H, dtype=torch.float64)
        self.by_offset = torch.zeros(L, H, self.context, dtype=torch.float64)
        self.by_position = torch.zeros(L, H, self.context, dtype=torch.float64)
        self.received = torch.zeros(L, H, self.vocab, dtype=torch.float64)   # mass on each key token id
        self.key_count = torch.zeros(self.vocab, dtype=torch.float64)

    def add(self, layer: int, probs: torch.Tensor, ids: torch.Tensor) -> None:
        """probs [H, T, T] of one story (queries x keys), ids [T]."""
        T = probs.size(1)
        p = probs.double()
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        causal = j <= i
        rel = (i - j).expand(T, T)[causal]
        self.distance[layer] += (p * (i - j).clamp(min=0)).sum((1, 2))
        self.entropy[layer] -= torch.special.xlogy(p, p).sum((1, 2))
        self.by_offset[layer].index_add_(1, rel, p[:, causal])
        self.by_position[layer, :, :T] += p.sum(1)
        # Mass on a key from other tokens only: a token attending to itself or to the start is not
        # evidence that the head looks for that word.
        q = p.clone()
        q[:, :, 0] = 0
        q.diagonal(dim1=1, dim2=2).zero_()
        self.received[layer].index_add_(1, ids, q.sum(1))
        if layer == 0:
            self.queries += T
            self.key_count.index_add_(0, ids[1:], torch.ones(T - 1, dtype=torch.float64))

    def table(self, token_text) -> list[dict]:
        rows = []
        n = max(self.queries, 1)
        for L in range(self.layers):
            for h in range(self.heads):
                off_share, off = (self.by_offset[L, h] / n).max(0)
                pos_share, pos = (self.by_position[L, h] / n).max(0)
                row = {"layer": L, "head": h, "mean_distance": rnd(self.distance[L, h] / n),
                       "entropy": rnd(self.entropy[L, h] / n), "offset": int(off),
                       "offset_share": rnd(off_share), "position": int(pos), "position_share": rnd(pos_share)}
                row.update(label(float(off_share), int(off), float(pos_share), int(pos)))
                row["top_tokens"] = self.top_tokens(L, h, token_text) if row["label"] == "semantic" else []
                rows.append(row)
        return rows

    def top_tokens(self, L: int, h: int, token_text) -> list[dict]:
        """The tokens this head sends the most attention mass to, with their lift: mass share over
        frequency share (1 = attended as often as the token occurs)."""
        mass = self.received[L, h].clone()
        mass[self.key_count < MIN_TOKEN_COUNT] = 0
        total, count_total = float(self.received[L, h].sum()), float(self.key_count.sum())
        out = []
        for t in mass.argsort(descending=True)[:TOP_TOKENS].tolist():
            if mass[t] <= 0:
                break
            lift = (float(mass[t]) / total) / (float(self.key_count[t]) / count_total) if total else 0.0
            out.append({"token": token_text(t), "id": t, "mass": rnd(mass[t] / total), "lift": rnd(lift),
                        "count": int(self.key_count[t])})
        return out


def label(offset_share: float, offset: int, position_share: float, position: int) -> dict:
    if offset_share >= POSITIONAL_SHARE and offset_share >= position_share:
        names = {0: "itself", 1: "previous token"}
        text = f"positional: offset {offset}" + (f" ({names[offset]})" if offset in names else "")
        return {"label": "positional", "label_text": text}
    if position_share >= POSITIONAL_SHARE:
        text = f"positional: position {position}" + (" (first token)" if position == 0 else "")
        return {"label": "positional", "label_text": text}
    return {"label": "semantic", "label_text": "semantic"}


@torch.inference_mode()
def head_table(model, tokenizer, stories: list[str], progress=None) -> dict:
    """The per-head table over `stories` (each: <|endoftext|> + story, cut to the context)."""
    cfg = model.config
    acc = HeadAccumulator(cfg.layers, cfg.heads, cfg.context, cfg.vocab_size)
    device = next(model.parameters()).device
    tokens = 0
    with capture(model, mlp=False) as got:
        for ids in iter_story_ids(tokenizer, stories, cfg.context):
            x = torch.tensor([ids], device=device)
            model(x, last_only=True)
            for L in range(cfg.layers):
                acc.add(L, attention_probs(model, L, got.qkv[L])[0].cpu(), x[0].cpu())
            tokens += len(ids)
            if progress:
                progress(1)
    return {"stories": len(stories), "tokens": tokens, "positional_share": POSITIONAL_SHARE,
            "heads": acc.table(TokenText(tokenizer))}


@torch.inference_mode()
def text_attention(model, tokenizer, ids: list[int]) -> list[list[list[list[float]]]]:
    """probs[layer][head][query] = the query's weights on keys 0..query (a triangle), rounded."""
    cfg = model.config
    x = torch.tensor([ids[:cfg.context]], device=next(model.parameters()).device)
    out = []
    with capture(model, mlp=False) as got:
        model(x, last_only=True)
        for L in range(cfg.layers):
            p = attention_probs(model, L, got.qkv[L])[0].cpu().double()
            out.append([[[rnd(v) for v in p[h, q, :q + 1].tolist()] for q in range(p.size(1))]
                        for h in range(p.size(0))])
    return out


def head_summary(rows: list[dict]) -> dict:
    """How many heads are positional (and at which offsets) and how many semantic."""
    pos = [r for r in rows if r["label"] == "positional"]
    return {"heads": len(rows), "positional": len(pos), "semantic": len(rows) - len(pos),
            "offsets": sorted({r["offset"] for r in pos if r["offset_share"] >= r["position_share"]})}
