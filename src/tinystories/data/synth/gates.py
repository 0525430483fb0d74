"""The checks a generated story passes before it counts (issue 18's quality gates). Each failing check has a
reason name; the run keeps rejected stories with it and reports the counts by reason."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..instruct.words import QUOTES, uses_word, word_tokens

REASONS = ("empty", "refusal", "too_short", "too_long", "unbalanced_quotes", "missing_word", "duplicate",
           "cut_off", "bad_summary")

# How assistants decline, at the start of a reply (markdown allowed; a story opening with a quote is speech).
_REFUSAL = re.compile(r"^[\s*_#]*(?:i'?m sorry|i am sorry|i apologi[sz]e|sorry, (?:but )?i\b|as an ai\b|as a language model|"
                      r"i (?:can ?not|can't|won't|will not|am unable to|'m unable to) "
                      r"(?:help|write|do that|comply|assist|create|fulfil|provide|produce))",
                      re.IGNORECASE)


@dataclass(frozen=True)
class GateConfig:
    min_words: int = 60          # the paper's 3-5 paragraphs are ~150-400 words
    max_words: int = 1000
    reject_cut_off: bool = True  # a reply the server cut at max_tokens (finish_reason "length")
    check_words: bool = True     # the matcher knows English inflections only


_TITLE = re.compile(r"^(?P<line>[^\n]{1,80})\n[ \t]*\n")
_LABEL = re.compile(r"^[\s*_]*story[*_]*\s*:[*_]*\s*", re.IGNORECASE)


def _is_title(line: str) -> bool:
    """"Title: ...", a markdown heading or bold line, or a short Title Case line without a full stop."""
    line = line.strip()
    if re.match(r"^(?:#+\s|\*\*|__|title\s*:)", line, re.IGNORECASE):
        return True
    words = re.findall(r"[A-Za-z']+", line)
    return (0 < len(words) <= 10 and not re.search(r"[.!?,;:\"\u201d]$", line)
            and sum(w[0].isupper() for w in words) >= 0.6 * len(words))


def clean_reply(text: str) -> str:
    """The story in a reply: without a leading title ("Title: The Brave Kite", "**The Brave Kite**", "The Brave
    Kite" alone on its line) or a "Story:" label, which chat models like to add and the dataset's stories lack."""
    text = text.strip()
    m = _TITLE.match(text)
    if m and _is_title(m.group("line")):
        text = text[m.end():].lstrip()
    return _LABEL.sub("", text, count=1).strip()


def is_refusal(text: str) -> bool:
    """Whether a reply opens the way assistants decline ("I'm sorry", "As an AI")."""
    return bool(_REFUSAL.search(text.strip()))


def check(story: str, words: tuple[str, ...], cfg: GateConfig = GateConfig(),
          finish_reason: str | None = None) -> tuple[str | None, list[str]]:
    """(the first failing reason or None, the required words missing from the story)."""
    text = story.strip()
    if not text:
        return "empty", []
    if is_refusal(text):
        return "refusal", []
    if cfg.reject_cut_off and finish_reason == "length":
        return "cut_off", []
    tokens = word_tokens(text)
    if len(tokens) < cfg.min_words:
        return "too_short", []
    if len(tokens) > cfg.max_words:
        return "too_long", []
    if text.translate(QUOTES).count('"') % 2:
        return "unbalanced_quotes", []
    if not cfg.check_words:
        return None, []
    lower = {t.lower() for t in tokens}
    missing = [w for w in words if not uses_word(w, lower)]
    return ("missing_word" if missing else None), missing
