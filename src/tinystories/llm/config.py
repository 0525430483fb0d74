"""The LLM block: one declaration of how to reach an OpenAI-compatible server, shared by every verb that asks
one (the GPT-Eval and Instruct judges, the Instruct summarizer, synthetic stories).

Each verb's config holds an `LLMConfig` (or a `JudgeConfig`) field; the CLI turns its fields into flags,
named per verb (--judge-url for a judge, --summarizer-url for the summarizer: cli/command.py `view`).
From Python: `GptEvalConfig("runs/8M", "gpt-4o", judge=JudgeConfig(url="http://localhost:11434/v1"))`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPENAI_URL = "https://api.openai.com/v1"


@dataclass(kw_only=True)
class LLMConfig:
    """Where an OpenAI-compatible chat server is, how hard to try it, and where its answers are cached."""
    url: str | None = None
    """OpenAI-compatible API root, e.g. http://localhost:11434/v1 for Ollama (default $TINYSTORIES_JUDGE_URL or OpenAI)"""
    key_env: str = "OPENAI_API_KEY"
    """environment variable holding the API key (unset = no key)"""
    concurrency: int = 8
    """requests in flight"""
    timeout: float = 60.0
    """seconds per request"""
    retries: int = 5
    """retries per request on 429/5xx/timeouts"""
    backoff: float = 1.0
    """seconds before the first retry, doubling"""
    cache: str | None = None
    """answers already paid for (default: a file in ~/.cache/tinystories, or $TINYSTORIES_CACHE)"""
    no_cache: bool = False
    """do not read or write the cache"""

    def __post_init__(self) -> None:
        self.check()

    def flag(self, name: str) -> str:
        """The flag of field `name` as this verb spells it (--judge-url, --llm-url: cli/command.py `view` records
        the renames on the class), so that an error names what the user typed."""
        return "--" + getattr(type(self), "__flag_names__", {}).get(name, name.replace("_", "-"))

    def check(self) -> None:
        """UserError (one line, naming the flag) for a value that would fail later, deep in a socket or a retry
        loop, or after the model has been loaded and run: every verb that asks an LLM gets the same checks."""
        from ..errors import UserError

        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise UserError(f"{self.flag('url')} {self.url}: expected http(s)://host[:port]/v1")
        t = self.timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise UserError(f"{self.flag('timeout')} {t}: expected a positive number of seconds")
        _at_least(self, "concurrency", 1)
        _at_least(self, "retries", 0)
        if not (isinstance(self.backoff, (int, float)) and math.isfinite(self.backoff) and self.backoff >= 0):
            raise UserError(f"{self.flag('backoff')} {self.backoff}: expected seconds, 0 or more")

    def resolved_url(self) -> str:
        return self.url or os.environ.get("TINYSTORIES_JUDGE_URL") or OPENAI_URL

    def cache_file(self, default_name: str) -> Path | None:
        """The cache to use: None when off (no_cache, or cache="" from Python), else cache or the default."""
        from .cache import default_cache_dir

        if self.no_cache or self.cache == "":
            return None
        return Path(self.cache) if self.cache else default_cache_dir() / default_name

    def client_options(self) -> dict[str, Any]:
        """ChatClient's keyword arguments for this block (all but the URL and the model)."""
        return {"api_key_env": self.key_env, "timeout": self.timeout, "max_retries": self.retries,
                "concurrency": self.concurrency, "backoff": self.backoff}

    def client(self, model: str, *, what: str = "LLM", **kw: Any):
        """A ChatClient for `model` on this server."""
        from .client import ChatClient

        return ChatClient(self.resolved_url(), model, what=what, **{**self.client_options(), **kw})


@dataclass(kw_only=True)
class JudgeConfig(LLMConfig):
    """An LLM judge: the server, plus the conversation template and how often to ask again."""
    template: str | None = None
    """judge conversation template (YAML); default: the packaged one for this evaluation"""
    parse_retries: int = 2
    """times to ask again when the grades cannot be read"""

    def check(self) -> None:
        super().check()
        _at_least(self, "parse_retries", 0)


def _at_least(block: LLMConfig, name: str, low: int) -> None:
    from ..errors import UserError

    value = getattr(block, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{block.flag(name)} {value}: expected a whole number, {low} or more")


def flat_keywords(block: str, names: dict[str, str]):
    """Let a config that holds a block in field `block` also take the block's fields as flat keywords
    under their older names (GptEvalConfig(..., judge_url=U, max_retries=3) sets judge.url and
    judge.retries), so that code written before the block existed keeps working."""
    def wrap(cls):
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            moved = {names[k]: kw.pop(k) for k in list(kw) if k in names}
            if moved:
                base = kw.get(block) or _block_type(cls, block)()
                kw[block] = dataclasses.replace(base, **moved)
            init(self, *args, **kw)

        cls.__init__ = __init__
        return cls
    return wrap


def _block_type(cls, name: str) -> type:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return type(f.default_factory())
