"""An LLM judge: a replaceable conversation template, robust grade parsing, cached concurrent grading.

GPT-Eval (paper section 3) and the Instruct evaluation both use it, each with its own template file:
the template says the turns to send, the category names to read from the last reply, the scale, and
the age groups. One judgment is one conversation: every turn is sent in order with the judge's
earlier replies kept, then the grades are read from the last reply. A reply without readable grades
gets a reminder turn (up to `parse_retries` times); if it still cannot be read the judgment is kept
with ok=False, counted and reported, never dropped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

from ..errors import UserError
from .client import ChatClient
from .cache import JsonlCache, key

DEFAULT_TEMPLATE = "gpt_eval_judge.yaml"


@dataclass
class JudgeTemplate:
    name: str
    turns: list[str]
    categories: list[str]
    scale: float = 10
    age_groups: dict[str, str] = field(default_factory=dict)
    separator: str = "***"
    system: str | None = None
    format_reminder: str = ""
    source: str = ""          # the file's full text: its hash is part of every cache key

    @classmethod
    def load(cls, path: str | Path | None = None) -> "JudgeTemplate":
        """A template file, or the packaged GPT-Eval one (resources/gpt_eval_judge.yaml) when `path` is None."""
        if path is None:
            text = resources.files("tinystories").joinpath("resources", DEFAULT_TEMPLATE).read_text("utf-8")
            where = DEFAULT_TEMPLATE
        else:
            where = str(path)
            try:
                text = Path(path).read_text("utf-8")
            except OSError as e:
                raise UserError(f"--template {path}: cannot read it ({e.strerror})") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"--template {where}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict) or not raw.get("turns") or not raw.get("categories"):
            raise UserError(f"--template {where}: needs a 'turns' list and a 'categories' list")
        turns, cats = raw["turns"], raw["categories"]
        if not all(isinstance(t, str) for t in turns) or not all(isinstance(c, str) for c in cats):
            raise UserError(f"--template {where}: 'turns' and 'categories' must be lists of strings")
        return cls(name=str(raw.get("name", Path(where).stem)), turns=turns, categories=[c.lower() for c in cats],
                   scale=float(raw.get("scale", 10)), age_groups={str(k): str(v) for k, v in
                                                                  (raw.get("age_groups") or {}).items()},
                   separator=str(raw.get("separator", "***")), system=raw.get("system"),
                   format_reminder=str(raw.get("format_reminder") or ""), source=text)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()[:16]

    def fill(self, text: str, fields: dict[str, str]) -> str:
        """Replace {name} placeholders by plain substitution (stories may hold braces of their own)."""
        values = {"separator": self.separator, "categories": ", ".join(self.categories), **fields}
        for k, v in values.items():
            text = text.replace("{" + k + "}", str(v))
        return text.strip()


@dataclass
class Judgment:
    ok: bool                         # grades (and the age group, if asked for) were read
    grades: dict[str, float]         # category -> grade on the template's scale; empty if not ok
    age_group: str | None
    replies: list[str]               # every reply, in order (the first is the free assessment)
    requests: int = 0                # chat requests this judgment took (retries for format included)

    @property
    def assessment(self) -> str:
        return self.replies[0] if self.replies else ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Judgment":
        return cls(**d)


# ------------------------------------------------------------------ parsing

_NUM = r"(\d+(?:\.\d+)?)"
_GAP = r"[\s*_:=\-–—(\[]*"   # markdown bold, colons, dashes or a bracket between a name and its value


def parse_grades(reply: str, categories: list[str], scale: float = 10,
                 age_groups: dict[str, str] | None = None) -> tuple[dict[str, float], str | None] | None:
    """Read 'Grammar: 8/10, ... Age group: E' from a reply; None unless every category (and age) is found.

    Tolerates markdown (**Grammar**: 8/10), 'out of 10', '8 / 10', decimals, any case and order, and a
    different denominator ('4/5' on a 10 scale is 8). Where a category appears more than once the last
    explicit 'N/D' wins (judges restate the final grade last). Grades outside [0, scale] do not count.
    """
    grades: dict[str, float] = {}
    for cat in categories:
        # up to four words between the name and the grade: "Consistency with the beginning: 7/10"
        pat = re.compile(rf"\b{re.escape(cat)}\w*(?:[ \t]+[A-Za-z'’]+){{0,4}}?{_GAP}{_NUM}"
                         rf"(?:\s*(?:/|out\s+of)\s*{_NUM})?", re.IGNORECASE)
        found = []
        for m in pat.finditer(reply):
            value, denom = float(m.group(1)), (float(m.group(2)) if m.group(2) else None)
            if denom == 0:
                continue
            if denom is not None and denom != scale:
                value = value * scale / denom
            if 0 <= value <= scale:
                found.append((denom is not None, m.start(), value))
        if not found:
            return None
        grades[cat] = max(found)[2]
    age = None
    if age_groups:
        letters = "".join(re.escape(k) for k in age_groups)
        m = None
        for m in re.finditer(rf"\bage(?:\s*group)?{_GAP}([{letters}])\b", reply, re.IGNORECASE):
            pass
        if m is not None and m.group(1).upper() in age_groups:
            age = m.group(1).upper()
        else:  # 'Age group: 10-12' without the letter
            for letter, span in age_groups.items():
                if re.search(rf"\bage\b[^\n]*?{re.escape(span)}", reply, re.IGNORECASE):
                    age = letter
        if age is None:
            return None
    return grades, age


# ------------------------------------------------------------------ the judge

class Judge:
    """Grades items (dicts of template fields) with an LLM, caching each finished judgment.

    client         a `ChatClient` (model, URL, retries, concurrency).
    template       a `JudgeTemplate`.
    cache          a `JsonlCache`; a judgment is stored as soon as it is finished.
    params         request parameters (default temperature 0 for repeatable grades).
    parse_retries  reminder turns sent after a reply without readable grades.
    """

    def __init__(self, client: ChatClient, template: JudgeTemplate, cache: JsonlCache | None = None, *,
                 params: dict | None = None, parse_retries: int = 2):
        self.client, self.template = client, template
        self.cache = cache if cache is not None else JsonlCache(None)
        self.params = {"temperature": 0.0, **(params or {})}
        self.parse_retries = parse_retries

    def cache_key(self, fields: dict[str, str], context: object = None) -> str:
        """Everything that decides a judgment: judge model, template, params, the item and the caller's context
        (GPT-Eval passes the evaluated model's weights hash)."""
        return key("judgment", self.client.model, self.template.fingerprint, self.params, fields, context)

    def judge(self, fields: dict[str, str]) -> Judgment:
        """One conversation, uncached."""
        t = self.template
        messages = [{"role": "system", "content": t.system}] if t.system else []
        replies: list[str] = []
        requests = 0
        for turn in t.turns:
            messages.append({"role": "user", "content": t.fill(turn, fields)})
            reply = self.client.complete(messages, **self.params)
            requests += 1
            replies.append(reply)
            messages.append({"role": "assistant", "content": reply})
        for attempt in range(self.parse_retries + 1):
            parsed = parse_grades(replies[-1], t.categories, t.scale, t.age_groups)
            if parsed is not None:
                return Judgment(True, parsed[0], parsed[1], replies, requests)
            if attempt == self.parse_retries or not t.format_reminder:
                break
            messages.append({"role": "user", "content": t.fill(t.format_reminder, fields)})
            reply = self.client.complete(messages, **self.params)
            requests += 1
            replies.append(reply)
            messages.append({"role": "assistant", "content": reply})
        return Judgment(False, {}, None, replies, requests)

    def judge_many(self, items: list[dict[str, str]], context: object = None,
                   on_done: Callable[[int], None] | None = None) -> list[Judgment]:
        """Judgments for all items, in order: cached ones at once, the rest concurrently.

        Each finished judgment is cached before the next is awaited, so if the judge fails for good
        (a UserError after retries) everything already graded survives for the next run.
        `on_done(n)` is called as judgments finish (for a progress bar).
        """
        out: list[Judgment | None] = [None] * len(items)
        todo = []
        for i, fields in enumerate(items):
            hit = self.cache.get(self.cache_key(fields, context))
            if hit is not None:
                out[i] = Judgment.from_dict(hit)
                if on_done:
                    on_done(1)
            else:
                todo.append(i)
        for j, judgment in self.client.map(lambda i: self.judge(items[i]), todo):
            i = todo[j]
            self.cache.put(self.cache_key(items[i], context), judgment.to_dict())
            out[i] = judgment
            if on_done:
                on_done(1)
        return out  # type: ignore[return-value]
