"""TinyStories-Instruct (paper section 2.1): records, prompts, building records, adherence metrics.

A record is a random subset of four instructions followed by the story:

    Features: Dialogue, MoralValue
    Words: share, needle, difficult
    Summary: Lily and her mom share a needle to fix a shirt.
    Random sentence: Lily went to her mom and said, "Mom, I found this needle."
    Story: One day, a little girl named Lily found a needle in her room. ...
    <|endoftext|>

Fields come in any order and any may be missing except `Story:`; the dataset spells the sentence
field `Random sentence:`, the paper `Sentence:` (both are read; we write the dataset's spelling so a
model trained on the real TinyStoriesInstruct files understands our prompts). A prompt is the
instruction lines followed by `Story:`, which the model continues (the record's " Once upon..."
tokenizes the same way after "Story:" as in training).

Part-of-speech source: `lemminflect`'s lexicon (PyPI, 1 MB, numpy only; built from the NIH
SPECIALIST lexicon and corpus counts). A word qualifies as, say, a verb only when every entry the
lexicon has for that spelling is a verb, so no context guessing is needed ("ran" is a verb,
"dog" is skipped because it can also be a verb). The same lexicon gives the inflections that count
as using a required word (run: runs, ran, running).
"""

from __future__ import annotations

import functools
import os
import random
import re
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from .errors import UserError

EOT = "<|endoftext|>"

# The paper's six features, spelled as in the TinyStoriesInstruct files.
FEATURES = ("Dialogue", "BadEnding", "MoralValue", "Twist", "Foreshadowing", "Conflict")
_FEATURE_ALIASES = {f.lower(): f for f in FEATURES} | {
    "bad ending": "BadEnding", "moral value": "MoralValue", "moral": "MoralValue",
    "plot twist": "Twist", "plottwist": "Twist",
}

# Field names inside the dataclass, and the labels they are written with.
FIELDS = ("features", "words", "summary", "sentence")
LABELS = {"features": "Features", "words": "Words", "summary": "Summary", "sentence": "Random sentence"}
_LABEL_RE = re.compile(r"^(features|words|summary|random sentence|sentence|story)\s*:[ \t]?(.*)$", re.IGNORECASE)
_LABEL_FIELD = {"features": "features", "words": "words", "summary": "summary",
                "random sentence": "sentence", "sentence": "sentence", "story": "story"}


# ---------------------------------------------------------------- records

@dataclass
class InstructRecord:
    """One TinyStories-Instruct entry: instructions (each optional) and the story.

    `order` is the order the instruction fields are written in (parsing keeps the file's order);
    for an instruction set without a story (an evaluation set), `story` is the story's beginning
    or "" (the model starts the story itself).
    """

    story: str = ""
    words: list[str] = field(default_factory=list)
    sentence: str | None = None
    features: list[str] = field(default_factory=list)
    summary: str | None = None
    order: tuple[str, ...] = FIELDS

    def present(self) -> list[str]:
        """The instruction fields this record has, in its order."""
        return [f for f in self.order if getattr(self, f)]

    def instructions(self) -> "InstructRecord":
        """The same instructions with no story: what an evaluation prompt is built from."""
        return InstructRecord(story="", words=list(self.words), sentence=self.sentence,
                              features=list(self.features), summary=self.summary, order=self.order)


def canonical_feature(name: str, *, strict: bool = False, where: str = "--features") -> str:
    """'dialogue' / 'Bad ending' / 'BadEnding' -> 'BadEnding'. Unknown names stay as written, or fail if strict."""
    key = " ".join(name.strip().lower().split())
    got = _FEATURE_ALIASES.get(key) or _FEATURE_ALIASES.get(key.replace(" ", ""))
    if got:
        return got
    if strict:
        raise UserError(f"{where}: unknown feature {name.strip()!r}; choose from {', '.join(FEATURES)}")
    return name.strip()


def _split_list(value: str) -> list[str]:
    # "perform, cold, beautiful." (the paper's figure ends the list with a period)
    return [w.strip().rstrip(".").strip() for w in value.split(",") if w.strip().rstrip(".").strip()]


