"""Words in stories: sentences, word tokens, and parts of speech and inflections from `lemminflect`'s lexicon."""

from __future__ import annotations

import functools
import re
import unicodedata

# ---------------------------------------------------------------- text pieces

QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'", "\u00a0": " "})
_SENT_END = re.compile(r'(?<=[.!?])["\'\u201d\u2019)\]]*\s+(?=["\'\u201c\u2018(\[]?[A-Z0-9])')


def split_sentences(story: str) -> list[str]:
    """Sentences: split after . ! ? (and any closing quote) where whitespace and a capital follow
    ('"Look!" she said.' stays one sentence)."""
    out = []
    for para in story.splitlines():
        pos = 0
        for m in _SENT_END.finditer(para):
            out.append(para[pos:m.end()].strip())
            pos = m.end()
        if para[pos:].strip():
            out.append(para[pos:].strip())
    return [s for s in out if s]


def normalize_for_match(text: str) -> str:
    """Lowercase words separated by single spaces: quotes, punctuation and spacing do not matter."""
    text = unicodedata.normalize("NFKC", text).translate(QUOTES).lower().replace("'", "")
    return " ".join(re.findall(r"[a-z0-9]+", text))


_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*'?")


def word_tokens(text: str) -> list[str]:
    """The words of a text, as written; a possessive loses its 's ("dog's" -> dog), other contractions
    stay whole ("won't" is not a form of "win")."""
    out = []
    for w in _WORD.findall(unicodedata.normalize("NFKC", text).translate(QUOTES)):
        w = w[:-2] if w.lower().endswith("'s") else w.rstrip("'")
        out.append(w)
    return out


# ---------------------------------------------------------------- part of speech (lemminflect lexicon)

# Words the lexicon files as nouns/verbs/adjectives that make poor instructions: pronouns
# (the lexicon lists "she" as a noun), auxiliaries and the lightest verbs, quantifiers, and the
# formula words of nearly every story ("named", "One day", "Once upon a time").
_STOP = frozenset("""
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
this that these those who whom whose what which one ones some any every each all both other another
be am is are was were been being have has had having do does did done doing say says said go goes went
gone get got gets make made let lets can could will would shall should may might must
thing things something nothing anything everything someone everyone anyone nobody way lot lots
myself yourself himself herself itself ourselves themselves many much more most few such same own
mr mrs ms miss oh yes no okay ok t s d ll ve re m
name day time
""".split())


@functools.lru_cache(maxsize=200_000)
def lexicon_lemmas(word: str) -> dict[str, tuple[str, ...]]:
    from lemminflect import getAllLemmas

    return getAllLemmas(word)


def pos_of(word: str) -> tuple[str, str] | None:
    """(upos, lemma) when the lexicon files this spelling under exactly one part of speech and lemma
    (VERB, NOUN or ADJ), else None. 'ran' -> ('VERB', 'run'); 'dog' (noun or verb) -> None."""
    if not word.isalpha() or not word.islower() or len(word) < 3 or word in _STOP:
        return None
    entries = lexicon_lemmas(word)
    if len(entries) != 1:
        return None
    (upos, lemmas), = entries.items()
    if upos not in ("VERB", "NOUN", "ADJ") or len(lemmas) != 1 or lemmas[0] in _STOP:
        return None
    return upos, lemmas[0]


def content_words(story: str) -> dict[str, list[str]]:
    """{'VERB': lemmas, 'NOUN': ..., 'ADJ': ...} of the unambiguous lowercase words of a story, in order
    of first use. Capitalized words are left out (names, and words whose case hides nothing useful)."""
    out: dict[str, list[str]] = {"VERB": [], "NOUN": [], "ADJ": []}
    seen = set()
    for w in word_tokens(story):
        got = pos_of(w)
        if got and got not in seen:
            seen.add(got)
            out[got[0]].append(got[1])
    return out


def lemma(word: str) -> str:
    """One lemma for a word ('ran' -> 'run'; of several, the alphabetically first), for comparing word sets."""
    word = word.strip().lower()
    lemmas = {l.lower() for ls in lexicon_lemmas(word).values() for l in ls}
    return min(lemmas) if lemmas else word


@functools.lru_cache(maxsize=20_000)
def word_forms(word: str) -> frozenset[str]:
    """Every spelling that counts as using `word`: the word, its lemmas, and all their inflections
    in the lexicon ('run' -> run, runs, ran, running). Words the lexicon lacks get the regular
    noun and verb endings from lemminflect's rules."""
    from lemminflect import getAllInflections, getAllInflectionsOOV

    word = word.strip().lower()
    lemmas = {word} | {l.lower() for ls in lexicon_lemmas(word).values() for l in ls}
    forms = set(lemmas)
    for lemma in lemmas:
        infl = getAllInflections(lemma)
        if not infl:
            infl = {**getAllInflectionsOOV(lemma, "NOUN"), **getAllInflectionsOOV(lemma, "VERB")}
        forms.update(f.lower() for fs in infl.values() for f in fs)
    return frozenset(forms)


def word_used(word: str, story: str) -> bool:
    """Whether the story uses `word` in any inflection (run: run, runs, ran, running), any case: a story
    word counts when it is one of `word_forms`, or when the lexicon gives it `word`'s lemma (proven: prove;
    dared: dare, which the lexicon's inflection table lacks). The one matcher behind Instruct adherence and
    synth's word gate."""
    return uses_word(word, {t.lower() for t in word_tokens(story)})


def uses_word(word: str, tokens: set[str]) -> bool:
    """`word_used` on a story's lowercased word set."""
    if word_forms(word) & tokens:
        return True
    word = word.strip().lower()
    base = {word} | {l.lower() for ls in lexicon_lemmas(word).values() for l in ls}
    return any(l.lower() in base for t in tokens for ls in lexicon_lemmas(t).values() for l in ls)
