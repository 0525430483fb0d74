"""The resumable `synth` run: draw, ask, check, append; until --n stories are kept or a budget would be spent.

Files, for `--out OUT`:
  OUT                   the kept records, one JSON object a line, appended as each story finishes (jsonl);
                        with --format txt, OUT is the official `<|endoftext|>` text, written whole at the end,
                        and the records go to OUT.records.jsonl
  OUT.rejects.jsonl     rejected stories with the reason
  OUT.calls.jsonl       every reply paid for (llm.cache.JsonlCache), written the moment it arrives: a run
                        killed between a reply and its record asks for nothing again
  OUT.synth.json        the settings that decide what is drawn and asked; a rerun with the same ones resumes
  OUT.report.md/.json   the final table and the diversity report

Story i asks for `draw(vocab, seed, i)`; indices already recorded (kept or rejected) are skipped on resume, and
no more calls are in flight than stories still missing, so a run ends with exactly --n kept.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ...errors import UserError
from ...llm.cache import JsonlCache, key
from ...llm.client import ChatClient
from ...llm.config import LLMConfig
from ...runtime.console import progress
from ...runtime.files import (
    atomic_write_json,
    atomic_write_text,
    check_apart,
    fsync_dir,
)
from ..instruct.records import EOT, format_record
from ..sources import story_hash
from .draw import Draw, draw, instruct_record
from .gates import GateConfig, check, clean_reply, is_refusal
from .prompts import Template, load_template
from .report import build_report, markdown
from .vocab import Vocabulary, load_vocabulary


@dataclass
class SynthConfig:
    """What `tinystories synth` does: its fields are the verb's flags (cli/synth.py), and the Python API."""

    out: str
    """the corpus to write: .jsonl records, or the official txt with --format txt"""
    n: int
    """stories to keep"""
    model: str
    """the model name to ask the server for"""
    seed: int = 0
    """seed of the draws: story i asks for what (seed, i) draws"""
    format: Literal["jsonl", "txt"] = "jsonl"
    """jsonl: one record a line (story, words and features asked, model, template hash, seed, token usage);
    txt: the official <|endoftext|> format. Both go into `prepare`"""
    instruct: bool = False
    """also ask for a 1-2 line summary and write TinyStories-Instruct records (paper section 2.1)"""
    vocab: str | None = None
    """word list, one 'word verb|noun|adjective' a line, any language (default: the packaged 1,500 words)"""
    template: str | None = None
    """prompt template (YAML): copy tinystories/resources/synth/template.yaml and edit it"""
    language: str | None = None
    """the template's {language} (default: the template's own)"""
    feature_prob: float = 1 / 3
    """chance that each of the paper's six features is asked for"""
    temperature: float = 1.0
    """sampling temperature of the story requests"""
    story_tokens: int = 1000
    """max_tokens of one story request"""
    min_words: int = 60
    """shorter stories are rejected"""
    max_words: int = 1000
    """longer stories are rejected"""
    check_words: bool = True
    """reject a story that does not use the three words; the matcher knows English inflections (run: ran,
    running), so for another language --no-check-words keeps stories that inflect them"""
    max_tokens: int | None = None
    """stop before the corpus's tokens (prompt + completion, as the server reports them) would pass this"""
    max_cost: float | None = None
    """stop before the corpus's cost would pass this (needs --price-in and --price-out)"""
    price_in: float | None = None
    """price per million prompt tokens"""
    price_out: float | None = None
    """price per million completion tokens"""
    report_sample: int = 200
    """stories compared pairwise for the Rouge-2 self-similarity"""
    force: bool = False
    """start over: replace --out and its side files"""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """the server that writes the stories (url, key, concurrency, timeout, retries)"""

    def settings(self, vocab: Vocabulary, template: Template) -> dict:
        """What decides the draws and the prompts: a resumed run must match it."""
        return {"kind": "tinystories-synth", "version": 1, "model": self.model, "seed": self.seed,
                "vocab_sha256": vocab.sha256, "template_sha256": template.sha256,
                "language": self.language or template.language, "instruct": self.instruct, "format": self.format,
                "feature_prob": self.feature_prob, "temperature": self.temperature,
                "story_tokens": self.story_tokens, "min_words": self.min_words, "max_words": self.max_words,
                "check_words": self.check_words}