def parse_record(text: str, *, require_story: bool = True, where: str = "record") -> InstructRecord:
    """Parse one record (the text between `<|endoftext|>` lines). `where` names it in errors.

    A line that starts with a field label (`Words:`, `Sentence:`, `Random sentence:`, ...) starts
    that field; other lines continue the field above (multi-line summaries and stories).
    """
    values: dict[str, list[str]] = {}
    order: list[str] = []
    current: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _LABEL_RE.match(line.lstrip())
        if m:
            name = _LABEL_FIELD[m.group(1).lower()]
            if name in values:
                raise UserError(f"{where}: the field {m.group(1)}: appears twice (line {lineno})")
            values[name] = [m.group(2)]
            if name != "story":
                order.append(name)
            current = name
        elif current is not None:
            values[current].append(line)
        elif line.strip():
            raise UserError(f"{where}: line {lineno} is not a field: {line.strip()[:60]!r}; "
                            "a record is lines 'Words: ...', 'Features: ...', 'Summary: ...', "
                            "'Random sentence: ...' and 'Story: ...'")
    if "story" not in values and require_story:
        raise UserError(f"{where}: has no 'Story:' field")
    joined = {k: "\n".join(v).strip() for k, v in values.items()}
    rec = InstructRecord(
        story=joined.get("story", ""),
        words=_split_list(joined["words"]) if "words" in joined else [],
        sentence=joined.get("sentence") or None,
        features=[canonical_feature(f) for f in _split_list(joined["features"])] if "features" in joined else [],
        summary=joined.get("summary") or None,
        order=tuple(order) + tuple(f for f in FIELDS if f not in order),
    )
    if require_story and not rec.story:
        raise UserError(f"{where}: the 'Story:' field is empty")
    if not require_story and not rec.present():
        raise UserError(f"{where}: has no instructions (Words:, Sentence:, Features: or Summary:)")
    return rec


def split_records(text: str) -> list[str]:
    """Split a file's text on `<|endoftext|>` lines; empty chunks are dropped."""
    return [c for c in re.split(r"^[ \t]*<\|endoftext\|>[ \t]*$", text, flags=re.MULTILINE) if c.strip()]


def iter_record_texts(path: str | Path) -> Iterator[str]:
    """Stream the record texts of a txt file without reading it whole."""
    buf: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() == EOT:
                if "".join(buf).strip():
                    yield "".join(buf)
                buf = []
            else:
                buf.append(line)
    if "".join(buf).strip():
        yield "".join(buf)


def read_records(path: str | Path, *, require_story: bool = True) -> list[InstructRecord]:
    """All records of an instruct txt file, with errors that name the file and record number."""
    path = Path(path)
    if not path.is_file():
        what = "instruction file" if not require_story else "instruct file"
        raise UserError(f"{path}: no such {what}")
    try:
        records = [parse_record(t, require_story=require_story, where=f"{path}: record {i}")
                   for i, t in enumerate(iter_record_texts(path), 1)]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not records:
        raise UserError(f"{path}: holds no records")
    return records


def as_record(doc: str) -> InstructRecord:
    """A document from any source as a record: an instruct record is parsed, a plain story is a record
    with no instructions."""
    first = next((l for l in doc.splitlines() if l.strip()), "")
    if _LABEL_RE.match(first.strip()):
        return parse_record(doc)
    return InstructRecord(story=doc.strip())


def format_instructions(rec: InstructRecord) -> str:
    """The instruction lines of a record, in its order, each ending in a newline."""
    out = []
    for name in rec.order:
        value = getattr(rec, name)
        if not value:
            continue
        text = ", ".join(value) if isinstance(value, list) else value
        out.append(f"{LABELS[name]}: {text}\n")
    return "".join(out)


def format_record(rec: InstructRecord) -> str:
    """A record as training text (no end-of-text line): instruction lines, then `Story: ...`."""
    return f"{format_instructions(rec)}Story: {rec.story.strip()}"


def format_prompt(rec: InstructRecord | None = None, *, words: Sequence[str] = (), sentence: str | None = None,
                  features: Sequence[str] = (), summary: str | None = None, story_start: str = "") -> str:
    """The instruction prompt a model trained on records continues: instruction lines, then `Story:`.

    Give a record (its `story` is taken as the story's beginning) or the fields as keywords.
    """
    if rec is None:
        rec = InstructRecord(story=story_start, words=list(words), sentence=sentence,
                             features=[canonical_feature(f, strict=True) for f in features], summary=summary)
    start = rec.story.strip()
    return f"{format_instructions(rec)}Story:" + (f" {start}" if start else "")


# ---------------------------------------------------------------- text pieces

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'", "\u00a0": " "})
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
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower().replace("'", "")
    return " ".join(re.findall(r"[a-z0-9]+", text))


_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*'?")


def word_tokens(text: str) -> list[str]:
    """The words of a text, as written; a possessive loses its 's ("dog's" -> dog), other contractions
    stay whole ("won't" is not a form of "win")."""
    out = []
    for w in _WORD.findall(unicodedata.normalize("NFKC", text).translate(_QUOTES)):
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
def _lemmas(word: str) -> dict[str, tuple[str, ...]]:
    from lemminflect import getAllLemmas

    return getAllLemmas(word)


