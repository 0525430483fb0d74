"""`tinystories evaluate`: loss / gpt-eval / diversity / probes / instruct / compare (see tinystories.evaluate)."""

from __future__ import annotations

import os
import sys

from .instruct import add_evaluate_parser as add_instruct_parser


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate",
                       help="score models: loss and bits/byte, GPT-Eval, diversity, probes, instruction following",
                       description="Evaluate models the way the TinyStories paper does. Reports are written to "
                                   "MODEL_DIR/eval/ (or --out) as JSON and Markdown; `compare` reads them back.")
    ev = p.add_subparsers(dest="what", required=True, metavar="WHAT")

    def common(q, model=True):
        if model:
            q.add_argument("model_dir", metavar="MODEL_DIR", help="run or model directory")
            q.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
        q.add_argument("--out", default=None, metavar="DIR", help="report directory (default MODEL_DIR/eval)")

    q = ev.add_parser("loss", help="nats/token, perplexity and bits per byte on a text source or DATA_DIR")
    common(q)
    q.add_argument("--data", required=True, metavar="FILE_OR_DATA_DIR",
                   help="any source `prepare` accepts (.txt, .json, .jsonl, .parquet, hub name) or a DATA_DIR")
    q.add_argument("--split", default="val", help="split of a DATA_DIR to score (default val)")
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    q.set_defaults(func=_loss)

    q = ev.add_parser("gpt-eval", help="GPT-Eval: completions graded by an LLM judge (paper section 3)")
    common(q)
    q.add_argument("--prompts", default=None, metavar="FILE",
                   help="YAML list of story beginnings (default: 'Evaluation prompts.yaml' from the hub "
                        "dataset roneneldan/TinyStories)")
    q.add_argument("--judge-url", default=os.environ.get("TINYSTORIES_JUDGE_URL", "https://api.openai.com/v1"),
                   help="OpenAI-compatible API root, e.g. http://localhost:11434/v1 for Ollama "
                        "(default $TINYSTORIES_JUDGE_URL or OpenAI)")
    q.add_argument("--judge-model", default=os.environ.get("TINYSTORIES_JUDGE_MODEL", "gpt-4o"),
                   help="judge model name (default $TINYSTORIES_JUDGE_MODEL or gpt-4o)")
    q.add_argument("--judge-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default OPENAI_API_KEY; unset = no key)")
    q.add_argument("--template", default=None, metavar="FILE", help="judge conversation template (YAML); "
                   "default: the packaged one, tinystories/resources/gpt_eval_judge.yaml")
    q.add_argument("--samples", type=int, default=10, help="completions per prompt (default 10)")
    q.add_argument("--temperature", type=float, default=1.0)
    q.add_argument("--max-new-tokens", type=int, default=300)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts")
    q.add_argument("--concurrency", type=int, default=8, help="judge requests in flight (default 8)")
    q.add_argument("--timeout", type=float, default=60.0, help="seconds per judge request (default 60)")
    q.add_argument("--retries", type=int, default=5, help="retries per request on 429/5xx/timeouts (default 5)")
    q.add_argument("--parse-retries", type=int, default=2,
                   help="times to ask again when the grades cannot be read (default 2)")
    q.add_argument("--cache", default=None, metavar="FILE",
                   help="judgment cache (default ~/.cache/tinystories/gpt-eval.jsonl, or $TINYSTORIES_CACHE)")
    q.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    q.set_defaults(func=_gpt_eval)

    q = ev.add_parser("diversity", help="Rouge and k-gram overlap with the training data (paper section 4.4.1)")
    common(q)
    q.add_argument("--train", required=True, nargs="+", metavar="SOURCE", help="the training stories")
    q.add_argument("--stories", type=int, default=100, help="training stories to cut and complete (default 100)")
    q.add_argument("--cut", type=float, default=0.4, help="share of each story kept as prompt (default 0.4)")
    q.add_argument("--max-new-tokens", type=int, default=300)
    q.add_argument("--temperature", type=float, default=1.0)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_diversity)

    q = ev.add_parser("probes", help="factual, reasoning and context-tracking probes (paper section 4.2)")
    common(q)
    q.add_argument("--probes", default=None, metavar="FILE", help="probe YAML (default: the packaged 38 probes)")
    q.add_argument("--max-new-tokens", type=int, default=24)
    q.set_defaults(func=_probes)

    add_instruct_parser(ev)   # `evaluate instruct` (cli/instruct.py)

    q = ev.add_parser("compare", help="saved reports of several runs side by side")
    q.add_argument("runs", nargs="+", metavar="RUN", help="run directories, report directories or report files")
    q.add_argument("--plot", default="compare.png", metavar="PNG", help="where to draw the plot (default compare.png)")
    q.add_argument("--out", default=None, metavar="FILE", help="also write the table (Markdown) and JSON here")
    q.set_defaults(func=_compare)


