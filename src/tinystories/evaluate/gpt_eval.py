"""GPT-Eval (paper section 3): complete story beginnings, have an LLM judge grade the completions.

For each prompt the model writes N completions (default 10) at temperature 1. The judge (any
OpenAI-compatible endpoint) first assesses the part after the `***` separator in its own words,
then grades grammar, creativity, consistency and plot out of 10 and guesses an age group A-F
(template: resources/gpt_eval_judge.yaml). Completions and judgments are cached on disk, keyed by
the model's weights hash, the prompt, the completion, the judge model and the template, so a rerun
after an interruption pays for nothing twice.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError
from ..runtime.console import progress
from ..llm.cache import JsonlCache, key
from ..llm.config import JudgeConfig, flat_keywords
from .common import check_model_dir, check_report_dir, fmt, mean_ci, model_fingerprint, report_dir, write_report
from ..llm.judge import Judge, JudgeTemplate

HUB_REPO = "roneneldan/TinyStories"
HUB_PROMPTS = "Evaluation prompts.yaml"


@flat_keywords("judge", {"judge_url": "url", "api_key_env": "key_env", "concurrency": "concurrency",
                         "timeout": "timeout", "max_retries": "retries", "backoff": "backoff",
                         "cache": "cache", "template": "template", "parse_retries": "parse_retries"})
@dataclass
class GptEvalConfig:
    """GPT-Eval of one model: its completions of the evaluation prompts, graded by an LLM judge."""
    model_dir: str
    """run or model directory"""
    judge_model: str
    """judge model name"""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """the judge's server, template, retries and cache (the template default: resources/gpt_eval_judge.yaml)"""
    prompts: str | None = None
    """YAML list of story beginnings (default: 'Evaluation prompts.yaml' from the hub dataset roneneldan/TinyStories)"""
    samples: int = 10
    """completions per prompt"""
    temperature: float = 1.0
    """sampling temperature of the completions"""
    max_new_tokens: int = 300
    """longest completion, in tokens"""
    seed: int = 0
    """seed of the completions"""
    limit: int | None = None
    """only the first N prompts (a quick look)"""
    out: str | None = None
    """report directory (default MODEL_DIR/eval)"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps"""


# ------------------------------------------------------------------ prompts

def download_eval_prompts(cache_dir: str | Path | None = None) -> Path:
    """The authors' evaluation prompts from the hub dataset, from huggingface_hub's cache when it is there.

    Offline, this fails within seconds with one line (huggingface_hub alone would retry for ~25 s and
    log each retry).
    """
    import logging
    import os
    import socket
    import urllib.parse

    try:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    except ImportError:
        raise UserError("downloading the evaluation prompts needs huggingface_hub (pip install huggingface_hub); "
                        "or pass --prompts FILE") from None
    cached = try_to_load_from_cache(HUB_REPO, HUB_PROMPTS, repo_type="dataset", cache_dir=cache_dir)
    if isinstance(cached, str):
        return Path(cached)
    advice = "pass --prompts FILE with a local copy"
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if not offline:
        url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=5).close()
        except OSError as e:
            raise UserError(f"cannot reach the Hugging Face hub at {url.hostname} to download {HUB_PROMPTS!r} "
                            f"from {HUB_REPO} ({e.strerror or e}); {advice}") from None
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)          # its retry warnings would break the one-line error
    try:
        return Path(hf_hub_download(HUB_REPO, HUB_PROMPTS, repo_type="dataset", cache_dir=cache_dir))
    except Exception as e:  # offline, hub down, proxy: all say the same thing to the user
        reason = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:120]
        raise UserError(f"cannot download {HUB_PROMPTS!r} from the hub dataset {HUB_REPO} ({reason}); "
                        f"{advice}") from None
    finally:
        hub_log.setLevel(level)