def pos_of(word: str) -> tuple[str, str] | None:
    """(upos, lemma) when the lexicon files this spelling under exactly one part of speech and lemma
    (VERB, NOUN or ADJ), else None. 'ran' -> ('VERB', 'run'); 'dog' (noun or verb) -> None."""
    if not word.isalpha() or not word.islower() or len(word) < 3 or word in _STOP:
        return None
    entries = _lemmas(word)
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
    lemmas = {l.lower() for ls in _lemmas(word).values() for l in ls}
    return min(lemmas) if lemmas else word


@functools.lru_cache(maxsize=20_000)
def word_forms(word: str) -> frozenset[str]:
    """Every spelling that counts as using `word`: the word, its lemmas, and all their inflections
    in the lexicon ('run' -> run, runs, ran, running). Words the lexicon lacks get the regular
    noun and verb endings from lemminflect's rules."""
    from lemminflect import getAllInflections, getAllInflectionsOOV

    word = word.strip().lower()
    lemmas = {word} | {l.lower() for ls in _lemmas(word).values() for l in ls}
    forms = set(lemmas)
    for lemma in lemmas:
        infl = getAllInflections(lemma)
        if not infl:
            infl = {**getAllInflectionsOOV(lemma, "NOUN"), **getAllInflectionsOOV(lemma, "VERB")}
        forms.update(f.lower() for fs in infl.values() for f in fs)
    return frozenset(forms)


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
    for line in unicodedata.normalize("NFKC", story).translate(_QUOTES).splitlines():
        parts = line.split('"')
        spans += parts[1:len(parts) - 1:2]  # odd parts that have a closing quote
    return spans


def has_dialogue(story: str) -> bool:
    """Quoted speech: some double-quoted span with a word in it."""
    return any(re.search(r"[A-Za-z]", s) for s in quoted_spans(story))


def has_moral(story: str) -> bool:
    """An explicit moral: a sentence that states a lesson (see `_MORAL` for the exact phrasings)."""
    return bool(_MORAL.search(unicodedata.normalize("NFKC", story).translate(_QUOTES)))


# The features we can detect honestly from the text. BadEnding, Twist, Foreshadowing and Conflict
# have no surface marker we could defend (a twist need not say "suddenly"), so `build` never emits
# them and the metrics leave them to the judge.
DETECTORS: dict[str, Callable[[str], bool]] = {"Dialogue": has_dialogue, "MoralValue": has_moral}


def detect_features(story: str) -> list[str]:
    return [name for name, detect in DETECTORS.items() if detect(story)]


# ---------------------------------------------------------------- building records

@dataclass
class BuildConfig:
    """How `build_record` picks instructions. Each available field is kept with probability `p_field`
    (redrawn when none is kept): a uniform random non-empty subset when p_field = 0.5."""

    seed: int = 0
    p_field: float = 0.5
    min_sentence_words: int = 3
    shuffle_order: bool = True  # the dataset's field order varies; so does ours
    # lemma -> number of stories it occurs in (`word_document_frequencies`). Given, each word of a story
    # is drawn with weight 1/df, so that over the corpus every word is asked for about equally often, as
    # in the dataset, whose words were drawn uniformly from a fixed vocabulary before the story was
    # written. None: uniform over the story's words, which mostly asks for words every story has
    # (happy, girl, play) and so teaches a model nothing about following the Words line.
    word_df: Mapping[str, int] | None = None


def word_document_frequencies(stories: Iterable[str]) -> Counter:
    """lemma -> the number of `stories` it occurs in, over the words `content_words` can pick."""
    df: Counter = Counter()
    for story in stories:
        df.update({w for words in content_words(story).values() for w in words})
    return df


def _pick_word(words: list[str], rng: random.Random, df: Mapping[str, int] | None) -> str:
    if df is None:
        return rng.choice(words)
    return rng.choices(words, weights=[1.0 / max(1, df.get(w, 1)) for w in words])[0]


def candidate_sentences(story: str, min_words: int = 3) -> list[str]:
    """Sentences the `Random sentence:` can be: not the first, at least `min_words` words, and
    with balanced double quotes (not half of a quotation cut at its inner full stop)."""
    sents = split_sentences(story)[1:]
    return [s for s in sents
            if len(word_tokens(s)) >= min_words and s.translate(_QUOTES).count('"') % 2 == 0]


