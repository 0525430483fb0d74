"""The prompt template of `synth`: a YAML file the user can copy and edit (resources/synth/template.yaml).

The template's full text is hashed; the hash goes with every story, so a corpus says which prompts made it.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from ...errors import UserError
from ..instruct.records import FEATURES
from .vocab import read_synth_file

DEFAULT_TEMPLATE = "template.yaml"
_STORY_NEEDS = ("verb", "noun", "adjective", "features")
_STORY_MAY = ("language",)


@dataclass(frozen=True)
class Template:
    story: str
    summary: str
    features: dict[str, str]
    features_intro: str = " The story should have these features: {list}."
    features_joiner: str = ", "
    language: str = "English"
    sha256: str = ""
    source: str = ""

    def story_prompt(self, verb: str, noun: str, adjective: str, features: list[str],
                     language: str | None = None) -> str:
        listed = self.features_joiner.join(self.features[f] for f in features)
        intro = self.features_intro.format(list=listed) if features else ""
        return self.story.format(verb=verb, noun=noun, adjective=adjective, features=intro,
                                 language=language or self.language).strip()

    def summary_prompt(self, story: str) -> str:
        return self.summary.format(story=story.strip()).strip()


def _fields(text: str, where: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise UserError(f"{where}: {e}; write a literal brace as {{{{ or }}}}") from None


def _check(text: object, key: str, needs: tuple[str, ...], may: tuple[str, ...], where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: needs a '{key}' text")
    got = _fields(text, f"{where}: '{key}'")
    missing = [f for f in needs if f not in got]
    unknown = sorted(got - set(needs) - set(may))
    if missing:
        raise UserError(f"{where}: '{key}' lacks the placeholder(s) {', '.join('{' + m + '}' for m in missing)}")
    if unknown:
        raise UserError(f"{where}: '{key}' has unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                        f"use only {', '.join('{' + f + '}' for f in needs + may)}")
    return text


def parse_template(text: str, where: str) -> Template:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping with 'story', 'summary' and 'features'")
    story = _check(raw.get("story"), "story", _STORY_NEEDS, _STORY_MAY, where)
    summary = _check(raw.get("summary"), "summary", ("story",), (), where)
    feats = raw.get("features")
    if not isinstance(feats, dict) or any(f not in feats or not isinstance(feats[f], str) for f in FEATURES):
        raise UserError(f"{where}: 'features' must give a phrase for each of {', '.join(FEATURES)}")
    intro = raw.get("features_intro", Template.features_intro)
    _check(intro, "features_intro", ("list",), (), where)
    return Template(story=story, summary=summary, features={f: feats[f].strip() for f in FEATURES},
                    features_intro=intro, features_joiner=str(raw.get("features_joiner", ", ")),
                    language=str(raw.get("language") or "English"),
                    sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), source=where)


def load_template(path: str | Path | None = None) -> Template:
    """`path`, or the packaged template when None."""
    return parse_template(*read_synth_file(path, DEFAULT_TEMPLATE, "--template"))
