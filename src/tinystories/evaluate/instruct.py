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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.instruct.evalset import EVAL_SET_FILE, eval_prompt, exercise_text, load_instructions
from ..data.instruct.records import InstructRecord, format_instructions, format_prompt, read_records
from .adherence import adherence
from ..data.instruct.words import lemma
from ..errors import UserError
from ..llm.config import JudgeConfig, flat_keywords
from ..runtime.console import progress
from .common import check_model_dir, fmt, mean_ci, model_fingerprint, report_dir, write_report

JUDGE_TEMPLATE = "instruct_judge.yaml"


@flat_keywords("judge", {"judge_url": "url", "api_key_env": "key_env", "concurrency": "concurrency",
                         "timeout": "timeout", "max_retries": "retries", "backoff": "backoff",
                         "cache": "cache", "template": "template", "parse_retries": "parse_retries"})
@dataclass
class InstructEvalConfig:
    """Instruction following of one model: stories for instruction sets, scored (and judged with judge_model)."""
    model_dir: str
    """run or model directory"""
    instructions: str | None = None
    """instruction sets in the record format, `Story:` optional (default: the packaged 50)"""
    plain: bool = False
    """prompt with each set's story start only, no instruction lines (the plain-model baseline)"""
    samples: int = 10
    """stories per instruction set (GPT-Eval's 10)"""
    temperature: float = 1.0
    """sampling temperature"""
    top_k: int | None = None
    """sample from the K most likely tokens"""
    max_new_tokens: int = 300
    """longest story, in tokens"""
    seed: int = 0
    """seed of the stories"""
    limit: int | None = None
    """only the first N instruction sets"""
    batch_size: int = 32
    """rows decoded at once"""
    judge_model: str | None = None
    """judge model name; without it, only the adherence metrics are computed"""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """the judge's server, template (default: resources/instruct_judge.yaml), retries and cache"""
    out: str | None = None
    """report directory (default MODEL_DIR/eval)"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps"""
    words_probe: str | None = None
    """instruct records the model did not train on (e.g. built from the validation stories): also report how much likelier each story is after its own Words line than after another record's, in nats (against a plain model's number: any model is primed by words in its context)"""


def set_seed(seed: int, prompt: str) -> int:
    """A seed per instruction set, from the run's seed and the prompt, so a set's stories do not depend
    on the other sets in the run."""
    return (seed * 1_000_003 + int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)) % 2**31


def write_stories(cfg: InstructEvalConfig, model, tok, prompts: list[str]) -> list[list[str]]:
    """`cfg.samples` completions per prompt."""
    from ..generate.sampling import generate

    out = []
    for prompt in progress(prompts, desc="writing stories", unit="set"):
        [samples] = generate(model, tok, [prompt], max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             top_k=cfg.top_k, num_samples=cfg.samples, seed=set_seed(cfg.seed, prompt),
                             batch_size=cfg.batch_size)
        out.append([s.text for s in samples])
    return out


def evaluate_instruct(cfg: InstructEvalConfig) -> dict:
    """Run the evaluation; write instruct.json and instruct.md into the report dir and return the report."""
    from ..model.modeldir import load_model
    from ..runtime.device import resolve_device

    model_dir = check_model_dir(cfg.model_dir)
    if cfg.samples < 1:
        raise UserError(f"--samples must be at least 1, got {cfg.samples}")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError(f"--limit must be at least 1, got {cfg.limit}")
    sets = load_instructions(cfg.instructions)[:cfg.limit]
    probe_recs = None if cfg.words_probe is None else probe_records(cfg.words_probe)  # bad file: before any work
    judge = _judge(cfg) if cfg.judge_model else None     # a bad template fails before any generation
    weights = model_fingerprint(model_dir)
    model, tok = load_model(model_dir, resolve_device(cfg.device))

    prompts = [eval_prompt(s, cfg.plain) for s in sets]
    texts = write_stories(cfg, model, tok, prompts)

    per_set = []
    for s, prompt, completions in zip(sets, prompts, texts):
        start = s.story.strip()
        stories = [(start + c if start else c).strip() for c in completions]
        per_set.append({"instructions": format_instructions(s).strip(), "prompt": prompt,
                        "stories": [{"text": t, **adherence(s, t).to_dict()} for t in stories]})

    judge_info = None
    if judge is not None:
        items, where = [], []
        for i, (s, row) in enumerate(zip(sets, per_set)):
            for j, st in enumerate(row["stories"]):
                items.append({"exercise": exercise_text(s), "story": st["text"]})
                where.append((i, j))
        with progress(total=len(items), desc="judging", unit="story") as bar:
            judgments = judge.judge_many(items, context=weights, on_done=bar.update)
        for (i, j), jd in zip(where, judgments):
            per_set[i]["stories"][j].update({"judged": jd.ok, "grades": jd.grades, "age_group": jd.age_group,
                                             "assessment": jd.assessment})
        judge_info = {"url": judge.client.url, "model": cfg.judge_model, "template": judge.template.name,
                      "template_sha": judge.template.fingerprint, "params": judge.params,
                      "requests_sent": judge.client.requests_sent}

    probe = None
    if probe_recs is not None:
        probe = {**words_line_probe(model, tok, probe_recs), "records": cfg.words_probe}

    report = {
        "kind": "instruct",
        "model": {"dir": str(model_dir), "weights_sha256": weights},
        "settings": {**{k: v for k, v in asdict(cfg).items()
                        if k in ("plain", "samples", "temperature", "top_k", "max_new_tokens", "seed", "limit")},
                     "instructions": cfg.instructions or f"packaged:{EVAL_SET_FILE}"},
        "judge": judge_info,
        "summary": summarize(per_set, judge.template.categories if judge else []),
        "words_probe": probe,
        "sets": per_set,
    }
    write_report(report_dir(model_dir, cfg.out), "instruct", report, markdown(report))
    return report