def build_record(story: str, rng: random.Random, cfg: BuildConfig = BuildConfig(),
                 summarize: Callable[[str], str] | None = None) -> InstructRecord:
    """Instructions for one plain story: Words (a verb, a noun and an adjective from the story, as
    lemmas), Random sentence (any but the first), detected Features, and a Summary if `summarize`
    is given; then a random non-empty subset of those that exist. The summarizer is called only
    when the summary was drawn."""
    story = story.strip()
    avail: dict[str, object] = {}
    cw = content_words(story)
    if all(cw.values()):
        avail["words"] = [_pick_word(cw[pos], rng, cfg.word_df) for pos in ("VERB", "NOUN", "ADJ")]
    sents = candidate_sentences(story, cfg.min_sentence_words)
    if sents:
        avail["sentence"] = rng.choice(sents)
    feats = detect_features(story)
    if feats:
        avail["features"] = feats
    if summarize is not None:
        avail["summary"] = None  # drawn lazily: a summary costs a request
    keep: list[str] = []
    while avail and not keep:
        keep = [k for k in avail if rng.random() < cfg.p_field]
    order = [f for f in FIELDS]
    if cfg.shuffle_order:
        rng.shuffle(order)
    rec = InstructRecord(story=story, order=tuple(order))
    for k in keep:
        value = avail[k] if k != "summary" else " ".join(summarize(story).split())
        setattr(rec, k, value or ([] if k in ("words", "features") else None))
    return rec


def build_records(stories: Iterable[str], cfg: BuildConfig = BuildConfig(),
                  summarize: Callable[[str], str] | None = None) -> Iterator[InstructRecord]:
    """`build_record` over a stream of stories, with one seeded generator (same seed, same records)."""
    rng = random.Random(cfg.seed)
    for story in stories:
        if story.strip():
            yield build_record(story, rng, cfg, summarize)


def write_records(records: Iterable[InstructRecord], out: str | Path, *, force: bool = False,
                  progress_desc: str | None = None, total: int | None = None) -> int:
    """Write records in the official txt format (each record, then a `<|endoftext|>` line), streamed
    into a temporary sibling that replaces `out` only when all is written. Returns the count."""
    from .utils import fsync_dir, progress

    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists; pass --force to replace it")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            it = records if progress_desc is None else progress(records, desc=progress_desc, unit="story",
                                                                total=total)
            for rec in it:
                f.write(format_record(rec) + f"\n{EOT}\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    return n


# ---------------------------------------------------------------- summaries

SUMMARY_PROMPT = ("Summarize the following children's story in one or two short, simple sentences "
                  "(at most 40 words). Reply with the summary only.\n\nStory:\n{story}")


def make_summarizer(url: str, model: str, *, cache: str | Path | None = None, **client_kw) -> Callable[[str], str]:
    """A `summarize(story) -> str` that asks an OpenAI-compatible server (the judge's client, `llm.ChatClient`).

    Summaries are cached on disk by (model, prompt, story), in `cache` or by default
    <cache dir>/summaries.jsonl (cache="" turns that off): a build that stops half way pays for
    nothing twice when it is rerun.
    """
    from .evaluate.cache import JsonlCache, default_cache_dir, key
    from .llm import ChatClient

    client = ChatClient(url, model, **{"what": "summarizer", **client_kw})
    store = JsonlCache(None if cache == "" else Path(cache or default_cache_dir() / "summaries.jsonl"))

    def summarize(story: str) -> str:
        prompt = SUMMARY_PROMPT.format(story=story.strip())
        k = key("summary", model, prompt)
        text = store.get(k)
        if text is None:
            text = " ".join(client.complete(prompt, temperature=0.0).split())
            if not text:
                raise UserError(f"--summarizer-url {url}: the summarizer returned an empty summary")
            store.put(k, text)
        return text

    return summarize


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


def word_used(word: str, story: str) -> bool:
    """Whether the story uses `word` in any inflection (run: run, runs, ran, running), any case: a story
    word counts when it is one of `word_forms`, or when the lexicon gives it `word`'s lemma (proven: prove;
    dared: dare, which the lexicon's inflection table lacks)."""
    return _uses(word, {t.lower() for t in word_tokens(story)})


def _uses(word: str, tokens: set[str]) -> bool:
    """`word_used` on a story's lowercased word set."""
    if word_forms(word) & tokens:
        return True
    word = word.strip().lower()
    base = {word} | {l.lower() for ls in _lemmas(word).values() for l in ls}
    return any(l.lower() in base for t in tokens for ls in _lemmas(t).values() for l in ls)


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
            (a.words_used if _uses(w, toks) else a.words_missing).append(w)
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


# ---------------------------------------------------------------- the evaluation set

EVAL_SET_FILE = "instruct_eval.txt"


def eval_set_path() -> Path:
    """The 50 instruction sets we wrote for `evaluate instruct` (package data)."""
    return Path(__file__).resolve().parent / "resources" / EVAL_SET_FILE


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
