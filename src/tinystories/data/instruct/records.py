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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ...errors import UserError

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
        # strict, as generate's --features is: an unknown feature could never be detected or obeyed
        features=([canonical_feature(f, strict=True, where=where) for f in _split_list(joined["features"])]
                  if "features" in joined else []),
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