def _loss(a) -> int:
    from ..evaluate.loss import LossConfig, evaluate_loss

    r = evaluate_loss(LossConfig(a.model_dir, a.data, split=a.split, batch_size=a.batch_size,
                                 max_tokens=a.max_tokens, out=a.out, device=a.device))
    bpb = "-" if r["bits_per_byte"] is None else f"{r['bits_per_byte']:.4f}"
    print(f"{r['data']}: {r['tokens_scored']:,} tokens, {r['nats_per_token']:.4f} nats/token, "
          f"perplexity {r['perplexity']:.3f}, {bpb} bits/byte")
    return 0


def _gpt_eval(a) -> int:
    from ..evaluate.gpt_eval import GptEvalConfig, gpt_eval

    r = gpt_eval(GptEvalConfig(
        a.model_dir, a.judge_model, judge_url=a.judge_url, api_key_env=a.judge_key_env, prompts=a.prompts,
        template=a.template, samples=a.samples, temperature=a.temperature, max_new_tokens=a.max_new_tokens,
        seed=a.seed, limit=a.limit, concurrency=a.concurrency, timeout=a.timeout, max_retries=a.retries,
        parse_retries=a.parse_retries, cache="" if a.no_cache else a.cache, out=a.out, device=a.device))
    for cat, v in r["summary"].items():
        lo, hi = v["ci95"]
        mean = "-" if v["mean"] is None else f"{v['mean']:.2f}"
        ci = "" if lo is None else f"  (95% {lo:.2f}-{hi:.2f})"
        print(f"{cat:12s} {mean}{ci}")
    print("age groups   " + "  ".join(f"{g}:{n}" for g, n in r["age_groups"].items()))
    print(f"{r['graded']}/{r['judged']} graded, {r['unparseable']} unparseable; "
          f"{r['requests']['judgments_from_cache']} judgments from cache, {r['requests']['sent']} requests sent")
    return 0


def _diversity(a) -> int:
    from ..evaluate.diversity import DiversityConfig, diversity

    r = diversity(DiversityConfig(a.model_dir, a.train, stories=a.stories, cut=a.cut,
                                  max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed,
                                  out=a.out, device=a.device))
    s = r["summary"]
    print(f"Rouge-2 precision vs original ending: {s['rouge2_p_vs_original']['mean']:.3f}")
    print(f"max Rouge-2 F between generated:      {s['max_rouge2_f_between_generated']['mean']:.3f} "
          f"(original endings {s['max_rouge2_f_between_original']['mean']:.3f})")
    print(f"Rouge-2 precision vs closest story:   {s['rouge2_p_vs_closest_training_story']['mean']:.3f}")
    print("k-grams found in training data:       " +
          "  ".join(f"{k}: {v:.1%}" for k, v in s["kgram_share_found"].items() if v is not None))
    return 0


def _probes(a) -> int:
    from ..evaluate.probes import run_probes

    r = run_probes(a.model_dir, a.probes, max_new_tokens=a.max_new_tokens, out=a.out, device=a.device)
    for cat, v in r["summary"].items():
        print(f"{cat:10s} pass {v['pass']:2d}  partial {v['partial']:2d}  fail {v['fail']:2d}  score {v['score']:.2f}")
    return 0


def _compare(a) -> int:
    import json

    from ..evaluate.compare import compare
    from ..runtime.files import atomic_write_text

    r = compare(a.runs, a.plot)
    sys.stdout.write(r["markdown"])
    if a.out:
        atomic_write_text(a.out, r["markdown"])
        atomic_write_text(os.path.splitext(a.out)[0] + ".json",
                          json.dumps({k: v for k, v in r.items() if k != "markdown"}, indent=2) + "\n")
    if a.plot:
        print(f"plot: {a.plot}", file=sys.stderr)
    return 0
