"""The CLI is generated from typed configs (cli/command.py): flags and fields agree, the fields the user
typed are recorded, and the budget planner keeps a --set value even when it equals the default."""

from __future__ import annotations

import json
import subprocess
import sys
import typing

import pytest
from conftest import assert_one_line_error, cli_env

from tinystories.cli import COMMANDS
from tinystories.cli.command import flag_table, given, parse
from tinystories.train.config import TrainConfig, build_config


def _leaves():
    import importlib

    def walk(cmd, prog):
        if cmd.subcommands:
            for c in cmd.subcommands:
                yield from walk(c, f"{prog} {c.name}")
        else:
            yield prog, cmd

    for name in COMMANDS:
        module = importlib.import_module(f"tinystories.cli.{name}")
        if hasattr(module, "COMMAND"):
            yield from walk(module.COMMAND, f"tinystories {name}")


LEAVES = list(_leaves())


@pytest.mark.parametrize("prog,cmd", LEAVES, ids=[p for p, _ in LEAVES])
def test_every_flag_is_a_field_and_every_field_a_flag(prog, cmd, capsys):
    """The help tyro prints lists exactly the option strings our table derives from the dataclass."""
    import re

    import tyro

    from tinystories.cli.command import _tyro_config, tyro_class

    with pytest.raises(SystemExit) as e:
        tyro.cli(tyro_class(cmd.config_class()), args=["--help"], prog=prog, config=_tyro_config())
    assert e.value.code == 0
    shown = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", capsys.readouterr().out)) - {"--help"}
    table = set(flag_table(cmd.config_class()))
    assert table <= shown, f"{prog}: fields without a flag in --help: {table - shown}"
    assert shown <= table, f"{prog}: flags without a field: {shown - table}"


def test_the_flags_the_user_typed_are_recorded():
    from tinystories.cli.train import COMMAND

    _, args = parse(COMMAND, ["--out", "r", "--data=d", "--max-time", "2m", "--set", "lr=1e-3", "--no-json"],
                    "tinystories train")
    assert given(args) == {"out", "data", "max_time", "sets", "json"}
    cfg = build_config(sets=args.sets, data=args.data, out=args.out, max_time=120.0)
    # lr equals the default, and is still the user's
    assert cfg.lr == TrainConfig().lr == 1e-3
    assert set(cfg.given) == {"data", "out", "max_time", "lr"}
    # a saved config keeps its record, and a replaced one too
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.given == cfg.given and again.replace(batch_size=4).given == cfg.given


def test_recipe_keys_count_as_given():
    cfg = build_config(recipe="paper", out="r")
    assert {k for k in ("lr", "batch_size") if k in cfg.given}, cfg.given


@pytest.mark.parametrize("sets,needles", [
    (["lerning_rate=1e-3"], ("unknown config key 'lerning_rate'", "lr")),
    (["batch_size=abc"], ("batch_size must be an integer", "'abc'")),
    (["lr=fast"], ("lr must be a number",)),
    (["model.headz=2"], ("model.headz", "model.heads")),
    (["tensorboard=maybe"], ("tensorboard must be true or false",)),
    (["lr"], ("expected key=value",)),
])
def test_set_errors_are_one_line_naming_the_key(sets, needles, tmp_path, capsys):
    from tinystories.cli import main

    args = [a for s in sets for a in ("--set", s)]
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert_one_line_error(subprocess.CompletedProcess([], rc, "", err), *needles)


def test_set_values_are_typed():
    cfg = build_config(sets=["batch_size=16", "lr=3e-4", "max_tokens=5e6", "max_time=20m", "tensorboard=yes",
                             "compile=false", "decay_steps=none", "model.dropout=0.1", "warmup_steps=1_000"])
    assert (cfg.batch_size, cfg.lr, cfg.max_tokens, cfg.max_time) == (16, 3e-4, 5_000_000, 1200.0)
    assert (cfg.tensorboard, cfg.compile, cfg.decay_steps, cfg.warmup_steps) == (True, "off", None, 1000)
    assert cfg.model == {"dropout": 0.1} and isinstance(cfg.lr, float) and isinstance(cfg.batch_size, int)


