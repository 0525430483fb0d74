"""How a verb declares its command line: a typed dataclass, whose fields are the flags, and a handler.

The flags are generated from the dataclass by tyro, so a flag cannot exist without its field or the other
way round. tyro and jsonargparse were measured on the same two-verb prototype (2 cores, load ~1):
`VERB --help` took 0.37-0.40 s with tyro and 0.36-0.37 s with jsonargparse (0.15 s for hand-written
argparse). They tie on speed; tyro keeps our spellings (--max-new-tokens, positional MODEL_DIR, nested
blocks flattened), where jsonargparse spells fields --max_new_tokens and --judge.judge_url.

Verb modules mark fields with the light stand-ins here (`Positional[T]`, `arg(metavar=...)`,
`UseAppendAction`), which `tyro_class` swaps for tyro's own when a verb runs: `tinystories --help` lists the
verbs without importing tyro (~0.13 s of imports).

A field's help is its docstring (the string under it); a shared block (llm/config.py, generate/options.py,
...) is a field whose type is that dataclass, and its flags carry no prefix. `view(...)` gives a config or block
other flag names for one verb (--judge-url, --summarizer-url) without declaring its fields again.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated, Any

# ---------------------------------------------------------------- markers (tyro's, without importing tyro)

@dataclass(frozen=True)
class _Arg:
    name: str | None = None
    metavar: str | None = None
    help: str | None = None


@dataclass(frozen=True)
class _Mark:
    name: str  # a tyro.conf marker: Positional, Suppress, UseAppendAction, FlagCreatePairsOff


def arg(*, name: str | None = None, metavar: str | None = None, help: str | None = None) -> _Arg:
    """tyro.conf.arg: another flag name, the value's metavar, or help other than the field's docstring."""
    return _Arg(name, metavar, help)


class _Positional:
    def __getitem__(self, hint):
        return Annotated[hint, POSITIONAL]


POSITIONAL, SUPPRESS = _Mark("Positional"), _Mark("Suppress")
UseAppendAction, FlagCreatePairsOff = _Mark("UseAppendAction"), _Mark("FlagCreatePairsOff")
Positional = _Positional()  # Positional[str]: a positional argument (MODEL_DIR), not a --flag


@dataclass(frozen=True)
class Command:
    """One verb (or one subcommand of a group verb such as `evaluate`).

    config: a dataclass; its fields are the flags. run: the handler, called with the parsed config; it
    imports torch and friends inside, so that `--help` stays fast. subcommands: for a group verb, instead
    of config and run."""
    name: str
    help: str
    config: type | None = None
    run: Callable[[Any], int | None] | None = None
    description: str | None = None
    subcommands: tuple[Command, ...] = ()

    def config_class(self) -> type:
        """The config dataclass; `config` may be a function that builds it (a view of a library config),
        so that `tinystories --help` does not import the libraries."""
        return self.config if isinstance(self.config, type) else self.config()


# ---------------------------------------------------------------- parsing

def _tyro_config() -> tuple:
    import tyro

    # blocks are flattened: GptEvalArgs.judge.concurrency is --concurrency, not --judge.concurrency
    return (tyro.conf.OmitArgPrefixes,)


def parse(cmd: Command, argv: list[str], prog: str) -> tuple[Command, Any]:
    """The leaf command named by argv and its config, built from argv by tyro (exit 2 on a bad flag)."""
    if cmd.subcommands:
        names = {c.name: c for c in cmd.subcommands}
        if argv and argv[0] in names:
            return parse(names[argv[0]], argv[1:], f"{prog} {argv[0]}")
        _group_parser(cmd, prog).parse_args(argv)  # prints the group's help, or its usage error (exit 2)
        raise SystemExit(2)
    import tyro

    config = tyro_class(cmd.config_class())
    cfg = tyro.cli(config, args=argv, prog=prog, description=cmd.description or cmd.help, config=_tyro_config())
    _require_positional_lists(config, cfg, prog)
    object.__setattr__(cfg, "_given", frozenset(given_in(config, argv)))
    return cmd, cfg


@functools.cache
def tyro_class(config: type) -> type:
    """`config` with our markers swapped for tyro's and each field's docstring as its help: a subclass, so
    that the parsed config is a `config` (and nested blocks likewise)."""
    import tyro

    hints = typing.get_type_hints(config, include_extras=True)
    docs = field_docs(config)
    fields, changed = [], False
    for f in dataclasses.fields(config):
        base, marks = _unwrap(hints[f.name])
        new_base = tyro_class(base) if dataclasses.is_dataclass(base) else base
        a = next((m for m in marks if _is_arg(m)), _Arg())  # ours, or tyro.conf.arg written directly
        tmarks = [tyro.conf.arg(name=a.name, metavar=a.metavar, help=a.help or docs.get(f.name))]
        tmarks += [getattr(tyro.conf, m.name) for m in marks if isinstance(m, _Mark)]
        tmarks += [m for m in marks if not isinstance(m, _Mark) and not _is_arg(m)]
        changed = changed or new_base is not base or len(marks) > 0 or f.name in docs
        if f.default_factory is not dataclasses.MISSING:
            factory = new_base if f.default_factory is base and new_base is not base else f.default_factory
            spec = dataclasses.field(default_factory=factory, kw_only=f.kw_only)
        elif f.default is not dataclasses.MISSING:
            spec = dataclasses.field(default=f.default, kw_only=f.kw_only)
        else:
            spec = dataclasses.field(kw_only=f.kw_only)
        fields.append((f.name, Annotated[(new_base, *tmarks)], spec))
    if not changed:
        return config
    return dataclasses.make_dataclass(config.__name__, fields, bases=(config,))


def _require_positional_lists(config: type, cfg: Any, prog: str) -> None:
    """tyro accepts zero values for a positional list (SOURCE...) even without a default; argparse did not."""
    hints = typing.get_type_hints(config, include_extras=True)
    for f in dataclasses.fields(config):
        base, marks = _unwrap(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and typing.get_origin(base) is list and any(_is_marker(m, "Positional") for m in marks) \
                and not getattr(cfg, f.name):
            name = next((m.metavar for m in marks if _is_arg(m) and m.metavar), f.name.upper())
            print(f"usage: {prog} [-h] [OPTIONS] {name} [{name} ...]\n"
                  f"{prog}: error: the following arguments are required: {name}", file=sys.stderr)
            raise SystemExit(2)


def _group_parser(cmd: Command, prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=cmd.description or cmd.help)
    sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    for c in cmd.subcommands:
        sub.add_parser(c.name, help=c.help, add_help=False)
    return p


def given(cfg: Any) -> frozenset[str]:
    """The fields (dotted for blocks: judge.url) whose flags the user typed, even when equal to the default."""
    return getattr(cfg, "_given", frozenset())


def given_in(cls: type, argv: list[str]) -> set[str]:
    """Which of cls's fields argv names (`--flag`, `--flag=value`, `--no-flag`)."""
    table = flag_table(cls)
    out = set()
    for tok in argv:
        if tok == "--":
            break
        path = table.get(tok.split("=", 1)[0])
        if path:
            out.add(path)
    return out


