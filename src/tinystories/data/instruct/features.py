"""Feature detectors: which of the paper's story features a text shows (dialogue, moral)."""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

from .words import QUOTES

# ---------------------------------------------------------------- feature detectors


# MoralValue: an explicit moral stated in the text. Each pattern is a way TinyStories spell one out
# ("The moral of the story is...", "Lily learned that sharing is caring", "...learned a valuable
# lesson", "It is important to...", "always remember to...").
_MORAL = re.compile(
    r"\bmoral\b|\blessons?\b"
    r"|\blearn(?:ed|t|s)?\s+(?:that|how important|the importance|about the importance|not to|to always|to never"
    r"|it is|it's|its)\b"
    r"|\b(?:it is|it's|is always)\s+(?:important|better|good|best|kind|wrong|okay|ok)\s+to\b"
    r"|\balways remember\b|\bremember(?:ed)? to always\b|\bshould always\b|\bshould never\b",
    re.IGNORECASE)


def quoted_spans(story: str) -> list[str]:
    """The double-quoted spans (straight or curly quotes), pairing quote marks left to right in each line."""
    spans = []
    for line in unicodedata.normalize("NFKC", story).translate(QUOTES).splitlines():
        parts = line.split('"')
        spans += parts[1:len(parts) - 1:2]  # odd parts that have a closing quote
    return spans


def has_dialogue(story: str) -> bool:
    """Quoted speech: some double-quoted span with a word in it."""
    return any(re.search(r"[A-Za-z]", s) for s in quoted_spans(story))


def has_moral(story: str) -> bool:
    """An explicit moral: a sentence that states a lesson (see `_MORAL` for the exact phrasings)."""
    return bool(_MORAL.search(unicodedata.normalize("NFKC", story).translate(QUOTES)))


# The features we can detect honestly from the text. BadEnding, Twist, Foreshadowing and Conflict
# have no surface marker we could defend (a twist need not say "suddenly"), so `build` never emits
# them and the metrics leave them to the judge.
DETECTORS: dict[str, Callable[[str], bool]] = {"Dialogue": has_dialogue, "MoralValue": has_moral}


def detect_features(story: str) -> list[str]:
    return [name for name, detect in DETECTORS.items() if detect(story)]


