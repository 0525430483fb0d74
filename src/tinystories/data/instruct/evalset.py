"""The 50 instruction sets models are evaluated on, their disjointness from training records, and their prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from .records import InstructRecord, format_prompt, read_records
from .words import lemma, normalize_for_match

# ---------------------------------------------------------------- the evaluation set

EVAL_SET_FILE = "instruct_eval.txt"


def eval_set_path() -> Path:
    """The 50 instruction sets we wrote for `evaluate instruct` (package data)."""
    return Path(str(resources.files("tinystories").joinpath("resources", EVAL_SET_FILE)))


def load_instructions(path: str | Path | None = None) -> list[InstructRecord]:
    """Instruction sets from a file in the record format (`Story:` optional: a story beginning),
    or the packaged evaluation set."""
    return read_records(path or eval_set_path(), require_story=False)


@dataclass
class Overlap:
    """Ways an evaluation set touches training data; empty lists = disjoint."""

    word_sets: list[int] = field(default_factory=list)   # eval indices whose word set a record has
    sentences: list[int] = field(default_factory=list)   # eval indices whose sentence a story contains
    summaries: list[int] = field(default_factory=list)   # eval indices whose summary a record has
    checked: int = 0

    @property
    def disjoint(self) -> bool:
        return not (self.word_sets or self.sentences or self.summaries)


def check_disjoint(eval_sets: Sequence[InstructRecord], training: Iterable[InstructRecord]) -> Overlap:
    """Compare evaluation sets with training records: no identical word set (as lemmas, any order), no
    required sentence found in a training story (normalized), no identical summary (normalized)."""
    def lemma_set(words):
        return frozenset(lemma(w) for w in words)

    word_sets = {lemma_set(e.words): i for i, e in enumerate(eval_sets) if e.words}
    sentences = {normalize_for_match(e.sentence): i for i, e in enumerate(eval_sets) if e.sentence}
    summaries = {normalize_for_match(e.summary): i for i, e in enumerate(eval_sets) if e.summary}
    hit_w, hit_s, hit_m = set(), set(), set()
    n = 0
    for rec in training:
        n += 1
        if rec.words and (i := word_sets.get(lemma_set(rec.words))) is not None:
            hit_w.add(i)
        if rec.summary and (i := summaries.get(normalize_for_match(rec.summary))) is not None:
            hit_m.add(i)
        text = f" {normalize_for_match(rec.story + ' ' + (rec.sentence or ''))} "
        for s, i in sentences.items():
            if f" {s} " in text:
                hit_s.add(i)
    return Overlap(sorted(hit_w), sorted(hit_s), sorted(hit_m), n)


# ---------------------------------------------------------------- evaluating a model on instruction sets

# How an exercise spells each feature out for the judge (the wording of the TinyStories generation prompts).
FEATURE_TEXT = {
    "Dialogue": "the story should contain at least one dialogue",
    "BadEnding": "the story has a bad ending",
    "MoralValue": "the story has a moral value",
    "Twist": "something unexpected happens or there is a plot twist",
    "Foreshadowing": "the narrative uses foreshadowing or setup and payoff",
    "Conflict": "the story has some sort of conflict",
}


def exercise_text(instr: InstructRecord) -> str:
    """The instructions as the paper's judge exercise (Figure 5): 'Write a short story. The story should ...'."""
    parts = ["Write a short story."]
    if instr.words:
        parts.append(f"The story should contain the words: {', '.join(instr.words)}.")
    if instr.sentence:
        parts.append(f'The story should contain the following sentence: "{instr.sentence}".')
    if instr.summary:
        parts.append(f"The general plot of the story should be: {instr.summary} "
                     "(feel free to expand beyond this general plot).")
    if instr.features:
        parts.append("The story has the following features: "
                     + "; ".join(FEATURE_TEXT.get(f, f) for f in instr.features) + ".")
    if instr.story.strip():
        parts.append(f'The story should begin with: "{instr.story.strip()}".')
    return " ".join(parts)


def eval_prompt(instr: InstructRecord, plain: bool = False) -> str:
    """What a model is given for an instruction set: the instruction prompt, or with `plain` the story
    start alone ('' = the model starts a story from the end-of-text token, as every training story starts)."""
    return instr.story.strip() if plain else format_prompt(instr)