@dataclass(frozen=True)
class Paths:
    out: Path
    records: Path
    rejects: Path
    calls: Path
    manifest: Path
    report_md: Path
    report_json: Path

    @classmethod
    def of(cls, out: str | Path, fmt: str) -> Paths:
        out = Path(out)
        side = lambda s: out.with_name(out.name + s)
        return cls(out, out if fmt == "jsonl" else side(".records.jsonl"), side(".rejects.jsonl"),
                   side(".calls.jsonl"), side(".synth.json"), side(".report.md"), side(".report.json"))

    def written(self) -> list[Path]:
        return [self.out, self.records, self.rejects, self.calls, self.manifest, self.report_md, self.report_json]


@dataclass
class Tally:
    """What the output files hold, loaded on resume and updated as results come in."""

    done: set = field(default_factory=set)          # indices recorded, kept or rejected
    hashes: set = field(default_factory=set)        # story hashes of kept stories (exact duplicates)
    kept: int = 0
    rejected: dict = field(default_factory=dict)    # reason -> count
    tokens: list = field(default_factory=lambda: [0, 0])   # prompt, completion tokens of the recorded stories
    new_tokens: int = 0                             # paid for in this run

    def add(self, rec: dict, kept: bool) -> None:
        self.done.add(rec["index"])
        u = rec.get("usage") or {}
        self.tokens[0] += u.get("prompt_tokens", 0)
        self.tokens[1] += u.get("completion_tokens", 0)
        if kept:
            self.kept += 1
            self.hashes.add(story_hash(rec["story"]))
        else:
            self.rejected[rec["reason"]] = self.rejected.get(rec["reason"], 0) + 1


# ---------------------------------------------------------------- ledger files

def cut_torn_tail(path: Path) -> None:
    """A torn last line (a kill mid-write) is cut off, so the next append starts on a clean line; its story is
    redone from the calls cache, not paid again."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        size = f.seek(0, os.SEEK_END)
        block = 1 << 16
        while size > 0:                 # find the last newline, reading backwards
            start = max(0, size - block)
            f.seek(start)
            at = f.read(size - start).rfind(b"\n")
            if at >= 0:
                f.truncate(start + at + 1)
                return
            size = start
        f.truncate(0)


def iter_ledger(path: Path) -> Iterator[dict]:
    """The records of an append-only JSONL file, streamed (after `cut_torn_tail`)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                rec["index"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}: line {lineno} is not a synth record; pass --force to start over") from None
            yield rec


def read_ledger(path: Path) -> list[dict]:
    cut_torn_tail(path)
    return list(iter_ledger(path))


def write_txt(records: Path, out: Path) -> None:
    """The official txt (each text, then an <|endoftext|> line) in index order, whatever order the stories
    finished in; only (index, offset) pairs are held in memory."""
    offsets = []
    with open(records, "rb") as f:
        pos = 0
        for line in f:
            offsets.append((json.loads(line)["index"], pos))
            pos += len(line)
        offsets.sort()
        # .NAME.PID.XXXXXXXX.tmp: the name `tinystories clean` knows a killed writer's leftovers by
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as w:
                for _, at in offsets:
                    f.seek(at)
                    w.write(json.loads(f.readline())["text"] + f"\n{EOT}\n")
                w.flush()
                os.fsync(w.fileno())
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
    fsync_dir(out.parent)