def test_help_is_fast_and_loads_no_torch():
    code = ("import sys, contextlib, io\n"
            "from tinystories.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['evaluate', 'gpt-eval', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_bad_input_fails_before_torch_loads(tmp_path):
    """A bad path or option is told in a moment: each verb checks what it was given before it imports torch
    (2.2 s on the 2-core machine). The machine module once imported torch for every verb that names a device."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(["train", "--data", empty, "--out", tmp_path / "r", "--set", "lerning_rate=1"], "lerning_rate"),
             (["train", "--data", empty, "--out", tmp_path / "r", "--max-steps", 3, "--set", "keep_best=true",
               "--set", "eval_every=0"], "keep_best"),
             (["evaluate", "loss", empty, "--data", empty], "not a model directory"),
             (["evaluate", "instruct", tmp_path / "nomodel"], "no such model directory"),
             (["inspect", "attention", tmp_path / "nomodel", "--text", " "], "--text/--prompt is empty"),
             (["inspect", "neurons", tmp_path / "nomodel"], "no such model directory"),
             (["export", tmp_path / "nomodel", "--out", tmp_path / "x"], "no such model directory")]
    code = ("import contextlib, io, json, sys\n"
            "from tinystories.cli import main\n"
            "out = []\n"
            "for argv, _ in json.loads(sys.argv[1]):\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        rc = main(argv)\n"
            "    out.append([rc, err.getvalue()])\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'runs': out}))\n")
    arg = json.dumps([[list(map(str, argv)), needle] for argv, needle in cases])
    proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for (argv, needle), (rc, err) in zip(cases, got["runs"]):
        assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, (argv, rc, err)
    assert not got["torch"]


def test_plan_keeps_a_given_field_equal_to_the_default(tiny_data):
    import torch

    from tinystories.data.prepare import load_data_dir
    from tinystories.train.budget import plan

    data, lines = load_data_dir(tiny_data), []
    cfg = TrainConfig.from_dict({"data": str(tiny_data), "out": "x", "max_time": 120, "threads": 1, "lr": 1e-3})
    new, choice = plan(cfg, data, torch.device("cpu"), say=lines.append)
    assert new.lr == 1e-3 and choice["kept"] == ["lr"] and "lr" not in choice["picked"]
    assert any("(yours: lr)" in line for line in lines), lines


def test_the_judge_block_is_one_declaration_shared_by_three_verbs():
    """gpt-eval, evaluate instruct and instruct build show the same LLMConfig fields, under their own names."""
    from tinystories.cli import evaluate, instruct
    from tinystories.llm.config import LLMConfig

    def leaf(cmd, name):
        return next(c for c in cmd.subcommands if c.name == name).config_class()

    gpt, inst, build = leaf(evaluate.COMMAND, "gpt-eval"), leaf(evaluate.COMMAND, "instruct"), \
        leaf(instruct.COMMAND, "build")
    for cls, block in ((gpt, "judge"), (inst, "judge"), (build, "summarizer")):
        paths = set(flag_table(cls).values())
        assert {f"{block}.{f}" for f in ("url", "key_env", "concurrency", "timeout", "retries", "cache",
                                          "no_cache")} <= paths, (cls, paths)
        assert issubclass(typing.get_type_hints(cls)[block], LLMConfig)
    assert flag_table(gpt)["--judge-url"] == "judge.url" and flag_table(build)["--summarizer-url"] == "summarizer.url"
    assert flag_table(build)["--summary-cache"] == "summarizer.cache" and "--no-no-cache" not in flag_table(gpt)


def test_blocks_are_the_python_api(tmp_path, monkeypatch):
    from tinystories.evaluate.gpt_eval import GptEvalConfig
    from tinystories.generate.options import Sampling
    from tinystories.llm.config import JudgeConfig, LLMConfig

    # the older flat keywords land in the block
    flat = GptEvalConfig("m", "j", judge_url="http://h/v1", max_retries=2, cache="", template="t.yaml")
    nested = GptEvalConfig("m", "j", judge=JudgeConfig(url="http://h/v1", retries=2, cache="", template="t.yaml"))
    assert flat == nested and flat.judge.cache_file("x.jsonl") is None
    monkeypatch.setenv("TINYSTORIES_JUDGE_URL", "http://env/v1")
    monkeypatch.setenv("TINYSTORIES_CACHE", str(tmp_path))
    llm = LLMConfig(timeout=3.0)
    assert llm.resolved_url() == "http://env/v1" and llm.client("m").model == "m"
    assert llm.cache_file("a.jsonl").name == "a.jsonl" and LLMConfig(no_cache=True).cache_file("a.jsonl") is None
    assert Sampling(temperature=0.0, seed=3).kwargs()["seed"] == 3
    with pytest.raises(Exception, match="--top-p"):
        Sampling(top_p=2.0).check()
