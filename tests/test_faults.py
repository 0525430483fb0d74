"""The bad-input matrix (issue 21): hostile-but-realistic inputs to every verb, each one checked for

  - a non-zero exit,
  - exactly one line on stderr, naming the option or file, and no traceback,
  - nothing written or destroyed: every file under the workspace, the model and the data directory
    has the same size and modification time afterwards, and the output path is as it was.

Cases call `tinystories.cli.main(argv)` in-process (a few ms each once the imports are warm), so the
matrix of ~350 cases fits the suite's budget. A case is a row: (id, argv, needles that the error
line must contain). `{name}` in argv and needles is a path of the workspace built below.

Cases whose fix belongs to a file another engineer owns are `xfail(strict=True)` with the owner:
they turn into failures the day the fix lands, so the mark is removed then.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
from pathlib import Path

import pytest
from conftest import EVAL_PROMPTS, SHARED, TRAIN_TXT

# ---------------------------------------------------------------- the workspace

GOOD_STORIES = 60
SYS_OUT = "/sys/tinystories-fault-test/out"  # EPERM even for root: an output that cannot be written


def _good_text(n: int = GOOD_STORIES) -> str:
    stories = TRAIN_TXT.read_text(encoding="utf-8").split("<|endoftext|>")[:n]
    return "".join(s.strip() + "\n<|endoftext|>\n" for s in stories if s.strip())


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


BINARY = bytes(range(256)) * 8
LATIN1 = "Once upon a time, a caf\xe9 sold cr\xe8me br\xfbl\xe9e.\n".encode("latin-1") * 20

# Sources of stories, each broken in one way (for prepare, --val, instruct build/check, diversity, loss).
BAD_SOURCES = {
    "src_missing": None,
    "src_empty": ("empty.txt", b""),
    "src_blank": ("blank.txt", b"\n  \n<|endoftext|>\n\n<|endoftext|>\n"),
    "src_binary": ("binary.txt", BINARY),
    "src_latin1": ("latin1.txt", LATIN1),
    "src_nul": ("nul.txt", b"Once upon a time\x00 there was a cat.\n"),
    "src_unknown_ext": ("stories.csv", b"text\nOnce upon a time.\n"),
    "src_json_syntax": ("syntax.json", b'["Once upon a time", '),
    "src_json_number": ("number.json", b"42"),
    "src_json_ints": ("ints.json", b"[1, 2, 3]"),
    "src_json_no_texts": ("notexts.json", b'{"stories": ["a"]}'),
    "src_json_binary": ("bin.json", BINARY),
    "src_jsonl_bad": ("bad.jsonl", b'"Once upon a time."\n{not json\n'),
    "src_jsonl_shape": ("shape.jsonl", b'{"story": "Once upon a time."}\n'),
    "src_parquet_garbage": ("garbage.parquet", BINARY),
    "src_dir_not_dataset": ("adir/", None),
}
SOURCE_NEEDLE = {k: (f"{{{k}}}",) for k in BAD_SOURCES}


def _model_variants(base: Path, root: Path) -> dict[str, Path]:
    """Copies of the tiny model's files, each broken in one way."""
    import torch
    from safetensors.torch import load_file, save_file

    files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_meta.json"]
    out: dict[str, Path] = {}

    def variant(name: str) -> Path:
        d = root / "models" / name
        d.mkdir(parents=True)
        for f in files:
            shutil.copy2(base / f, d / f)
        out[name] = d
        return d

    cfg = json.loads((base / "config.json").read_text())
    state = load_file(str(base / "model.safetensors"))
    weights = (base / "model.safetensors").read_bytes()

    variant("good")
    out["m_missing"] = root / "models" / "no-such-model"
    out["m_file"] = _write(root / "models" / "a-file", "not a model\n")
    (root / "models" / "m_empty_dir").mkdir(parents=True)
    out["m_empty_dir"] = root / "models" / "m_empty_dir"
    _write(variant("m_config_syntax") / "config.json", "{not json")
    _write(variant("m_config_binary") / "config.json", BINARY)
    _write(variant("m_config_list") / "config.json", "[1, 2, 3]")
    _write(variant("m_config_foreign") / "config.json", '{"hello": 1}')
    _write(variant("m_config_no_model") / "config.json", json.dumps({"format": cfg["format"]}))
    _write(variant("m_config_bad_field") / "config.json",
           json.dumps({**cfg, "model": {**cfg["model"], "no_such_field": 1}}))
    _write(variant("m_config_hidden_text") / "config.json",
           json.dumps({**cfg, "model": {**cfg["model"], "hidden": "big"}}))
    _write(variant("m_config_layers_negative") / "config.json",
           json.dumps({**cfg, "model": {**cfg["model"], "layers": -2}}))
    _write(variant("m_config_shape_mismatch") / "config.json",
           json.dumps({**cfg, "model": {**cfg["model"], "hidden": 32, "heads": 4}}))
    os.remove(variant("m_no_weights") / "model.safetensors")
    _write(variant("m_weights_empty") / "model.safetensors", b"")
    _write(variant("m_weights_truncated") / "model.safetensors", weights[: len(weights) // 2])
    _write(variant("m_weights_garbage") / "model.safetensors", BINARY)
    _write(variant("m_weights_header") / "model.safetensors", struct.pack("<Q", 10**12) + b"{}")
    for name, value in (("m_weights_nan", float("nan")), ("m_weights_inf", float("inf"))):
        bad = {k: v.clone() for k, v in state.items()}
        k = next(k for k in bad if k.endswith("weight") and bad[k].ndim == 2)
        bad[k][0, 0] = value
        save_file(bad, str(variant(name) / "model.safetensors"), metadata={"format": "tinystories-model"})
    os.remove(variant("m_no_tokenizer") / "tokenizer.json")
    _write(variant("m_tokenizer_garbage") / "tokenizer.json", BINARY)
    _write(variant("m_tokenizer_syntax") / "tokenizer.json", '{"version": ')
    tmeta = json.loads((base / "tokenizer_meta.json").read_text())
    _write(variant("m_tokmeta_list") / "tokenizer_meta.json", "[]")
    _write(variant("m_tokmeta_syntax") / "tokenizer_meta.json", "{")
    _write(variant("m_tokmeta_binary") / "tokenizer_meta.json", BINARY)
    _write(variant("m_tokmeta_no_kind") / "tokenizer_meta.json",
           json.dumps({k: v for k, v in tmeta.items() if k != "kind"}))
    _write(variant("m_tokmeta_vocab_text") / "tokenizer_meta.json", json.dumps({**tmeta, "vocab_size": "512"}))
    _write(variant("m_tokmeta_eot_out") / "tokenizer_meta.json", json.dumps({**tmeta, "eot_id": 10**6}))
    _write(variant("m_tokenizer_too_big") / "tokenizer_meta.json", json.dumps({**tmeta, "vocab_size": 100000}))
    del torch
    return out


MODEL_NEEDLE = {
    "m_missing": ("{m_missing}",), "m_file": ("{m_file}",), "m_empty_dir": ("{m_empty_dir}",),
    "m_config_syntax": ("config.json",), "m_config_binary": ("config.json",), "m_config_list": ("config.json",),
    "m_config_foreign": ("config.json",), "m_config_no_model": ("config.json",),
    "m_config_bad_field": ("no_such_field",), "m_config_hidden_text": ("hidden",),
    "m_config_layers_negative": ("layers",), "m_config_shape_mismatch": ("model.safetensors",),
    "m_no_weights": ("model.safetensors",), "m_weights_empty": ("model.safetensors",),
    "m_weights_truncated": ("model.safetensors",), "m_weights_garbage": ("model.safetensors",),
    "m_weights_header": ("model.safetensors",), "m_weights_nan": ("model.safetensors", "non-finite"),
    "m_weights_inf": ("model.safetensors", "non-finite"), "m_no_tokenizer": ("tokenizer.json",),
    "m_tokenizer_garbage": ("tokenizer.json",), "m_tokenizer_syntax": ("tokenizer.json",),
    "m_tokmeta_list": ("tokenizer_meta.json",), "m_tokmeta_syntax": ("tokenizer_meta.json",),
    "m_tokmeta_binary": ("tokenizer_meta.json",), "m_tokmeta_no_kind": ("tokenizer_meta.json",),
    "m_tokmeta_vocab_text": ("tokenizer_meta.json",), "m_tokmeta_eot_out": ("tokenizer_meta.json",),
    "m_tokenizer_too_big": ("tokenizer_meta.json",),
}


def _data_variants(base: Path, root: Path) -> dict[str, Path]:
    """Copies of the tiny DATA_DIR, each broken in one way."""
    import numpy as np

    out: dict[str, Path] = {}

    def variant(name: str) -> Path:
        d = root / "datas" / name
        shutil.copytree(base, d)
        out[name] = d
        return d

    meta = json.loads((base / "meta.json").read_text())
    out["d_missing"] = root / "datas" / "no-such-data"
    (root / "datas" / "d_empty_dir").mkdir(parents=True)
    out["d_empty_dir"] = root / "datas" / "d_empty_dir"
    _write(variant("d_meta_syntax") / "meta.json", "{")
    _write(variant("d_meta_binary") / "meta.json", BINARY)
    _write(variant("d_meta_list") / "meta.json", "[]")
    _write(variant("d_meta_foreign") / "meta.json", '{"format": "something-else"}')
    _write(variant("d_meta_no_vocab") / "meta.json", json.dumps({k: v for k, v in meta.items() if k != "vocab_size"}))
    os.remove(variant("d_no_val") / "val.bin")
    with open(variant("d_train_truncated") / "train.bin", "r+b") as f:
        f.truncate(os.path.getsize(base / "train.bin") - 2)
    ids = np.fromfile(base / "val.bin", dtype=np.uint16)
    ids[len(ids) // 2] = 60000
    ids.tofile(variant("d_ids_beyond_vocab") / "val.bin")
    _write(variant("d_tokmeta_list") / "tokenizer_meta.json", "[1]")
    _write(variant("d_tokenizer_garbage") / "tokenizer.json", BINARY)
    return out


DATA_NEEDLE = {
    "d_missing": ("{d_missing}",), "d_empty_dir": ("{d_empty_dir}",), "d_meta_syntax": ("meta.json",),
    "d_meta_binary": ("meta.json",), "d_meta_list": ("meta.json",), "d_meta_foreign": ("meta.json",),
    "d_meta_no_vocab": ("meta.json",), "d_no_val": ("val.bin",), "d_train_truncated": ("train.bin",),
    "d_ids_beyond_vocab": ("val.bin", "vocabulary"), "d_tokmeta_list": ("tokenizer_meta.json",),
    "d_tokenizer_garbage": ("tokenizer.json",),
}

def _run_variants(base: Path, root: Path) -> dict[str, Path]:
    """Copies of the tiny run directory (for --resume), each with one file broken."""
    out: dict[str, Path] = {}

    def variant(name: str) -> Path:
        d = root / "runs" / name
        shutil.copytree(base, d)
        out[name] = d
        return d

    ckpt = max((base / "checkpoints").glob("step-*")).name
    _write(variant("r_config_syntax") / "train_config.json", "{")
    _write(variant("r_config_binary") / "train_config.json", BINARY)
    _write(variant("r_config_list") / "train_config.json", "[]")
    _write(variant("r_state_syntax") / "checkpoints" / ckpt / "state.json", "{")
    _write(variant("r_ckpt_weights_garbage") / "checkpoints" / ckpt / "model.safetensors", BINARY)
    d = variant("r_trainer_truncated") / "checkpoints" / ckpt / "trainer.pt"
    d.write_bytes(d.read_bytes()[:100])
    _write(variant("r_metrics_binary") / "metrics.jsonl", BINARY)
    shutil.rmtree(variant("r_no_checkpoints") / "checkpoints")
    return out


RUN_XFAIL = {
}
RUN_NEEDLE = {"r_config_syntax": ("train_config.json",), "r_config_binary": ("train_config.json",),
              "r_config_list": ("train_config.json",), "r_state_syntax": ("state.json|checkpoint",),
              "r_ckpt_weights_garbage": ("model.safetensors|checkpoint",),
              "r_trainer_truncated": ("trainer.pt|checkpoint",), "r_metrics_binary": ("metrics.jsonl",),
              "r_no_checkpoints": ("checkpoint",)}

# Small files for the options that read one: prompts, probes, templates, recipes, instructions, caches.
FILES = {
    "f_binary_yaml": ("binary.yaml", BINARY),
    "f_latin1_yaml": ("latin1.yaml", LATIN1),
    "f_bad_yaml": ("bad.yaml", b"- [unclosed\n  - x: : :\n"),
    "f_number_yaml": ("number.yaml", b"42\n"),
    "f_bad_json": ("bad.json", b"[1, "),
    "f_binary_txt": ("binary-prompts.txt", BINARY),
    "f_probes_accept_string": ("probes.yaml", (b"- category: factual\n  prompt: Tom was thirsty and drank\n"
                                               b"  accept: water\n")),
    "f_probes_no_prompt": ("probes-noprompt.yaml", b"- category: factual\n  accept: [water]\n"),
    "f_probes_bad_category": ("probes-cat.yaml", b"- category: nonsense\n  prompt: Tom drank\n  accept: [water]\n"),
    "f_instr_unknown_feature": ("instr-feature.txt", b"Words: dog, run, happy\nFeatures: Dialogue, Explosions\n"),
    "f_instr_not_records": ("instr-junk.txt", b"this is not a record\n"),
    "f_instr_binary": ("instr-binary.txt", BINARY),
    "f_instr_empty": ("instr-empty.txt", b""),
    "f_toml_bad": ("bad.toml", b"lr = = 3\n"),
    "f_toml_binary": ("binary.toml", BINARY),
    "f_toml_unknown": ("unknown.toml", b"no_such_setting = 3\n"),
    "f_toml_lr_text": ("lrtext.toml", b'lr = "fast"\n'),
    "f_cache_text": ("notes.txt", b"my notes, not a cache\n"),
    "f_report_corrupt": ("reports/loss.json", b"{"),
    "f_report_binary": ("reports2/loss.json", BINARY),
    "f_template_missing_keys": ("template.yaml", b"hello: world\n"),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model, tiny_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    p: dict[str, Path] = {"root": root, "model": tiny_model, "data": tiny_data}
    p["good_txt"] = _write(root / "src" / "good.txt", _good_text())
    p["good2_txt"] = _write(root / "src" / "good2.txt", _good_text(30))
    short = [s.split(". ")[0] + "." for s in _good_text().split("\n<|endoftext|>\n") if len(s.split()) > 25]
    p["short_txt"] = _write(root / "src" / "short.txt", "".join(f"{s}\n<|endoftext|>\n" for s in short if len(s.split()) >= 10))
    (root / "out").mkdir()
    for name, spec in BAD_SOURCES.items():
        if spec is None:
            p[name] = root / "src" / "no-such-file.txt"
        elif spec[1] is None:
            (root / "src" / spec[0]).mkdir(parents=True)
            p[name] = root / "src" / spec[0].rstrip("/")
        else:
            p[name] = _write(root / "src" / spec[0], spec[1])
    for name, (fname, data) in FILES.items():
        p[name] = _write(root / "files" / fname, data)
    p["weights"] = tiny_model / "model.safetensors"
    p["a_file"] = _write(root / "files" / "a-regular-file", "hello\n")
    p["existing_dir"] = root / "files" / "existing-dir"
    p["existing_dir"].mkdir()
    _write(p["existing_dir"] / "keep.txt", "the user's file\n")
    p["cache_dir"] = root / "cache"
    p["cache_dir"].mkdir()
    p.update(_model_variants(tiny_model, root))
    p.update(_data_variants(tiny_data, root))
    p.update(_run_variants(tiny_model, root))
    p["missing"] = root / "no" / "such" / "path"
    return p


def _snapshot(roots: list[Path]) -> dict[str, tuple[int, int]]:
    snap = {}
    for r in roots:
        for dirpath, dirs, files in os.walk(r):
            for name in dirs + files:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                snap[full] = (st.st_size if name in files else -1, st.st_mtime_ns if name in files else 0)
    return snap


# ---------------------------------------------------------------- the cases


JUDGE = ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--retries", "0"]


def _row(cid, argv, needles=(), xfail=None, parse=False, slow=False):
    """One case. A needle may list alternatives, "a|b"; an option "--max-steps" is also found as the
    setting it fills, "max_steps" (the typed configs name their fields)."""
    return (cid, list(argv), tuple(needles), xfail, parse, slow)


def _model_verbs(m: str) -> list[tuple[str, list[str]]]:
    """Every verb that takes a model directory, with otherwise-good arguments."""
    return [
        ("generate", ["generate", m, "Once", "--max-new-tokens", "4", "--seed", "1"]),
        ("eval-loss", ["evaluate", "loss", m, "--data", "{good_txt}", "--out", "{root}/out/loss"]),
        ("eval-probes", ["evaluate", "probes", m, "--out", "{root}/out/probes", "--max-new-tokens", "2"]),
        ("eval-gpt", ["evaluate", "gpt-eval", m, "--prompts", str(EVAL_PROMPTS), "--limit", "1", "--samples", "1",
                      "--out", "{root}/out/gpt", "--cache", "{cache_dir}/g.jsonl", *JUDGE]),
        ("eval-diversity", ["evaluate", "diversity", m, "--train", "{short_txt}", "--stories", "2",
                            "--max-new-tokens", "2", "--out", "{root}/out/div"]),
        ("eval-instruct", ["evaluate", "instruct", m, "--limit", "1", "--samples", "1", "--max-new-tokens", "2",
                           "--out", "{root}/out/instr"]),
        ("export", ["export", m, "--out", "{root}/out/hf"]),
        ("inspect-attention", ["inspect", "attention", m, "--data", "{good_txt}", "--stories", "2",
                               "--text", "Once upon a time", "--out", "{root}/out/insp"]),
        ("serve", ["serve", m, "--port", "0"]),
    ]


def _source_uses(s: str) -> list[tuple[str, list[str]]]:
    """Every place that reads stories from a SOURCE."""
    return [
        ("prepare", ["prepare", s, "--out", "{root}/out/prep", "--vocab-size", "300"]),
        ("prepare-val", ["prepare", "{good_txt}", "--val", s, "--out", "{root}/out/prep", "--vocab-size", "300"]),
        ("instruct-build", ["instruct", "build", s, "--out", "{root}/out/instr.txt", "--no-cache"]),
        ("instruct-check", ["instruct", "check", "--against", s]),
        ("eval-diversity", ["evaluate", "diversity", "{model}", "--train", s, "--stories", "2",
                            "--max-new-tokens", "2", "--out", "{root}/out/div"]),
    ]


def _cases() -> list[tuple]:
    rows: list[tuple] = []
    # -- every model-reading verb x every broken model
    for m, needles in MODEL_NEEDLE.items():
        for verb, argv in _model_verbs("{" + m + "}"):
            rows.append(_row(f"{verb}:{m}", argv, needles))
    # -- every story-reading place x every broken source
    for s, needles in SOURCE_NEEDLE.items():
        for use, argv in _source_uses("{" + s + "}"):
            if s == "src_missing" and use == "instruct-check":
                needles_ = ("no-such-file.txt",)
            else:
                needles_ = needles
            rows.append(_row(f"{use}:{s}", argv, needles_))
    # -- evaluate loss and train x every broken DATA_DIR
    for d, needles in DATA_NEEDLE.items():
        if d not in ("d_tokmeta_list", "d_tokenizer_garbage"):  # loss reads the model's tokenizer, not the data's
            rows.append(_row(f"eval-loss:{d}", ["evaluate", "loss", "{model}", "--data", "{" + d + "}",
                                                "--out", "{root}/out/loss"], needles))
        rows.append(_row(f"train:{d}", ["train", "--data", "{" + d + "}", "--out", "{root}/out/run",
                                        "--max-steps", "2"], needles))
    # -- train --resume x every broken run directory
    for r_, needles in RUN_NEEDLE.items():
        rows.append(_row(f"train-resume:{r_}", ["train", "--out", "{" + r_ + "}", "--resume", "--max-steps", "125"],
                         needles, xfail=RUN_XFAIL.get(r_)))
    rows += _prepare_rows() + _presets_rows() + _train_rows() + _generate_rows() + _evaluate_rows()
    rows += _instruct_rows() + _export_rows() + _clean_rows() + _output_rows() + _new_verb_rows()
    return rows


def _prepare_rows() -> list[tuple]:
    base = ["prepare", "{good_txt}", "--out", "{root}/out/prep"]
    r = [_row(f"prepare:vocab={v}", base + ["--vocab-size", v], ["--vocab-size"]) for v in ("0", "-1", "100", "70000")]
    r.append(_row("prepare:gpt-neo-vocab-over", base + ["--tokenizer", "gpt-neo", "--vocab-size", "60000"], ["--vocab-size"]))
    r += [_row(f"prepare:val-fraction={v}", base + ["--val-fraction", v], ["--val-fraction"])
          for v in ("0", "1", "-0.5", "2", "nan", "inf")]
    r.append(_row("prepare:val-equals-train", base + ["--val", "{good_txt}", "--vocab-size", "300"], ["good.txt"]))
    r.append(_row("prepare:tokenizer-bogus", base + ["--tokenizer", "wordpiece"], ["--tokenizer"], parse=True))
    r.append(_row("prepare:vocab-text", base + ["--vocab-size", "many"], ["--vocab-size"], parse=True))
    r.append(_row("prepare:out-is-source", ["prepare", "{good_txt}", "--out", "{good_txt}", "--force"], ["--out"]))
    r.append(_row("prepare:out-contains-source", ["prepare", "{good_txt}", "--out", "{root}/src", "--force"],
                  ["--out", "contains"]))
    r.append(_row("prepare:out-is-val", ["prepare", "{good_txt}", "--val", "{good2_txt}", "--out", "{good2_txt}",
                                         "--force"], ["--out"]))
    r.append(_row("prepare:out-inside-dataset-dir", ["prepare", "{src_dir_not_dataset}", "--out",
                                                     "{src_dir_not_dataset}/out", "--force"], []))
    r.append(_row("prepare:out-is-data-source-run", ["prepare", "{good_txt}", "--out", "{model}", "--force",
                                                     "--vocab-size", "300"], ["--out", "checkpoints"]))
    return r


def _presets_rows() -> list[tuple]:
    r = []
    for opt, vals in (("--vocab", ("0", "-5")), ("--context", ("0", "-1")), ("--hidden", ("0", "-64", "65")),
                      ("--layers", ("0", "-1")), ("--heads", ("0", "-4", "7"))):
        for v in vals:
            r.append(_row(f"presets:{opt}={v}", ["presets", "1M", opt, v], []))
    r.append(_row("presets:unknown", ["presets", "NoSuchPreset"], ["NoSuchPreset"]))
    r.append(_row("presets:vocab-text", ["presets", "--vocab", "ten"], ["--vocab"], parse=True))
    return r


def _train_rows() -> list[tuple]:
    base = ["train", "--data", "{data}", "--out", "{root}/out/run"]
    lim = ["--max-steps", "2"]
    r = [
        _row("train:max-steps=0", base + ["--max-steps", "0"], ["--max-steps"]),
        _row("train:max-steps=-1", base + ["--max-steps", "-1"], ["--max-steps"]),
        _row("train:max-steps=text", base + ["--max-steps", "x"], ["--max-steps"], parse=True),
    ]
    for v in ("nan", "-5", "abc", "0"):
        r.append(_row(f"train:max-tokens={v}", base + ["--max-tokens", v], ["--max-tokens"]))
    r.append(_row("train:max-tokens=inf", base + ["--max-tokens", "inf"], ["--max-tokens"]))
    for v in ("-1s", "abc", "0", "inf", "nan"):
        r.append(_row(f"train:max-time={v}", base + ["--max-time", v], ["--max-time"]))
    r += [
        _row("train:preset-unknown", base + lim + ["--preset", "NoSuch"], ["NoSuch"]),
        _row("train:config-missing", base + lim + ["--config", "{missing}.toml"], ["toml"]),
        _row("train:config-syntax", base + lim + ["--config", "{f_toml_bad}"], ["bad.toml"]),
        _row("train:config-binary", base + lim + ["--config", "{f_toml_binary}"], ["binary.toml"]),
        _row("train:config-unknown-key", base + lim + ["--config", "{f_toml_unknown}"], ["no_such_setting"]),
        _row("train:config-lr-text", base + lim + ["--config", "{f_toml_lr_text}"], ["lr"]),
        _row("train:set-unknown", base + lim + ["--set", "no_such=1"], ["no_such"]),
        _row("train:set-no-equals", base + lim + ["--set", "lr"], ["lr"]),
        _row("train:set-lr-text", base + lim + ["--set", "lr=fast"], ["lr"]),
        _row("train:set-lr-nan", base + lim + ["--set", "lr=nan"], ["lr"]),
        _row("train:set-lr-negative", base + lim + ["--set", "lr=-1"], ["lr"]),
        _row("train:set-batch-0", base + lim + ["--set", "batch_size=0"], ["batch_size"]),
        _row("train:set-hidden-0", base + lim + ["--set", "model.hidden=0"], ["hidden"]),
        _row("train:set-model-unknown", base + lim + ["--set", "model.wings=2"], ["wings"]),
        _row("train:device-bogus", base + lim + ["--device", "tpu:7"], ["--device"]),
        _row("train:resume-and-force", ["train", "--out", "{model}", "--resume", "--force"], ["--resume"]),
        _row("train:resume-not-a-run", ["train", "--out", "{existing_dir}", "--resume"], ["existing-dir"]),
        _row("train:resume-missing", ["train", "--out", "{missing}", "--resume"], ["path"]),
        _row("train:out-exists", ["train", "--data", "{data}", "--out", "{existing_dir}"] + lim, ["existing-dir"]),
        _row("train:out-regular-file", ["train", "--data", "{data}", "--out", "{a_file}", "--force"] + lim,
             ["a-regular-file"]),
        _row("train:out-under-file", ["train", "--data", "{data}", "--out", "{a_file}/run"] + lim,
             ["a-regular-file"]),
        _row("train:out-unwritable", ["train", "--data", "{data}", "--out", SYS_OUT] + lim, [SYS_OUT.rsplit("/", 1)[0]]),
        _row("train:out-is-data", ["train", "--data", "{data}", "--out", "{data}", "--force"] + lim, ["--out"]),
        _row("train:out-contains-data", ["train", "--data", "{d_no_val}", "--out", "{root}/datas", "--force"] + lim,
             ["--out|--force"]),
        _row("train:data-is-file", ["train", "--data", "{good_txt}", "--out", "{root}/out/run"] + lim, ["good.txt"]),
        _row("train:missing-data", ["train", "--out", "{root}/out/run"] + lim, ["--data"]),
    ]
    return r


def _generate_rows() -> list[tuple]:
    g = ["generate", "{model}", "Once", "--seed", "1"]
    r = []
    for opt, vals in (("--max-new-tokens", ("0", "-1")), ("--temperature", ("-1", "nan", "inf")),
                      ("--top-k", ("0", "-3")), ("--top-p", ("0", "1.5", "-0.1", "nan")),
                      ("--num-beams", ("0", "-1")), ("--num-samples", ("0", "-2")), ("--batch-size", ("0", "-1"))):
        for v in vals:
            r.append(_row(f"generate:{opt}={v}", g + [opt, v, "--max-new-tokens", "2"] if opt != "--max-new-tokens"
                          else g + [opt, v], [opt]))
    r += [
        _row("generate:max-new-tokens-inf", g + ["--max-new-tokens", "inf"], ["--max-new-tokens"], parse=True),
        _row("generate:num-samples-huge", g + ["--num-samples", "1000000", "--max-new-tokens", "2"],
             ["--num-samples"]),
        _row("generate:dtype-bogus", g + ["--dtype", "fp8"], ["--dtype"], parse=True),
        _row("generate:device-bogus", g + ["--device", "tpu", "--max-new-tokens", "2"], ["--device"]),
        _row("generate:prompt-and-prompts", g + ["--prompts", "{f_bad_yaml}"], ["--prompts"]),
        _row("generate:words-empty", g + ["--words", ",,,"], ["--words"]),
        _row("generate:features-unknown", g + ["--features", "Explosions"], ["Explosions"]),
        _row("generate:sentence-empty", g + ["--sentence", " "], ["--sentence"]),
        _row("generate:out-exists", ["generate", "{model}", "--prompts", str(EVAL_PROMPTS), "--out", "{a_file}"],
             ["a-regular-file"]),
        _row("generate:out-is-dir", ["generate", "{model}", "Once", "--max-new-tokens", "2", "--out", "{existing_dir}",
                                     "--force"], ["existing-dir"]),
        _row("generate:out-unwritable", ["generate", "{model}", "Once", "--max-new-tokens", "2", "--out", SYS_OUT],
             [SYS_OUT.rsplit("/", 1)[0]]),
        _row("generate:out-under-file", ["generate", "{model}", "Once", "--max-new-tokens", "2", "--out",
                                         "{a_file}/x.jsonl"], ["a-regular-file"]),
        _row("generate:out-onto-weights", ["generate", "{m_weights_nan}", "Once", "--max-new-tokens", "2", "--out",
                                           "{m_weights_nan}/model.safetensors", "--force"], ["model.safetensors"]),
        _row("generate:out-onto-own-weights", ["generate", "{good}", "Once", "--max-new-tokens", "2", "--out",
                                               "{good}/model.safetensors", "--force"], ["--out"]),
    ]
    for f in ("f_binary_yaml", "f_latin1_yaml", "f_bad_yaml", "f_number_yaml", "f_bad_json", "f_binary_txt",
              "missing", "existing_dir"):
        r.append(_row(f"generate:prompts-{f}", ["generate", "{model}", "--prompts", "{" + f + "}",
                                                 "--max-new-tokens", "2"], ["--prompts|{" + f + "}"]))
    return r


def _evaluate_rows() -> list[tuple]:
    loss = ["evaluate", "loss", "{model}", "--data", "{data}", "--out", "{root}/out/loss"]
    gpt = ["evaluate", "gpt-eval", "{model}", "--prompts", str(EVAL_PROMPTS), "--limit", "1", "--samples", "1",
           "--out", "{root}/out/gpt", "--cache", "{cache_dir}/g.jsonl", *JUDGE]
    div = ["evaluate", "diversity", "{model}", "--train", "{short_txt}", "--stories", "2", "--max-new-tokens", "2",
           "--out", "{root}/out/div"]
    probes = ["evaluate", "probes", "{model}", "--out", "{root}/out/probes", "--max-new-tokens", "2"]
    ins = ["evaluate", "instruct", "{model}", "--limit", "1", "--samples", "1", "--max-new-tokens", "2",
           "--out", "{root}/out/instr"]
    r = [
        _row("eval-loss:split-bogus", loss + ["--split", "test"], ["test"]),
        _row("eval-loss:batch-0", loss + ["--batch-size", "0"], ["--batch-size"]),
        _row("eval-loss:batch-neg", loss + ["--batch-size", "-2"], ["--batch-size"]),
        _row("eval-loss:max-tokens-0", loss + ["--max-tokens", "0"], ["--max-tokens"]),
        _row("eval-loss:max-tokens-neg", loss + ["--max-tokens", "-5"], ["--max-tokens"]),
        _row("eval-loss:out-unwritable", ["evaluate", "loss", "{model}", "--data", "{data}", "--out", SYS_OUT],
             [SYS_OUT.rsplit("/", 1)[0]]),
        _row("eval-loss:out-under-file", ["evaluate", "loss", "{model}", "--data", "{data}", "--out", "{a_file}/r"],
             ["a-regular-file"]),
    ]
    for opt, vals in (("--samples", ("0", "-1")), ("--temperature", ("-1", "nan")), ("--max-new-tokens", ("0", "-3")),
                      ("--limit", ("0", "-1")), ("--concurrency", ("0", "-1")), ("--timeout", ("0", "-1", "nan", "inf")),
                      ("--retries", ("-1",)), ("--parse-retries", ("-1",))):
        for v in vals:
            r.append(_row(f"eval-gpt:{opt}={v}", gpt + [opt, v], [opt]))
    for f in ("f_binary_yaml", "f_latin1_yaml", "f_bad_yaml", "f_number_yaml", "missing"):
        r.append(_row(f"eval-gpt:prompts-{f}", gpt + ["--prompts", "{" + f + "}"], ["--prompts|{" + f + "}"]))
        r.append(_row(f"eval-gpt:template-{f}", gpt + ["--template", "{" + f + "}"], ["--template|{" + f + "}"]))
    r += [
        _row("eval-gpt:template-missing-keys", gpt + ["--template", "{f_template_missing_keys}"], ["template.yaml"]),
        _row("eval-gpt:cache-is-weights", gpt + ["--cache", "{weights}"], ["--cache", "model.safetensors"]),
        _row("eval-gpt:cache-is-text", gpt + ["--cache", "{f_cache_text}"], ["--cache", "notes.txt"]),
        _row("eval-gpt:cache-is-dir", gpt + ["--cache", "{existing_dir}"], ["--cache"]),
        _row("eval-gpt:judge-url-bogus", gpt + ["--judge-url", "ftp://judge"], ["--judge-url"]),
        _row("eval-gpt:out-unwritable", [*gpt, "--out", SYS_OUT], [SYS_OUT.rsplit("/", 1)[0]]),
    ]
    for opt, vals in (("--stories", ("0", "-1")), ("--cut", ("0", "1", "-0.2", "nan")), ("--max-new-tokens", ("0",)),
                      ("--temperature", ("-1",))):
        for v in vals:
            r.append(_row(f"eval-diversity:{opt}={v}", div + [opt, v], [opt]))
    for f in ("f_binary_yaml", "f_latin1_yaml", "f_bad_yaml", "f_number_yaml", "missing", "f_probes_no_prompt"):
        r.append(_row(f"eval-probes:{f}", probes + ["--probes", "{" + f + "}"], ["--probes|{" + f + "}"]))
    r.append(_row("eval-probes:accept-string", probes + ["--probes", "{f_probes_accept_string}"], ["accept"]))
    r.append(_row("eval-probes:max-new-tokens-0", probes + ["--max-new-tokens", "0"], ["--max-new-tokens"]))
    for f in ("f_instr_not_records", "f_instr_binary", "f_instr_empty", "missing"):
        r.append(_row(f"eval-instruct:{f}", ins + ["--instructions", "{" + f + "}"], []))
    r += [
        _row("eval-instruct:unknown-feature", ins + ["--instructions", "{f_instr_unknown_feature}"], ["Explosions"]),
        _row("eval-instruct:samples-0", ins + ["--samples", "0"], ["--samples"]),
        _row("eval-instruct:limit-0", ins + ["--limit", "0"], ["--limit"]),
        _row("eval-instruct:max-new-tokens-0", ins + ["--max-new-tokens", "0"], ["--max-new-tokens"]),
        _row("eval-instruct:words-probe-missing", ins + ["--words-probe", "{missing}"], ["path"]),
        _row("eval-instruct:words-probe-binary", ins + ["--words-probe", "{f_instr_binary}"], ["instr-binary.txt"]),
        _row("eval-instruct:judge-url-alone", ins + ["--judge-url", "http://127.0.0.1:9/v1"], ["--judge-url"]),
        _row("eval-instruct:cache-is-weights", ins + ["--judge-model", "m", "--judge-url", "http://127.0.0.1:9/v1",
                                                      "--cache", "{weights}"], ["--cache"]),
        _row("eval-instruct:timeout-neg", ins + ["--judge-model", "m", "--judge-url", "http://127.0.0.1:9/v1",
                                                 "--timeout", "-1"], ["--timeout"]),
    ]
    cmp_ = ["evaluate", "compare"]
    r += [
        _row("eval-compare:missing", cmp_ + ["{missing}", "--plot", "{root}/out/c.png"], ["path"]),
        _row("eval-compare:no-reports", cmp_ + ["{existing_dir}", "--plot", "{root}/out/c.png"], ["existing-dir"]),
        _row("eval-compare:binary", cmp_ + ["{f_binary_txt}", "--plot", "{root}/out/c.png"], ["binary-prompts.txt"]),
        _row("eval-compare:corrupt-report", cmp_ + ["{f_report_corrupt}", "--plot", "{root}/out/c.png"], ["loss.json"]),
        _row("eval-compare:binary-report", cmp_ + ["{f_report_binary}", "--plot", "{root}/out/c.png"], ["loss.json"]),
    ]
    return r


def _instruct_rows() -> list[tuple]:
    b = ["instruct", "build", "{good_txt}", "--out", "{root}/out/instr.txt", "--no-cache"]
    r = [
        _row("instruct-build:limit-0", b + ["--limit", "0"], ["--limit"]),
        _row("instruct-build:limit-neg", b + ["--limit", "-3"], ["--limit"]),
        _row("instruct-build:draws-0", b + ["--draws", "0"], ["--draws"]),
        _row("instruct-build:frequency-0", b + ["--frequency-stories", "0"], ["--frequency-stories"]),
        _row("instruct-build:summarizer-url-alone", b + ["--summarizer-url", "http://127.0.0.1:9/v1"],
             ["--summarizer"]),
        _row("instruct-build:summary-cache-weights", ["instruct", "build", "{good_txt}", "--out", "{root}/out/i.txt",
                                                      "--summarizer-url", "http://127.0.0.1:9/v1",
                                                      "--summarizer-model", "m", "--summary-cache", "{weights}"],
             ["model.safetensors"]),
        _row("instruct-build:out-exists", ["instruct", "build", "{good_txt}", "--out", "{a_file}"], ["a-regular-file"]),
        _row("instruct-build:out-is-dir", ["instruct", "build", "{good_txt}", "--out", "{existing_dir}", "--force",
                                           "--words-pick", "any"], ["existing-dir"]),
        _row("instruct-build:out-unwritable", ["instruct", "build", "{good_txt}", "--out", SYS_OUT + ".txt",
                                               "--words-pick", "any"], [SYS_OUT.rsplit("/", 1)[0]]),
        _row("instruct-build:out-under-file", ["instruct", "build", "{good_txt}", "--out", "{a_file}/x.txt",
                                               "--words-pick", "any"], ["a-regular-file"]),
        _row("instruct-build:out-is-source", ["instruct", "build", "{good_txt}", "--out", "{good_txt}", "--force"],
             ["--out"]),
        _row("instruct-build:words-pick-bogus", b + ["--words-pick", "common"], ["--words-pick"], parse=True),
    ]
    for f in ("f_instr_not_records", "f_instr_binary", "f_instr_empty", "missing", "f_latin1_yaml"):
        r.append(_row(f"instruct-check:{f}", ["instruct", "check", "{" + f + "}", "--against", "{good_txt}"], []))
    r.append(_row("instruct-check:unknown-feature", ["instruct", "check", "{f_instr_unknown_feature}", "--against",
                                                     "{good_txt}"], ["Explosions"]))
    return r


def _export_rows() -> list[tuple]:
    return [
        _row("export:out-is-model", ["export", "{model}", "--out", "{model}", "--force"], ["--out"]),
        _row("export:out-inside-model", ["export", "{model}", "--out", "{model}/hf"], ["--out"]),
        _row("export:out-contains-model", ["export", "{good}", "--out", "{root}/models", "--force"], ["--out"]),
        _row("export:out-exists", ["export", "{model}", "--out", "{existing_dir}"], ["existing-dir"]),
        _row("export:out-regular-file", ["export", "{model}", "--out", "{a_file}", "--force"], ["a-regular-file"]),
        _row("export:out-under-file", ["export", "{model}", "--out", "{a_file}/hf"], ["a-regular-file"]),
        _row("export:out-unwritable", ["export", "{model}", "--out", SYS_OUT], [SYS_OUT.rsplit("/", 1)[0]]),
        _row("export:missing-out", ["export", "{model}"], ["--out"], parse=True),
    ]


def _new_verb_rows() -> list[tuple]:
    """inspect, serve and synth: their options (the model cases are in _model_verbs)."""
    att = ["inspect", "attention", "{model}", "--data", "{good_txt}", "--out", "{root}/out/insp", "--text", "Once"]
    neu = ["inspect", "neurons", "{model}", "--data", "{good_txt}", "--out", "{root}/out/insp"]
    r = [
        _row("inspect-attention:stories-0", att + ["--stories", "0"], ["--stories"]),
        _row("inspect-attention:stories-neg", att + ["--stories", "-1"], ["--stories"]),
        _row("inspect-attention:data-missing", att + ["--stories", "2", "--data", "{missing}"], ["path"]),
        _row("inspect-attention:data-binary", att + ["--stories", "2", "--data", "{src_binary}"], ["binary.txt"]),
        _row("inspect-attention:out-unwritable", ["inspect", "attention", "{model}", "--data", "{good_txt}",
                                                  "--stories", "2", "--text", "Once", "--out", SYS_OUT],
             [SYS_OUT.rsplit("/", 1)[0]]),
        _row("inspect-attention:max-new-tokens-0", att[:-2] + ["--prompt", "Once", "--max-new-tokens", "0"],
             ["--max-new-tokens"]),
        _row("inspect-attention:text-and-prompt", att + ["--prompt", "Once"], ["--text"]),
        _row("inspect-neurons:layer-99", neu + ["--stories", "2", "--layer", "99"], ["--layer"]),
        _row("inspect-neurons:layer-neg", neu + ["--stories", "2", "--layer", "-5"], ["--layer"]),
        _row("inspect-neurons:top-k-0", neu + ["--stories", "2", "--top-k", "0"], ["--top-k"]),
        _row("inspect-neurons:stories-0", neu + ["--stories", "0"], ["--stories"]),
    ]
    sv = ["serve", "{model}", "--port", "0"]
    for opt, vals in (("--max-batch", ("0", "-1")), ("--max-queue", ("-1",)), ("--max-tokens", ("0", "-1")),
                      ("--max-body-bytes", ("0",)), ("--shutdown-timeout", ("-1", "nan")), ("--port", ("-1", "70000")),
                      ("--threads", ("0",))):
        for v in vals:
            r.append(_row(f"serve:{opt}={v}", sv + [opt, v], [opt]))
    r.append(_row("serve:dtype-bogus", sv + ["--dtype", "fp8"], ["--dtype"], parse=True))
    sy = ["synth", "--out", "{root}/out/synth.jsonl", "--n", "2", "--llm-model", "m",
          "--llm-url", "http://127.0.0.1:9/v1", "--retries", "0"]
    for opt, vals in (("--n", ("0", "-1")), ("--feature-prob", ("-0.1", "1.5", "nan")), ("--temperature", ("-1",)),
                      ("--story-tokens", ("0",)), ("--min-words", ("-1",)), ("--concurrency", ("0",)),
                      ("--timeout", ("-1",)), ("--retries", ("-1",)), ("--max-tokens", ("0",)), ("--max-cost", ("-1",))):
        for v in vals:
            r.append(_row(f"synth:{opt}={v}", sy + [opt, v], [opt]))
    r += [
        _row("synth:min-over-max", sy + ["--min-words", "500", "--max-words", "100"], ["--min-words|--max-words"]),
        _row("synth:vocab-missing", sy + ["--vocab", "{missing}"], ["path"]),
        _row("synth:vocab-binary", sy + ["--vocab", "{f_binary_txt}"], ["binary-prompts.txt"]),
        _row("synth:template-missing", sy + ["--template", "{missing}"], ["path"]),
        _row("synth:template-binary", sy + ["--template", "{f_binary_yaml}"], ["binary.yaml"]),
        _row("synth:template-bad-yaml", sy + ["--template", "{f_bad_yaml}"], ["bad.yaml"]),
        _row("synth:out-is-dir", ["synth", "--out", "{existing_dir}", "--n", "2", "--llm-model", "m",
                                  "--llm-url", "http://127.0.0.1:9/v1"], ["existing-dir"]),
        _row("synth:out-unwritable", ["synth", "--out", SYS_OUT + ".jsonl", "--n", "2", "--llm-model", "m",
                                      "--llm-url", "http://127.0.0.1:9/v1"], [SYS_OUT.rsplit("/", 1)[0]]),
        _row("synth:out-under-file", ["synth", "--out", "{a_file}/s.jsonl", "--n", "2", "--llm-model", "m",
                                      "--llm-url", "http://127.0.0.1:9/v1"], ["a-regular-file"]),
        _row("synth:out-is-source-vocab", sy[:1] + ["--out", "{f_cache_text}", "--force", "--vocab", "{f_cache_text}"]
             + sy[3:], ["--out|notes.txt"]),
    ]
    return r


def _clean_rows() -> list[tuple]:
    return [
        _row("clean:missing", ["clean", "{missing}"], ["path"]),
        _row("clean:no-args", ["clean"], ["PATH"], parse=True),
    ]


def _output_rows() -> list[tuple]:
    """Outputs that cannot be written, for the verbs that write a directory."""
    r = []
    for verb, argv in (("prepare", ["prepare", "{good_txt}", "--vocab-size", "300", "--out"]),
                       ("train", ["train", "--data", "{data}", "--max-steps", "2", "--out"])):
        r.append(_row(f"{verb}:out-unwritable", argv + [SYS_OUT], [SYS_OUT.rsplit("/", 1)[0]]))
        r.append(_row(f"{verb}:out-under-file", argv + ["{a_file}/out"], ["a-regular-file"]))
        r.append(_row(f"{verb}:out-regular-file-force", argv + ["{a_file}", "--force"], ["a-regular-file"]))
    return [x for x in r if not x[0].startswith("train:out-")]  # train's are in _train_rows


CASES = _cases()


def test_matrix_is_big_enough():
    verbs = {c[0].split(":")[0].split("-")[0] for c in CASES}
    assert len(CASES) >= 300, len(CASES)
    assert {"prepare", "presets", "train", "generate", "eval", "instruct", "export", "clean", "inspect", "serve",
            "synth"} <= verbs, verbs
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"


def _fmt(x: str, p: dict[str, Path]) -> str:
    return x.format(**{k: str(v) for k, v in p.items()})


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("the case ran for 120 s: a hang, or work that should have been refused")


@pytest.mark.parametrize(
    "cid,argv,needles,xfail,parse",
    [pytest.param(*c[:5], id=c[0], marks=([pytest.mark.xfail(strict=True, reason=c[3])] if c[3] else [])
                  + ([pytest.mark.slow] if c[5] else [])) for c in CASES])
def test_bad_input(ws, capsys, monkeypatch, cid, argv, needles, xfail, parse):
    from tinystories.cli import main

    monkeypatch.setenv("TINYSTORIES_CACHE", str(ws["cache_dir"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = [_fmt(a, ws) for a in argv]
    roots = [ws["root"], ws["model"], ws["data"]]
    out_paths = [Path(a) for a in args if a.startswith(str(ws["root"] / "out"))]
    before = _snapshot(roots)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        try:
            rc = main(args)
        except SystemExit as e:  # argparse / the CLI framework's own parse errors
            rc = e.code if isinstance(e.code, int) else 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    after = _snapshot(roots)
    changed = sorted(set(before.items()) ^ set(after.items()))
    for new in sorted(set(after) - set(before), key=len):  # so that one failure does not fail the next cases
        if os.path.isdir(new) and not os.path.islink(new):
            shutil.rmtree(new, ignore_errors=True)
        elif os.path.lexists(new):
            os.unlink(new)
    assert rc not in (0, None), f"accepted: {args}"
    assert "Traceback" not in err, err
    assert not changed, f"files changed: {changed[:5]}"
    for p in out_paths:
        assert not p.exists(), f"{p} was written"
    text = err if parse else "\n".join(lines)
    if not parse:
        assert len(lines) == 1, err
        assert lines[0].startswith("tinystories "), lines[0]
    for n in needles:
        alternatives = _fmt(n, ws).split("|")
        alternatives += [a[2:].replace("-", "_") for a in alternatives if a.startswith("--")]
        assert any(a in text for a in alternatives), text


# ---------------------------------------------------------------- beyond the matrix

def test_permission_denied_names_the_file(tmp_path):
    """Root writes anywhere, so the matrix's unwritable outputs are EPERM under /sys; EACCES (a read-only
    directory for a normal user) goes through the same boundary."""
    from tinystories.errors import user_message

    e = PermissionError(13, "Permission denied", str(tmp_path / "ro" / "data"))
    msg = user_message(e)
    assert msg == f"{tmp_path / 'ro' / 'data'}: permission denied; check its permissions or pick another path"


def test_disk_full_is_one_line(ws, capsys):
    """ENOSPC from a real (tiny) file system would need a mount; /dev/full gives the same errno."""
    from tinystories.errors import user_message

    try:
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 65536)
            f.flush()
    except OSError as e:
        msg = user_message(e)
    else:
        pytest.skip("/dev/full accepted the write")
    assert msg is not None and "disk is full" in msg and "\n" not in msg


def test_a_bug_keeps_its_traceback():
    from tinystories.errors import user_message

    assert user_message(KeyError("x")) is None
    assert user_message(ZeroDivisionError()) is None
    assert user_message(FileNotFoundError(2, "No such file or directory")) is None  # unnamed: ours to fix


def test_shared_data_is_untouched_by_the_matrix():
    """The matrix reads the shared slices; they must be what MANIFEST.md says (never written by a test)."""
    assert SHARED.is_dir() and TRAIN_TXT.stat().st_size > 0


# ---------------------------------------------------------------- pathological inputs are bounded

def test_one_huge_word_is_split_before_bpe(tmp_path):
    """A 2 MB "word" (no whitespace) never finished BPE training; cut into 128-character pieces it takes
    seconds, and the token files still decode to the exact text."""
    import random
    import time

    from tinystories.data.prepare import load_data_dir, prepare

    rng = random.Random(0)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2_000_000))
    src = tmp_path / "word.txt"
    src.write_text(_good_text(100) + f"Once upon a time {word} the end.\n<|endoftext|>\n", encoding="utf-8")
    t0 = time.time()
    prepare([src], tmp_path / "data", vocab_size=400, val_fraction=0.5, seed=3)
    seconds = time.time() - t0
    dd = load_data_dir(tmp_path / "data")
    stories = [s for split in ("train", "val") for s in dd.stories(split)]
    assert f"Once upon a time {word} the end." in stories
    assert seconds < 120, seconds


def test_a_huge_document_is_refused_in_one_line(tmp_path, capsys):
    from tinystories.cli import main
    from tinystories.data.sources import MAX_DOCUMENT_CHARS

    src = tmp_path / "one-line.txt"
    src.write_text(("a few words " * (MAX_DOCUMENT_CHARS // 12 + 10)), encoding="utf-8")  # no <|endoftext|>
    rc = main(["prepare", str(src), "--out", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "one-line.txt" in err and "<|endoftext|>" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one-line.txt"]