def append_line(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- the run

class _Budget:
    """--max-tokens / --max-cost: a new story starts only if the spend so far plus what the stories in flight and
    it are expected to cost (the mean of the stories so far) stays within the budget."""

    def __init__(self, cfg: SynthConfig, spent: tuple[int, int]):
        self.cfg, self.prompt, self.completion = cfg, *spent
        self.active = cfg.max_tokens is not None or cfg.max_cost is not None

    def add(self, prompt: int, completion: int) -> None:
        self.prompt += prompt
        self.completion += completion

    def cost(self, prompt: float, completion: float) -> float:
        return (prompt * (self.cfg.price_in or 0) + completion * (self.cfg.price_out or 0)) / 1e6

    def allows(self, in_flight: int, tally: Tally) -> bool:
        if not self.active:
            return True
        if not tally.done:
            return in_flight == 0       # learn what a story costs from the first one
        p, c = (t / len(tally.done) for t in tally.tokens)
        k = in_flight + 1
        if self.cfg.max_tokens is not None and self.prompt + self.completion + k * (p + c) > self.cfg.max_tokens:
            return False
        return self.cfg.max_cost is None or self.cost(self.prompt + k * p, self.completion + k * c) <= self.cfg.max_cost

    def stop_message(self, kept: int, n: int) -> str:
        spent = f"{self.prompt + self.completion:,} tokens"
        if self.cfg.max_cost is not None:
            spent += f", cost {self.cost(self.prompt, self.completion):.4f}"
        which = f"--max-tokens {self.cfg.max_tokens:,}" if self.cfg.max_tokens is not None else \
            f"--max-cost {self.cfg.max_cost:g}"
        return (f"{which} would be exceeded by the next story ({spent} spent); {kept} of {n} stories kept; "
                "raise the budget and rerun the same command to continue")


def validate(cfg: SynthConfig) -> tuple[Vocabulary, Template]:
    """Every check that needs no server, before anything is written."""
    if cfg.n < 1:
        raise UserError(f"--n {cfg.n}: give the number of stories to keep (at least 1)")
    if cfg.format not in ("jsonl", "txt"):
        raise UserError(f"--format {cfg.format!r}: choose jsonl or txt")
    for name, v in (("--concurrency", cfg.llm.concurrency), ("--story-tokens", cfg.story_tokens),
                    ("--min-words", cfg.min_words)):
        if v < 1:
            raise UserError(f"{name} {v}: must be at least 1")
    if cfg.max_words < cfg.min_words:
        raise UserError(f"--max-words {cfg.max_words} is below --min-words {cfg.min_words}")
    if not 0 <= cfg.feature_prob <= 1:
        raise UserError(f"--feature-prob {cfg.feature_prob}: must be between 0 and 1")
    if not 0 <= cfg.temperature < float("inf"):  # NaN fails too
        raise UserError(f"--temperature {cfg.temperature}: must be a finite number, 0 or more")
    if cfg.max_tokens is not None and cfg.max_tokens < 1:
        raise UserError(f"--max-tokens {cfg.max_tokens}: must be a positive number of tokens")
    if cfg.max_cost is not None and (cfg.price_in is None or cfg.price_out is None):
        raise UserError("--max-cost needs --price-in and --price-out (the price per million prompt and "
                        "completion tokens)")
    for name, v in (("--max-cost", cfg.max_cost), ("--price-in", cfg.price_in), ("--price-out", cfg.price_out)):
        if v is not None and v < 0:
            raise UserError(f"{name} {v}: must not be negative")
    out = Path(cfg.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name")
    check_apart(out, [cfg.vocab, cfg.template])
    return load_vocabulary(cfg.vocab), load_template(cfg.template)


def _check_resume(cfg: SynthConfig, paths: Paths, settings: dict) -> None:
    if cfg.force:
        return
    if paths.manifest.exists():
        try:
            old = json.loads(paths.manifest.read_text("utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{paths.manifest}: unreadable; pass --force to start over") from None
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            k = diff[0]
            raise UserError(f"--out {paths.out} was started with {k}={old.get(k)!r}, not {settings[k]!r}; rerun with "
                            "the same settings to resume, or pass --force to start over")
    elif any(p.exists() for p in (paths.out, paths.records, paths.rejects)):
        raise UserError(f"--out {paths.out} already exists and is not a synth run; pass --force to replace it")


def run(cfg: SynthConfig, similarity: Callable[[list[str]], list[float]] | None = None) -> dict:
    """Generate until `cfg.n` stories are kept; returns the report (also written to OUT.report.md/.json).

    `similarity(stories)` gives each story's max Rouge-2 F against the others (evaluate/diversity.py's; data/
    may not import evaluate, so the caller passes it in)."""
    vocab, template = validate(cfg)
    paths = Paths.of(cfg.out, cfg.format)
    settings = cfg.settings(vocab, template)
    _check_resume(cfg, paths, settings)
    client = cfg.llm.client(cfg.model, what="LLM")
    calls = JsonlCache(None if cfg.force else paths.calls)
    tally = Tally()
    if not cfg.force:
        for path, kept in ((paths.records, True), (paths.rejects, False)):
            cut_torn_tail(path)
            for rec in iter_ledger(path):
                tally.add(rec, kept)
    # The spend so far is what the recorded stories cost; a story whose replies are cached but not yet
    # recorded (a kill in between) adds its cost when it is recorded.
    budget = _Budget(cfg, (tally.tokens[0], tally.tokens[1]))
    job = _Job(cfg, vocab, template, client, calls, settings)

    def begin_writing() -> None:
        # Nothing is written (and with --force nothing is removed) before the first reply came back well.
        if cfg.force:
            for p in paths.written():
                p.unlink(missing_ok=True)
            calls.path = paths.calls
        paths.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(paths.manifest, settings)

    stopped = _loop(cfg, job, tally, budget, paths, begin_writing)
    if paths.manifest.exists():
        if cfg.format == "txt":
            write_txt(paths.records, paths.out)
        report = build_report(iter_ledger(paths.records), iter_ledger(paths.rejects), vocab, client, budget,
                              cfg, similarity)
        atomic_write_json(paths.report_json, report)
        atomic_write_text(paths.report_md, markdown(report))
    else:
        report = build_report([], [], vocab, client, budget, cfg, similarity)
    report["stopped"] = stopped
    return report


def _loop(cfg: SynthConfig, job: _Job, tally: Tally, budget: _Budget, paths: Paths,
          begin_writing: Callable[[], None]) -> str | None:
    """Keep cfg.concurrency stories in flight, never more than are still missing; record each as it finishes.
    Returns None when --n stories are kept, else the budget message. A UserError from a call stops new work;
    the calls in flight finish and are recorded, then it is raised."""
    indices = (i for i in itertools.count() if i not in tally.done)
    pending: dict[Future, int] = {}
    error: BaseException | None = None
    begun = False
    t0, rejected0 = time.monotonic(), sum(tally.rejected.values())
    pool = ThreadPoolExecutor(max_workers=cfg.llm.concurrency)
    bar = progress(total=cfg.n, initial=min(tally.kept, cfg.n), desc="synth", unit="story")
    try:
        while True:
            while (error is None and tally.kept + len(pending) < cfg.n and len(pending) < cfg.llm.concurrency
                   and budget.allows(len(pending), tally)):
                i = next(indices)
                pending[pool.submit(job, i)] = i
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                pending.pop(fut)
                if fut.exception() is not None:
                    error = error or fut.exception()
                    continue
                rec, paid = fut.result()
                if not begun:
                    begin_writing()
                    begun = True
                _record(rec, paid, tally, budget, paths)
                bar.update(1 if "reason" not in rec else 0)
                rate = tally.new_tokens / max(1e-9, time.monotonic() - t0)
                bar.set_postfix_str(f"{rate:,.0f} tok/s, {sum(tally.rejected.values()) - rejected0} rejected",
                                    refresh=False)
        if error is not None:
            raise error
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return None if tally.kept >= cfg.n else budget.stop_message(tally.kept, cfg.n)


def _record(rec: dict, paid: tuple[int, int], tally: Tally, budget: _Budget, paths: Paths) -> None:
    """Append one finished story to the records or the rejects (an exact duplicate of a kept one is a reject)."""
    if "reason" not in rec and story_hash(rec["story"]) in tally.hashes:
        rec = {k: v for k, v in rec.items() if k not in ("text", "instruct", "summary")} | {"reason": "duplicate"}
    kept = "reason" not in rec
    append_line(paths.records if kept else paths.rejects, rec)
    tally.add(rec, kept)
    budget.add(rec["usage"]["prompt_tokens"], rec["usage"]["completion_tokens"])
    tally.new_tokens += sum(paid)


class _Job:
    """One story, end to end (runs on a worker thread): draw, ask, check, and with --instruct summarize."""

    def __init__(self, cfg: SynthConfig, vocab: Vocabulary, template: Template, client: ChatClient,
                 calls: JsonlCache, settings: dict):
        self.cfg, self.vocab, self.template, self.client, self.calls = cfg, vocab, template, client, calls
        self.gates = GateConfig(min_words=cfg.min_words, max_words=cfg.max_words, check_words=cfg.check_words)
        self.meta = {"model": cfg.model, "seed": cfg.seed, "template_sha256": settings["template_sha256"],
                     "vocab_sha256": settings["vocab_sha256"], "language": settings["language"]}

    def _call(self, kind: str, index: int, prompt: str, **params) -> tuple[dict, bool]:
        """A reply from the calls cache, or paid for now and cached at once; (reply, paid now)."""
        k = key("synth", kind, self.cfg.seed, index, self.cfg.model, prompt, params)
        got = self.calls.get(k)
        if got is not None:
            return got, False
        r = self.client.chat(prompt, **params)
        got = {"text": r.text, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
               "finish_reason": r.finish_reason}
        self.calls.put(k, got)
        if r.total_tokens == 0 and (self.cfg.max_tokens is not None or self.cfg.max_cost is not None):
            raise UserError(f"LLM at {self.client.url} reports no token usage, so --max-tokens/--max-cost cannot "
                            "be kept; drop the budget, or use a server that returns 'usage'")
        return got, True

    def __call__(self, index: int) -> tuple[dict, tuple[int, int]]:
        cfg = self.cfg
        d: Draw = draw(self.vocab, cfg.seed, index, cfg.feature_prob)
        prompt = self.template.story_prompt(*d.words, list(d.features), cfg.language)
        rep, paid = self._call("story", index, prompt, temperature=cfg.temperature, max_tokens=cfg.story_tokens)
        replies = [(rep, paid)]
        story = clean_reply(rep["text"])
        reason, missing = check(story, d.words, self.gates, rep.get("finish_reason"))
        rec = {"index": index, "story": story, "words": {"verb": d.verb, "noun": d.noun, "adjective": d.adjective},
               "features": list(d.features), **self.meta, "prompt": prompt}
        if reason is None and cfg.instruct:
            srep, spaid = self._call("summary", index, self.template.summary_prompt(story), temperature=0.0,
                                     max_tokens=200)
            replies.append((srep, spaid))
            summary = " ".join(srep["text"].split())
            if not summary or is_refusal(summary):
                reason = "bad_summary"
            else:
                rec["summary"] = summary
                rec["instruct"] = format_record(instruct_record(d, story, summary, cfg.seed))
        rec["usage"] = {"prompt_tokens": sum(r["prompt_tokens"] for r, _ in replies),
                        "completion_tokens": sum(r["completion_tokens"] for r, _ in replies)}
        if reason is not None:
            rec["reason"] = reason
            if missing:
                rec["missing"] = missing
        else:
            rec = {"index": index, "text": rec.get("instruct", story), **{k: v for k, v in rec.items() if k != "index"}}
        paid_now = (sum(r["prompt_tokens"] for r, p in replies if p), sum(r["completion_tokens"] for r, p in replies if p))
        return rec, paid_now