def _judge(cfg: InstructEvalConfig):
    from importlib import resources

    from ..llm.cache import JsonlCache
    from ..llm.judge import Judge, JudgeTemplate

    if cfg.judge.template is None:
        path = resources.files("tinystories").joinpath("resources", JUDGE_TEMPLATE)
        template = JudgeTemplate.load(str(path))
    else:
        template = JudgeTemplate.load(cfg.judge.template)
    client = cfg.judge.client(cfg.judge_model, what="judge")
    return Judge(client, template, JsonlCache(cfg.judge.cache_file("instruct-eval.jsonl")),
                 parse_retries=cfg.judge.parse_retries)


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


def paired_word_share(a: dict, b: dict, reps: int = 2000, seed: int = 0) -> dict:
    """Report `a` minus report `b` (two `evaluate_instruct` reports on the same instruction sets, e.g. the
    instruct model and the plain model): the mean over sets of the difference in word share, a 95% interval
    that resamples sets, and how many sets each side wins. Pairing by set removes what the sets' words
    themselves contribute (some words every story uses), so it sees a smaller difference than two intervals."""
    sa, sb = a["sets"], b["sets"]
    if [r["instructions"] for r in sa] != [r["instructions"] for r in sb]:
        raise UserError("the two reports were not made on the same instruction sets")

    def share(row):
        v = [st["word_share"] for st in row["stories"] if st["word_share"] is not None]
        return sum(v) / len(v) if v else None

    diffs = [x - y for x, y in ((share(ra), share(rb)) for ra, rb in zip(sa, sb)) if x is not None and y is not None]
    ci = mean_ci([[d] for d in diffs], reps=reps, seed=seed)
    return {**ci, "sets_a_higher": sum(d > 0 for d in diffs), "sets_b_higher": sum(d < 0 for d in diffs),
            "sets_tied": sum(d == 0 for d in diffs)}


def probe_records(path: str | Path, limit: int = 300) -> list[InstructRecord]:
    """The first `limit` records of `path` that have a Words line: what `words_line_probe` scores."""
    if not Path(path).is_file():
        raise UserError(f"--words-probe {path}: no such file")
    recs = [r for r in read_records(path) if r.words][:limit]
    if len(recs) < 2:
        raise UserError(f"{path}: the words probe needs at least 2 records with a Words line")
    return recs


def words_line_probe(model, tok, recs: list[InstructRecord]) -> dict:
    """Does the model read its Words line? For each record (`probe_records`), the story's
    negative log-likelihood in nats after its own instruction lines, and after the same lines with another
    record's words (the next record whose words share none with these). Any language model finds a story a
    little likelier after words from it (a plain model, never trained on Words lines, does too: priming), so
    read the number against such a control: what an instruct model adds over it is what it learned from the
    line. Sensitive where sampled stories are not: a weak model leans towards the words before it writes them.
    Returns the mean difference (other - own, nats per story) with a 95% interval, and per story token."""
    import torch

    lemmas = [{lemma(w) for w in r.words} for r in recs]
    dev = next(model.parameters()).device
    ctx = model.config.context

    def story_nll(prompt_ids: list[int], story_ids: list[int]) -> float:
        ids = torch.tensor([[tok.eot_id, *prompt_ids, *story_ids]], device=dev)
        targets = ids[:, 1:].clone()
        targets[:, :len(prompt_ids)] = -1                   # the story's tokens only
        with torch.no_grad():
            return model(ids[:, :-1], targets=targets).item() * len(story_ids)

    diffs, n_tokens = [], []
    for i, r in enumerate(progress(recs, desc="words probe", unit="record")):
        j = next((k % len(recs) for k in range(i + 1, i + len(recs)) if not lemmas[k % len(recs)] & lemmas[i]), None)
        if j is None:
            continue
        prompts = [tok.encode(format_prompt(InstructRecord(
            story="", words=list(w), sentence=r.sentence, features=r.features, summary=r.summary, order=r.order)))
            for w in (r.words, recs[j].words)]
        room = ctx - 1 - max(map(len, prompts))
        story = tok.encode(" " + r.story.strip())[:room]   # the same story tokens after either prompt
        if room < 1 or not story:
            continue
        own, other = (story_nll(p, story) for p in prompts)
        diffs.append(other - own)
        n_tokens.append(len(story))
    if not diffs:
        raise UserError("no record left for the words probe (prompts longer than the context?)")
    ci = mean_ci([[d] for d in diffs])
    return {**ci, "per_token": ci["mean"] * len(diffs) / sum(n_tokens)}


LABELS = {"word_share": "required words used", "all_words_used": "all required words used",
          "sentence_present": "required sentence present", "feature_share": "detectable features present"}


def probe_line(p: dict) -> str:
    lo, hi = p["ci95"]
    return (f"words probe: a story costs {p['mean']:+.3f} nats (95% {lo:+.3f} to {hi:+.3f}; {p['per_token']:+.4f} "
            f"per token) after another record's Words line than after its own, over {p['n']} records of "
            f"{p['records']} (compare a model not trained on Words lines: any model is primed by words in its context)")


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
    if report.get("words_probe"):
        lines += ["", probe_line(report["words_probe"])]
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
