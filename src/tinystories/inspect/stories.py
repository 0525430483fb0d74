"""The held-out stories both verbs read, and how a story becomes the model's input."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError


def default_source(model_dir: str | Path) -> str | None:
    """The validation split of the DATA_DIR a run was trained on (train_config.json's "data"), if any."""
    from ..data.prepare import is_data_dir

    cfg = Path(model_dir) / "train_config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text()).get("data")
    except (ValueError, UnicodeDecodeError):
        return None
    return data if data and is_data_dir(data) else None


def held_out_stories(model_dir: str | Path, source: str | None, n: int) -> tuple[str, list[str]]:
    """(where they came from, the first `n` stories) of `source`: a DATA_DIR (its val split) or any
    SOURCE `prepare` reads. Without `source`, the run's own DATA_DIR's val split."""
    from ..data.prepare import is_data_dir, load_data_dir
    from ..data.sources import iter_stories

    if n < 1:
        raise UserError(f"--stories must be at least 1, got {n}")
    if source is None:
        source = default_source(model_dir)
        if source is None:
            raise UserError(f"{model_dir}: no training DATA_DIR recorded (train_config.json); "
                            "pass --data STORIES (a DATA_DIR or a .txt/.json/.jsonl file of held-out stories)")
    if is_data_dir(source):
        stories = list(itertools.islice(load_data_dir(source).stories("val"), n))
        return f"{source} (val split)", [s for s in stories if s.strip()]
    return str(source), list(itertools.islice(iter_stories(source, role="val"), n))


def story_ids(tokenizer, story: str, context: int) -> list[int]:
    """<|endoftext|> then the story, cut to the model's context: in training a story follows the
    previous story's end-of-text token, so this is the start the model knows."""
    return ([tokenizer.eot_id] + tokenizer.encode(story))[:context]


def iter_story_ids(tokenizer, stories: list[str], context: int) -> Iterator[list[int]]:
    for s in stories:
        ids = story_ids(tokenizer, s, context)
        if len(ids) > 1:
            yield ids


class TokenText:
    """Each token id's text, decoded once (a byte-level BPE token can be part of a character: then
    the replacement character shows, which is what the model saw)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, i: int) -> str:
        s = self._cache.get(i)
        if s is None:
            s = self._cache[i] = self.tokenizer.decode([int(i)])
        return s