@functools.cache
def flag_table(cls: type, prefix: str = "") -> dict[str, str]:
    """Every option string tyro makes for cls, mapped to its field's dotted path (positionals left out)."""
    table: dict[str, str] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        base, marks = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(base):
            table.update(flag_table(base, f"{prefix}{f.name}."))
            continue
        if any(_is_marker(m, "Positional") or _is_marker(m, "Suppress") for m in marks):
            continue
        name = next((m.name for m in marks if _is_arg(m) and m.name), None) or f.name.replace("_", "-")
        table[f"--{name}"] = prefix + f.name
        if base is bool and not any(_is_marker(m, "FlagCreatePairsOff") for m in marks):
            table[f"--no-{name}"] = prefix + f.name
    return table


def _unwrap(hint: Any) -> tuple[Any, list]:
    marks: list = []
    while typing.get_origin(hint) is Annotated:
        hint, *extra = typing.get_args(hint)
        marks.extend(extra)
    return hint, marks


def _is_marker(m: Any, name: str) -> bool:
    """Ours (_Mark) or tyro's own marker of that name."""
    return m == _Mark(name) or (type(m).__module__.startswith("tyro") and repr(m) == name)


def _is_arg(m: Any) -> bool:
    return isinstance(m, _Arg) or type(m).__name__ == "_ArgConfig"