def load_prompts(path: str | Path | None, cache_dir: str | Path | None = None) -> list[str]:
    """Story beginnings from a YAML/JSON list (strings, or dicts with 'prompt'), or the hub's file if None."""
    path = download_eval_prompts(cache_dir) if path is None else Path(path)
    try:
        raw = yaml.safe_load(Path(path).read_text("utf-8"))
    except OSError as e:
        raise UserError(f"--prompts {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"--prompts {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(raw, dict):
        raw = raw.get("prompts")
    prompts = []
    for item in raw if isinstance(raw, list) else []:
        text = item.get("prompt") if isinstance(item, dict) else item
        if isinstance(text, str) and text.strip():
            prompts.append(text.rstrip())
    if not prompts:
        raise UserError(f"--prompts {path}: no prompts in it; expected a YAML list of story beginnings")
    return prompts


# ------------------------------------------------------------------ the run

def gpt_eval(cfg: GptEvalConfig) -> dict:
    """Run GPT-Eval; write gpt_eval.json and gpt_eval.md into the report dir and return the report."""
    model_dir = check_model_dir(cfg.model_dir)
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError(f"--limit {cfg.limit}: give the number of prompts to evaluate (at least 1)")
    if cfg.samples < 1:
        raise UserError(f"--samples must be at least 1, got {cfg.samples}")
    cfg.judge.check()  # a config built from Python and changed since gets the CLI's checks too
    # before generating and paying the judge: a report that cannot be written would waste both
    check_report_dir(report_dir(model_dir, cfg.out))
    prompts = load_prompts(cfg.prompts)
    if cfg.limit:
        prompts = prompts[:cfg.limit]
    template = JudgeTemplate.load(cfg.judge.template)
    cache = JsonlCache(cfg.judge.cache_file("gpt-eval.jsonl"))
    client = cfg.judge.client(cfg.judge_model, what="judge")
    judge = Judge(client, template, cache, parse_retries=cfg.judge.parse_retries)
    weights = model_fingerprint(model_dir)

    completions = complete_prompts(cfg, model_dir, weights, prompts, cache)

    items, where = [], []
    for p, (prompt, texts) in enumerate(zip(prompts, completions)):
        for c, text in enumerate(texts):
            items.append({"beginning": prompt, "completion": text,
                          "story": prompt + template.separator + text})
            where.append((p, c))
    cached_before = sum(judge.cache_key(f, weights) in cache for f in items)
    with progress(total=len(items), desc="judging", unit="story") as bar:
        judgments = judge.judge_many(items, context=weights, on_done=bar.update)

    per_prompt = [{"prompt": prompt, "completions": []} for prompt in prompts]
    for (p, c), fields, j in zip(where, items, judgments):
        per_prompt[p]["completions"].append({"text": fields["completion"], "ok": j.ok, "grades": j.grades,
                                             "age_group": j.age_group, "assessment": j.assessment,
                                             "replies": j.replies})
    report = {
        "kind": "gpt-eval",
        "model": {"dir": str(model_dir), "weights_sha256": weights},
        "judge": {"url": client.url, "model": cfg.judge_model, "template": template.name,
                  "template_sha": template.fingerprint, "params": judge.params},
        "settings": {**{k: v for k, v in asdict(cfg).items()
                        if k in ("samples", "temperature", "max_new_tokens", "seed", "limit")},
                     "prompts": cfg.prompts or f"hub:{HUB_REPO}/{HUB_PROMPTS}"},
        **summarize(per_prompt, template),
        "requests": {"sent": client.requests_sent, "judgments_from_cache": cached_before,
                     "judgments_new": len(items) - cached_before},
        "prompts": per_prompt,
    }
    write_report(report_dir(model_dir, cfg.out), "gpt_eval", report, markdown(report))
    return report


def complete_prompts(cfg: GptEvalConfig, model_dir: Path, weights: str, prompts: list[str],
                     cache: JsonlCache) -> list[list[str]]:
    """`cfg.samples` completions per prompt; each prompt's are cached as soon as they exist.

    Each prompt gets its own seed (from cfg.seed and the prompt's text), so its completions do not
    depend on which other prompts are in the run.
    """
    settings = {"samples": cfg.samples, "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens,
                "seed": cfg.seed}
    keys = [key("completions", weights, prompt, settings) for prompt in prompts]
    out: list[list[str] | None] = [cache.get(k) for k in keys]
    missing = [i for i, o in enumerate(out) if o is None]
    if missing:
        from ..generate.sampling import generate
        from ..model.modeldir import load_model
        from ..runtime.device import resolve_device

        model, tok = load_model(model_dir, device=resolve_device(cfg.device))
        context = model.config.context
        for i in missing:
            n = len(tok.encode(prompts[i])) + 1          # + the leading end-of-text
            if n >= context:
                raise UserError(f"--prompts: prompt {i + 1} is {n} tokens but {model_dir}'s context is {context}; "
                                "use a model with a longer context or shorter prompts")
        for i in progress(missing, desc="generating", unit="prompt"):
            seed = (cfg.seed * 1_000_003 + int(hashlib.sha256(prompts[i].encode()).hexdigest()[:8], 16)) % 2**31
            [samples] = generate(model, tok, [prompts[i]], max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, num_samples=cfg.samples, seed=seed)
            out[i] = [s.text.rstrip() for s in samples]
            cache.put(keys[i], out[i])
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------ the report

def summarize(per_prompt: list[dict], template: JudgeTemplate) -> dict:
    """Mean and 95% interval per category (bootstrap over prompts), age groups, unparseable count."""
    summary = {}
    for cat in template.categories:
        groups = [[c["grades"][cat] for c in p["completions"] if c["ok"]] for p in per_prompt]
        summary[cat] = mean_ci(groups)
    oks = [[sum(c["grades"].values()) / len(c["grades"]) for c in p["completions"] if c["ok"]] for p in per_prompt]
    summary["average"] = mean_ci(oks)
    all_c = [c for p in per_prompt for c in p["completions"]]
    ages = Counter(c["age_group"] for c in all_c if c["ok"] and c["age_group"])
    return {
        "summary": summary,
        "age_groups": {g: ages.get(g, 0) for g in template.age_groups},
        "judged": len(all_c),
        "graded": sum(c["ok"] for c in all_c),
        "unparseable": sum(not c["ok"] for c in all_c),
    }


def markdown(report: dict) -> str:
    j, s = report["judge"], report["summary"]
    lines = [f"# GPT-Eval: {report['model']['dir']}", "",
             f"Judge `{j['model']}` at {j['url']}, template `{j['template']}`; "
             f"{report['settings']['samples']} completions per prompt at temperature "
             f"{report['settings']['temperature']}. {report['graded']} of {report['judged']} completions graded, "
             f"{report['unparseable']} unparseable.", "",
             "| category | mean | 95% interval | n |", "|---|---|---|---|"]
    for cat, v in s.items():
        lines.append(f"| {cat} | {fmt(v['mean'])} | {fmt(v['ci95'][0])} - {fmt(v['ci95'][1])} | {v['n']} |")
    total = sum(report["age_groups"].values()) or 1
    lines += ["", "| age group | completions | share |", "|---|---|---|"]
    lines += [f"| {g} | {n} | {100 * n / total:.0f}% |" for g, n in report["age_groups"].items()]
    for i, p in enumerate(report["prompts"], 1):
        lines += ["", f"## Prompt {i}", "", "> " + p["prompt"].replace("\n", "\n> "), ""]
        for c in p["completions"]:
            grades = (", ".join(f"{k} {v:g}" for k, v in c["grades"].items()) + f", age {c['age_group']}"
                      if c["ok"] else "**unparseable**: " + " / ".join(r.replace("\n", " ")[:120]
                                                                      for r in c["replies"][1:]))
            text = " ".join(c["text"].split())
            lines.append(f"- *{grades}*: {text}")
    return "\n".join(lines) + "\n"
