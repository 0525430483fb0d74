"""Instruction following (paper sections 3 and 4.3): how well a model writes stories to order.

For each instruction set (default: our 50, `resources/instruct_eval.txt`) the model writes N stories.
Each story is scored with the adherence metrics of `tinystories.instruct` (share of required words
used, inflections counting; required sentence present; detectable features present) and, with a
judge configured, graded by an LLM on the paper's Figure 5 exercise: grammar, creativity, consistency
with the instructions and plot (template: resources/instruct_judge.yaml).

The prompt is the set's instruction lines followed by `Story:` (and the set's story start, if it has
one). With `plain=True` the prompt is the story start alone, no instructions: the baseline for a
model trained on plain stories, scored against the same instructions.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import instruct
from ..errors import UserError
from ..utils import progress
from .common import check_model_dir, fmt, mean_ci, model_fingerprint, report_dir, write_report

JUDGE_TEMPLATE = "instruct_judge.yaml"


@dataclass
class InstructEvalConfig:
    model_dir: str
    instructions: str | None = None     # None: the packaged 50 sets
    plain: bool = False                 # prompt with the story start only (the plain-model baseline)
    samples: int = 10                   # stories per instruction set (GPT-Eval's 10)
    temperature: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 300
    seed: int = 0
    limit: int | None = None            # only the first N sets
    batch_size: int = 32
    judge_model: str | None = None      # None: no judge, adherence metrics only
    judge_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    template: str | None = None         # None: the packaged instruct template
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 5
    parse_retries: int = 2
    cache: str | None = None            # None: <cache dir>/instruct-eval.jsonl; "" disables the cache
    out: str | None = None              # None: MODEL_DIR/eval
    device: str = "auto"


def set_seed(seed: int, prompt: str) -> int:
    """A seed per instruction set, from the run's seed and the prompt, so a set's stories do not depend
    on the other sets in the run."""
    return (seed * 1_000_003 + int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)) % 2**31


def write_stories(cfg: InstructEvalConfig, model_dir: Path, prompts: list[str]) -> list[list[str]]:
    """`cfg.samples` completions per prompt."""
    from ..generate import generate
    from ..modeldir import load_model
    from ..utils import resolve_device

    model, tok = load_model(model_dir, resolve_device(cfg.device))
    out = []
    for prompt in progress(prompts, desc="writing stories", unit="set"):
        [samples] = generate(model, tok, [prompt], max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             top_k=cfg.top_k, num_samples=cfg.samples, seed=set_seed(cfg.seed, prompt),
                             batch_size=cfg.batch_size)
        out.append([s.text for s in samples])
    return out


def evaluate_instruct(cfg: InstructEvalConfig) -> dict:
    """Run the evaluation; write instruct.json and instruct.md into the report dir and return the report."""
    model_dir = check_model_dir(cfg.model_dir)
    if cfg.samples < 1:
        raise UserError(f"--samples must be at least 1, got {cfg.samples}")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError(f"--limit must be at least 1, got {cfg.limit}")
    sets = instruct.load_instructions(cfg.instructions)[:cfg.limit]
    judge = _judge(cfg) if cfg.judge_model else None     # a bad template fails before any generation
    weights = model_fingerprint(model_dir)

    prompts = [instruct.eval_prompt(s, cfg.plain) for s in sets]
    texts = write_stories(cfg, model_dir, prompts)

    per_set = []
    for s, prompt, completions in zip(sets, prompts, texts):
        start = s.story.strip()
        stories = [(start + c if start else c).strip() for c in completions]
        per_set.append({"instructions": instruct.format_instructions(s).strip(), "prompt": prompt,
                        "stories": [{"text": t, **instruct.adherence(s, t).to_dict()} for t in stories]})

    judge_info = None
    if judge is not None:
        items, where = [], []
        for i, (s, row) in enumerate(zip(sets, per_set)):
            for j, st in enumerate(row["stories"]):
                items.append({"exercise": instruct.exercise_text(s), "story": st["text"]})
                where.append((i, j))
        with progress(total=len(items), desc="judging", unit="story") as bar:
            judgments = judge.judge_many(items, context=weights, on_done=bar.update)
        for (i, j), jd in zip(where, judgments):
            per_set[i]["stories"][j].update({"judged": jd.ok, "grades": jd.grades, "age_group": jd.age_group,
                                             "assessment": jd.assessment})
        judge_info = {"url": judge.client.url, "model": cfg.judge_model, "template": judge.template.name,
                      "template_sha": judge.template.fingerprint, "params": judge.params,
                      "requests_sent": judge.client.requests_sent}

    report = {
        "kind": "instruct",
        "model": {"dir": str(model_dir), "weights_sha256": weights},
        "settings": {**{k: v for k, v in asdict(cfg).items()
                        if k in ("plain", "samples", "temperature", "top_k", "max_new_tokens", "seed", "limit")},
                     "instructions": cfg.instructions or f"packaged:{instruct.EVAL_SET_FILE}"},
        "judge": judge_info,
        "summary": summarize(per_set, judge.template.categories if judge else []),
        "sets": per_set,
    }
    write_report(report_dir(model_dir, cfg.out), "instruct", report, markdown(report))
    return report


def _judge(cfg: InstructEvalConfig):
    from importlib import resources

    from ..llm import ChatClient
    from .cache import JsonlCache, default_cache_dir
    from .judge import Judge, JudgeTemplate

    if cfg.template is None:
        path = resources.files("tinystories").joinpath("resources", JUDGE_TEMPLATE)
        template = JudgeTemplate.load(str(path))
    else:
        template = JudgeTemplate.load(cfg.template)
    cache_path = None if cfg.cache == "" else Path(cfg.cache or default_cache_dir() / "instruct-eval.jsonl")
    client = ChatClient(cfg.judge_url, cfg.judge_model, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                        max_retries=cfg.max_retries, concurrency=cfg.concurrency, what="judge")
    return Judge(client, template, JsonlCache(cache_path), parse_retries=cfg.parse_retries)


def summarize(per_set: list[dict], categories: list[str]) -> dict:
    """Means over all stories, with 95% intervals that resample instruction sets (a set's stories share a prompt)."""
    def groups(fn):
        return [[v for st in row["stories"] if (v := fn(st)) is not None] for row in per_set]

    out = {
        "word_share": mean_ci(groups(lambda st: st["word_share"])),
        "all_words_used": mean_ci(groups(lambda st: None if st["word_share"] is None
                                         else float(st["word_share"] == 1.0))),
        "sentence_present": mean_ci(groups(lambda st: None if st["sentence_present"] is None
                                           else float(st["sentence_present"]))),
        "feature_share": mean_ci(groups(lambda st: st["feature_share"])),
    }
    for cat in categories:
        out[f"judge_{cat}"] = mean_ci(groups(lambda st: st["grades"].get(cat) if st.get("judged") else None))
    if categories:
        out["judge_unparseable"] = sum(not st.get("judged") for row in per_set for st in row["stories"])
    return out


LABELS = {"word_share": "required words used", "all_words_used": "all required words used",
          "sentence_present": "required sentence present", "feature_share": "detectable features present"}


def markdown(report: dict) -> str:
    st, s = report["settings"], report["summary"]
    mode = "story start only (--plain)" if st["plain"] else "instruction lines + `Story:`"
    lines = [f"# Instruction following: {report['model']['dir']}", "",
             f"{len(report['sets'])} instruction sets ({st['instructions']}) x {st['samples']} stories at "
             f"temperature {st['temperature']}; prompt: {mode}.", "",
             "| metric | mean | 95% interval | n |", "|---|---|---|---|"]
    for k, v in s.items():
        if isinstance(v, dict):
            lines.append(f"| {LABELS.get(k, k.replace('judge_', 'judge: '))} | {fmt(v['mean'], 3)} | "
                         f"{fmt(v['ci95'][0], 3)} - {fmt(v['ci95'][1], 3)} | {v['n']} |")
    for i, row in enumerate(report["sets"], 1):
        lines += ["", f"## Set {i}", "", "```", row["instructions"], "```", ""]
        for story in row["stories"]:
            marks = []
            if story["word_share"] is not None:
                marks.append(f"words {len(story['words_used'])}/{len(story['words_used']) + len(story['words_missing'])}")
            if story["sentence_present"] is not None:
                marks.append("sentence " + ("yes" if story["sentence_present"] else "no"))
            marks += [f"{f} {'yes' if ok else 'no'}" for f, ok in story["features"].items()]
            if story.get("judged"):
                marks.append(", ".join(f"{k} {v:g}" for k, v in story["grades"].items()))
            lines.append(f"- *{'; '.join(marks)}*: {' '.join(story['text'].split())}")
    return "\n".join(lines) + "\n"
