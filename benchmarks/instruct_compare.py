"""Instruct model vs plain model: does training on TinyStories-Instruct records make a model use the
words it is asked to use?

The sequence (each step is a `tinystories` command, printed as it runs, so it can be rerun by hand):

  1. instruct build   the shared training stories -> instruct records (seeded random instruction subsets)
  2. prepare          the records -> DATA_instruct; the same plain stories -> DATA_plain (validation: the
                      shared valid stories, as records for the instruct model, plain for the plain one)
  3. train            one model of the same preset on each, for the same number of steps (same batch,
                      so the same number of tokens) and seed
  4. evaluate instruct
       instruct model: prompt = the set's instruction lines + "Story:"
       plain model:    prompt = the story start alone (--plain). Our 50 sets carry no story start, so the
                       plain model starts from the end-of-text token, exactly where every training story
                       starts; both models write the story from its first word.
     Both are scored against the same 50 instruction sets, same samples, temperature and seed.

Prints the share of required words used (inflections count) for both, plus sentence and feature rates;
the instruct - plain difference paired by set (a set's words weigh the same on both sides); and the words
probe for both models on the validation records (`evaluate instruct --words-probe`: how much likelier a
story is after its own Words line than after another record's; the plain model, never trained on Words
lines, is the control: any model is primed by words in its context, so the difference is the part learned).
Long: run it when the machine is otherwise idle (the default, 1500 steps of 8 x 512 tokens for each 1M model,
is about 16 minutes per model on 2 idle CPU cores; the 3M preset took 27 minutes per model).

    python benchmarks/instruct_compare.py --preset 3M --lr 2e-3 --samples 20 --work runs/instruct-compare-3M
    python benchmarks/instruct_compare.py --smoke        # a minutes-long check that the sequence runs
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from tinystories.evaluate.instruct import paired_word_share
SHARED = Path(os.environ.get("TINYSTORIES_SHARED_DATA", REPO.parent / "shared" / "data" / "tinystories"))
TRAIN = ["TinyStories-train-head.txt", "TinyStoriesV2-GPT4-train-head.txt", "tinystories-sample-3000.json"]
VALID = "TinyStories-subset-valid.txt"


def run(*args: str) -> None:
    cmd = [sys.executable, "-m", "tinystories", *map(str, args)]
    print("$ tinystories " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd, check=True, env=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="1M", help="model preset for both models (default 1M; 3M works too)")
    ap.add_argument("--max-steps", type=int, default=1500, help="training steps for each model (default 1500)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate for both models (default 3e-3: "
                    "the budget sweep's best rates for 64-wide models at 2 minutes were 2.8e-3 to 5.7e-3; "
                    "the training default of 1e-3 leaves a 1M model babbling after 600 steps)")
    ap.add_argument("--draws", type=int, default=4, help="instruct records per training story (`instruct build "
                    "--draws`, default 4): the instruct model sees each story N times with N instruction draws "
                    "in the steps the plain model spends on N epochs of the stories")
    ap.add_argument("--samples", type=int, default=2, help="stories per instruction set (default 2)")
    ap.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary for both data dirs")
    ap.add_argument("--work", default=None, help="where data, runs and results go; steps whose output is there "
                    "already are skipped (default runs/instruct-compare, or runs/instruct-compare-smoke)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny settings: check the sequence in minutes")
    args = ap.parse_args()
    if args.smoke:
        args.preset, args.max_steps, args.samples, args.vocab_size, args.draws = "1M", 30, 1, 1024, 1

    work = Path(args.work or ("runs/instruct-compare-smoke" if args.smoke else "runs/instruct-compare"))
    work.mkdir(parents=True, exist_ok=True)
    train = [str(SHARED / f) for f in TRAIN]
    valid = str(SHARED / VALID)
    records, val_records = work / "instruct-train.txt", work / "instruct-val.txt"
    if not records.exists():
        run("instruct", "build", *train, "--out", records, "--seed", args.seed, "--draws", args.draws)
        run("instruct", "check", "--against", records, *train)  # the 50 eval sets vs the training records
    if not val_records.exists():
        run("instruct", "build", valid, "--out", val_records, "--seed", args.seed + 1)
    for name, sources, val in (("instruct", [records], val_records), ("plain", train, valid)):
        data = work / f"data-{name}"
        if not data.exists():
            run("prepare", *sources, "--out", data, "--vocab-size", args.vocab_size, "--val", val)
        run_dir = work / f"run-{name}"
        if not run_dir.exists():
            run("train", "--data", data, "--preset", args.preset, "--max-steps", args.max_steps,
                "--set", f"lr={args.lr}", "--set", f"seed={args.seed}", "--out", run_dir)
    results, reports = {}, {}
    for name in ("instruct", "plain"):
        out = work / f"eval-{name}"
        run("evaluate", "instruct", work / f"run-{name}", "--samples", args.samples, "--seed", args.seed,
            "--out", out, "--words-probe", val_records, *(["--plain"] if name == "plain" else []))
        reports[name] = json.loads((out / "instruct.json").read_text())
        results[name] = {k: v for k, v in reports[name]["summary"].items() if isinstance(v, dict)}
        results[name]["words_probe"] = reports[name]["words_probe"]
        results[name]["steps"] = json.loads((work / f"run-{name}" / "summary.json").read_text())["steps"]  # resumed runs: more

    def pct(v):
        return "  n/a" if v["mean"] is None else f"{100 * v['mean']:5.1f}%"

    steps = " and ".join(sorted({str(r["steps"]) for r in results.values()}))
    print(f"\n{args.preset}, {steps} training steps each at lr {args.lr:g}, "
          f"{args.draws} instruct record(s) per story, 50 instruction sets x {args.samples} stories")
    print(f"{'model':<10} {'words used':>10} {'95% interval':>14} {'all 3 used':>10} {'sentence':>9} {'features':>9}")
    for name, s in results.items():
        lo, hi = s["word_share"]["ci95"]
        ci = f"{100 * lo:.1f}-{100 * hi:.1f}%" if lo is not None else "n/a"
        print(f"{name:<10} {pct(s['word_share']):>10} {ci:>14} {pct(s['all_words_used']):>10} "
              f"{pct(s['sentence_present']):>9} {pct(s['feature_share']):>9}")
    paired = paired_word_share(reports["instruct"], reports["plain"])
    lo, hi = paired["ci95"]
    print(f"\ninstruct - plain, paired by set: {100 * paired['mean']:+.1f} points of words used (95% {100 * lo:+.1f} "
          f"to {100 * hi:+.1f}); sets where instruct is higher / lower / tied: {paired['sets_a_higher']} / "
          f"{paired['sets_b_higher']} / {paired['sets_tied']}")
    for name in results:
        p = results[name]["words_probe"]
        print(f"words probe, {name} model: {p['mean']:+.3f} nats per story (95% {p['ci95'][0]:+.3f} to "
              f"{p['ci95'][1]:+.3f}) likelier after its own Words line than another record's ({p['n']} val records)")
    (work / "compare.json").write_text(json.dumps({"preset": args.preset, "max_steps": args.max_steps, "lr": args.lr,
                                                   "draws": args.draws, "samples": args.samples, "results": results,
                                                   "paired_word_share": paired}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