# ---------------------------------------------------------------- a config as one verb shows it

def view(config: type, *, names: dict[str, str] | None = None, metavars: dict[str, str] | None = None,
         positional: tuple[str, ...] = (), hide: tuple[str, ...] = (), types: dict[str, type] | None = None,
         required: tuple[str, ...] = (), **defaults) -> type:
    """A subclass of the dataclass `config` whose fields keep their types, help and (unless given here)
    defaults, shown the way one verb shows them: `names` renames flags (view(LLMConfig, names={"url":
    "judge-url"}) makes --judge-url), `metavars` names their values, `positional` fields take no dashes,
    fields in `hide` take no flag, fields in `required` lose their default, `types` swaps a block field
    for its own view, and keyword arguments change defaults. Instances are instances of `config`, so the handler passes them on as they are.
    A bool field named no_* is one flag (--no-cache), not a pair."""
    names, metavars, types = names or {}, metavars or {}, types or {}
    known = {f.name for f in dataclasses.fields(config)}
    for key in (*names, *metavars, *positional, *hide, *types, *required, *defaults):
        assert key in known, f"{config.__name__} has no field {key}"
    hints = typing.get_type_hints(config, include_extras=True)
    fields = []
    for f in dataclasses.fields(config):
        hint = types.get(f.name, hints[f.name])
        marks: list = [arg(name=names.get(f.name), metavar=metavars.get(f.name))]
        marks += [SUPPRESS] if f.name in hide else []
        marks += [POSITIONAL] if f.name in positional else []
        marks += [FlagCreatePairsOff] if hint is bool and f.name.startswith("no_") else []
        if f.name in required:
            spec = dataclasses.field(kw_only=True)
        elif f.name in defaults:
            spec = dataclasses.field(default_factory=lambda v=defaults[f.name]: v, kw_only=f.kw_only)
        elif f.name in types:
            spec = dataclasses.field(default_factory=types[f.name], kw_only=f.kw_only)
        elif f.default_factory is not dataclasses.MISSING:
            spec = dataclasses.field(default_factory=f.default_factory, kw_only=f.kw_only)
        elif f.default is not dataclasses.MISSING:
            spec = dataclasses.field(default=f.default, kw_only=f.kw_only)
        else:
            spec = dataclasses.field(kw_only=f.kw_only)
        fields.append((f.name, Annotated[(hint, *marks)], spec))
    cls = dataclasses.make_dataclass(config.__name__, fields, bases=(config,))
    # the renames, for error messages that name the flag as typed (LLMConfig.flag: "--judge-url -1: ...")
    cls.__flag_names__ = {**getattr(config, "__flag_names__", {}), **names}
    return cls


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings under a dataclass's fields (`x: int = 1` then `\"\"\"help\"\"\"`), by field name, its bases' too."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        module = sys.modules.get(klass.__module__) if klass.__module__ not in ("builtins", "types") else None
        docs.update(_module_docs(getattr(module, "__file__", None) or "").get(klass.__qualname__, {}))
    return docs


@functools.cache
def _module_docs(path: str) -> dict[str, dict[str, str]]:
    """Field docstrings of every top-level class in a source file (one parse per file, not per class:
    inspect.getsource re-reads the file for each class, 70 ms of `evaluate gpt-eval --help`)."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return {}
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {stmt.target.id: inspect.cleandoc(nxt.value.value)
                              for stmt, nxt in pairwise(node.body)
                              if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                              and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                              and isinstance(nxt.value.value, str)}
    return out
