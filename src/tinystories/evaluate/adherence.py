"""Instruction adherence: did a story use the words, the sentence, the features it was asked for."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.instruct.features import DETECTORS
from ..data.instruct.records import InstructRecord, canonical_feature
from ..data.instruct.words import normalize_for_match, uses_word, word_tokens

# ---------------------------------------------------------------- adherence metrics

@dataclass
class Adherence:
    """How well one story follows one instruction set. A metric is None when the set does not ask
    for it; `features` has a verdict for each required feature we can detect, `unscored` the rest."""

    words_used: list[str] = field(default_factory=list)
    words_missing: list[str] = field(default_factory=list)
    word_share: float | None = None
    sentence_present: bool | None = None
    features: dict[str, bool] = field(default_factory=dict)
    unscored: list[str] = field(default_factory=list)

    @property
    def feature_share(self) -> float | None:
        return sum(self.features.values()) / len(self.features) if self.features else None

    def to_dict(self) -> dict:
        return {"word_share": self.word_share, "words_used": self.words_used, "words_missing": self.words_missing,
                "sentence_present": self.sentence_present, "features": self.features,
                "feature_share": self.feature_share, "features_unscored": self.unscored}


def sentence_present(sentence: str, story: str) -> bool:
    """Whether the sentence appears in the story, ignoring case, punctuation, quotes and spacing."""
    s = normalize_for_match(sentence)
    return bool(s) and f" {s} " in f" {normalize_for_match(story)} "


def adherence(instr: InstructRecord, story: str) -> Adherence:
    """Score a generated story against an instruction set (see `Adherence`)."""
    a = Adherence()
    if instr.words:
        toks = {t.lower() for t in word_tokens(story)}
        for w in instr.words:
            (a.words_used if uses_word(w, toks) else a.words_missing).append(w)
        a.word_share = len(a.words_used) / len(instr.words)
    if instr.sentence:
        a.sentence_present = sentence_present(instr.sentence, story)
    for f in instr.features:
        f = canonical_feature(f)
        if f in DETECTORS:
            a.features[f] = DETECTORS[f](story)
        else:
            a.unscored.append(f)
    return a


