"""What story i asks for, and which instructions its Instruct record keeps: pure functions of (seed, i),
so a resumed or re-run corpus draws exactly the same, whatever order the calls finish in."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from ..instruct.build import candidate_sentences
from ..instruct.records import FEATURES, FIELDS, InstructRecord
from .vocab import Vocabulary


@dataclass(frozen=True)
class Draw:
    index: int
    verb: str
    noun: str
    adjective: str
    features: tuple[str, ...]

    @property
    def words(self) -> tuple[str, str, str]:
        return self.verb, self.noun, self.adjective

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d


def _rng(kind: str, seed: int, index: int) -> random.Random:
    # A string seed is hashed (SHA-512) by `random`: the same on every machine and Python version.
    return random.Random(f"tinystories-synth:{kind}:{seed}:{index}")


def draw(vocab: Vocabulary, seed: int, index: int, feature_prob: float = 1 / 3) -> Draw:
    """One verb, one noun and one adjective, uniform over the vocabulary, and each of the paper's six features
    with probability `feature_prob` (1/3: two on average; none is a valid draw, as in the dataset)."""
    rng = _rng("story", seed, index)
    verb, noun, adj = (rng.choice(vocab.words(p)) for p in ("verb", "noun", "adjective"))
    feats = tuple(f for f in FEATURES if rng.random() < feature_prob)
    return Draw(index, verb, noun, adj, feats)


def instruct_record(d: Draw, story: str, summary: str | None, seed: int, p_field: float = 0.5) -> InstructRecord:
    """The TinyStories-Instruct record of a finished story (paper section 2.1): a random non-empty subset
    of its words, a sentence from it (any but the first), the features asked for and the summary, in a
    random order."""
    rng = _rng("instruct", seed, d.index)
    avail: dict[str, object] = {"words": list(d.words)}
    sents = candidate_sentences(story)
    if sents:
        avail["sentence"] = rng.choice(sents)
    if d.features:
        avail["features"] = list(d.features)
    if summary:
        avail["summary"] = summary
    keep: list[str] = []
    while not keep:
        keep = [k for k in avail if rng.random() < p_field]
    order = list(FIELDS)
    rng.shuffle(order)
    rec = InstructRecord(story=story.strip(), order=tuple(order))
    for k in keep:
        setattr(rec, k, avail[k])
    return rec
