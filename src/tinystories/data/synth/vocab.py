"""The vocabulary stories are asked to use: verbs, nouns and adjectives (paper section 2: ~1,500 words a
3-4 year old knows). The packaged list is resources/synth/vocabulary.txt, built by
scripts/build_synth_vocab.py; `--vocab FILE` takes any other list, in any language.

File format: one `word tag` per line, tag one of verb / noun / adjective (also v, n, adj); `#` starts a
comment; blank lines are skipped. Words may hold spaces ("ice cream noun"): the tag is the last field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ...errors import UserError

POS = ("verb", "noun", "adjective")
_TAGS = {"verb": "verb", "v": "verb", "noun": "noun", "n": "noun", "adjective": "adjective", "adj": "adjective"}
DEFAULT_VOCAB = "vocabulary.txt"


@dataclass(frozen=True)
class Vocabulary:
    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    sha256: str = ""       # of the file's text: recorded with every story
    source: str = ""

    def words(self, pos: str) -> tuple[str, ...]:
        return {"verb": self.verbs, "noun": self.nouns, "adjective": self.adjectives}[pos]

    def __len__(self) -> int:
        return len(self.verbs) + len(self.nouns) + len(self.adjectives)

    def all_words(self) -> list[tuple[str, str]]:
        """(word, part of speech) for every entry."""
        return [(w, pos) for pos in POS for w in self.words(pos)]


def parse_vocabulary(text: str, where: str) -> Vocabulary:
    """A vocabulary file's text; `where` names it in errors."""
    found: dict[str, dict[str, None]] = {p: {} for p in POS}   # dicts keep the file's order without repeats
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        tag = _TAGS.get(parts[-1].lower()) if len(parts) >= 2 else None
        if tag is None:
            raise UserError(f"{where}: line {lineno} {line[:60]!r} is not 'word tag' with tag verb, noun or "
                            "adjective; fix the line or remove it")
        found[tag][" ".join(parts[:-1])] = None
    missing = [p for p in POS if not found[p]]
    if missing:
        what = "holds no words" if all(not found[p] for p in POS) else f"has no {' and no '.join(missing)}s"
        raise UserError(f"{where}: {what}; a story needs one verb, one noun and one adjective")
    return Vocabulary(tuple(found["verb"]), tuple(found["noun"]), tuple(found["adjective"]),
                      hashlib.sha256(text.encode("utf-8")).hexdigest(), where)


def read_synth_file(path: str | Path | None, packaged: str, option: str) -> tuple[str, str]:
    """(text, how to name it in errors) of the user's file `path`, or of the packaged `packaged` when None."""
    if path is None:
        text = resources.files("tinystories").joinpath("resources", "synth", packaged).read_text("utf-8")
        return text, f"the packaged {packaged}"
    try:
        return Path(path).read_text("utf-8"), f"{option} {path}"
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise UserError(f"{option} {path}: cannot read it ({why})") from None


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """`path`, or the packaged list when None."""
    return parse_vocabulary(*read_synth_file(path, DEFAULT_VOCAB, "--vocab"))
