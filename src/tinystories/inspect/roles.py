"""A word's role in its sentence, from the project's lexicon (lemminflect) plus closed word classes.

Categories: NAME, PRON, DET, AUX, FUNC (prepositions, conjunctions, particles), NOUN, VERB, ADJ, ADV,
PUNCT, BREAK (a line break), OTHER. No tagger reads the sentence: a word the lexicon files under several
parts of speech ("play", "park") takes the one its previous word suggests (after a determiner or
adjective: NOUN; after a pronoun, a name, "to" or an auxiliary: VERB), else OTHER. That is crude, and the
same crude rule scores the shuffled control, so a neuron's purity above the control's is still evidence
of a role.
"""

from __future__ import annotations

import functools

CATEGORIES = ("NAME", "PRON", "DET", "AUX", "FUNC", "NOUN", "VERB", "ADJ", "ADV", "PUNCT", "BREAK", "OTHER")

_PRON = frozenset(["i", "me", "you", "he", "him", "she", "it", "we", "us", "they", "them", "myself", "yourself", "himself", "herself", "itself", "ourselves", "themselves", "mine", "yours", "hers", "ours", "theirs", "who", "what", "everyone", "someone", "something", "nothing", "anything", "everything"])
_DET = frozenset(["the", "a", "an", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our", "their", "some", "any", "every", "each", "no", "all", "one", "two", "three", "both", "another"])
_AUX = frozenset(["is", "am", "are", "was", "were", "be", "been", "being", "have", "has", "had", "do", "does", "did", "can", "could", "will", "would", "shall", "should", "may", "might", "must", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't", "didn't", "can't", "couldn't", "won't", "wouldn't", "i'm", "it's", "that's", "let's"])
_FUNC = frozenset(["and", "but", "or", "so", "because", "if", "when", "then", "than", "as", "to", "of", "in", "on", "at", "for", "with", "from", "by", "up", "down", "out", "over", "under", "into", "about", "after", "before", "around", "through", "not", "there", "here", "too", "very", "just", "also", "while", "until"])
_NOUNISH_BEFORE = _DET | {"ADJ"}
_VERBISH_BEFORE = _PRON | _AUX | {"to", "NAME"}


@functools.lru_cache(maxsize=100_000)
def _lexicon(word: str) -> tuple[str, ...]:
    from ..data.instruct.words import lexicon_lemmas

    return tuple(u for u in lexicon_lemmas(word) if u in ("NOUN", "VERB", "ADJ", "ADV"))


def category(word: str, sentence_start: bool, previous: str | None, names: frozenset[str] = frozenset()) -> str:
    """The category of `word` (as written) given whether it opens its sentence and the previous word
    (lowercased, or "NAME"/"ADJ" when that word was one). `names`: words seen capitalized mid-sentence."""
    w = word.strip()
    if not any(c.isalpha() for c in w):
        return "PUNCT" if w else ("BREAK" if "\n" in word else "OTHER")
    low = w.lower().replace("\u2019", "'")
    if w[0].isupper() and low != "i" and (not sentence_start or low in names or
                                          (not _lexicon(low) and low not in _PRON | _DET | _AUX | _FUNC)):
        return "NAME"
    for cat, words in (("PRON", _PRON), ("DET", _DET), ("AUX", _AUX), ("FUNC", _FUNC)):
        if low in words:
            return cat
    pos = _lexicon(low)
    if len(pos) == 1:
        return pos[0]
    if not pos:
        return "OTHER"
    if "NOUN" in pos and previous in _NOUNISH_BEFORE:
        return "NOUN"
    if "VERB" in pos and previous in _VERBISH_BEFORE:
        return "VERB"
    return "OTHER"


def purity(counts: dict[str, int]) -> tuple[str, float]:
    """(most common category, its share of the counts)."""
    total = sum(counts.values())
    if not total:
        return "OTHER", 0.0
    top = max(counts, key=lambda c: (counts[c], -CATEGORIES.index(c)))
    return top, counts[top] / total
