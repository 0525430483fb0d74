"""The instructions block: what a TinyStories-Instruct prompt asks for (words, a sentence, features, a summary).

`generate` shows these as --words/--sentence/--features/--summary; from Python,
`Instructions(words="dog,happy").prompt("Once upon a time")` is the prompt a model trained on
`tinystories instruct build` records continues.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UserError
from .records import format_prompt


@dataclass(kw_only=True)
class Instructions:
    """TinyStories-Instruct (a model trained on `tinystories instruct build` records)"""
    words: str | None = None
    """words the story should use, comma-separated: dog,happy,run"""
    sentence: str | None = None
    """a sentence the story should contain"""
    features: str | None = None
    """comma-separated, from Dialogue, BadEnding, MoralValue, Twist, Foreshadowing, Conflict"""
    summary: str | None = None
    """a 1-2 line summary of the story"""

    def given(self) -> bool:
        return any((self.words, self.sentence, self.features, self.summary))

    def prompt(self, story_start: str = "") -> str | None:
        """The Instruct prompt (instruction lines, `Story:`, then story_start), or None if nothing is asked."""
        if not self.given():
            return None
        words = [w.strip() for w in (self.words or "").split(",") if w.strip()]
        if self.words is not None and not words:
            raise UserError("--words: give words separated by commas, e.g. --words dog,happy,run")
        features = [f for f in (self.features or "").split(",") if f.strip()]
        for name, value in (("--sentence", self.sentence), ("--summary", self.summary)):
            if value is not None and not value.strip():
                raise UserError(f"{name}: is empty; give the text or leave the option out")
        if self.sentence is not None and "\n" in self.sentence.strip():
            raise UserError("--sentence: must be one line")
        return format_prompt(words=words, sentence=(self.sentence or "").strip() or None, features=features,
                             summary=(self.summary or "").strip() or None, story_start=story_start)
