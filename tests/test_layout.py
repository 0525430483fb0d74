"""The package's layering: arrows between subpackages point one way, and no module imports itself
back through others. Every import counts, including the ones inside functions (they hide cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "tinystories"

# Lowest first: a module may import from its own layer's subpackage or any layer below it.
LAYERS = [
    {"errors"},
    {"runtime"},
    {"kernels"},
    {"llm"},
    {"data"},
    {"model"},
    {"generate"},
    {"evaluate"},
    {"train"},
    {"inspect", "serve"},
    {"cli", "__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that `name` imports (resolved: `from . import x` of a module counts as x)."""
    is_pkg = path.name == "__init__.py"
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "tinystories":
                target = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names if a.name.startswith("tinystories.")}
    return {m for m in found if m and m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _top(module: str) -> str:
    return module.split(".")[0]


def test_every_subpackage_has_a_layer():
    unknown = {_top(m) for m in _graph()} - set(RANK)
    assert not unknown, f"add {sorted(unknown)} to LAYERS in this test (and the README's Layout)"


def test_imports_point_down_the_pipeline():
    bad = [f"{src} -> {dst}" for src, dsts in _graph().items() for dst in dsts
           if RANK.get(_top(dst), 0) > RANK.get(_top(src), 0)]
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above must be able to fail: a planted pair of modules shows both faults."""
    pkg = tmp_path / "tinystories"
    (pkg / "data").mkdir(parents=True)
    (pkg / "model").mkdir()
    for d in (pkg, pkg / "data", pkg / "model"):
        (d / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from ..model.b import f\n")
    (pkg / "model" / "b.py").write_text("def f():\n    from ..data.a import g\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    graph = _graph()
    assert graph["data.a"] == {"model.b"} and graph["model.b"] == {"data.a"}
    try:
        test_imports_point_down_the_pipeline()
    except AssertionError as e:
        assert "data.a -> model.b" in str(e)
    else:
        raise AssertionError("the upward import was not seen")
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "data.a -> model.b -> data.a" in str(e)
    else:
        raise AssertionError("the cycle was not seen")


def test_the_readme_layout_names_every_subpackage_and_module():
    """The README's Layout table is how a newcomer finds things: it must match the tree."""
    readme = (PKG.parents[1] / "README.md").read_text(encoding="utf-8")
    layout = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    missing = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG)
        if rel.name == "__init__.py" or "__pycache__" in rel.parts:
            continue
        if rel.name not in layout:
            missing.append(str(rel))
    for d in sorted(q for q in PKG.iterdir() if (q / "__init__.py").is_file()):
        if f"{d.name}/" not in layout:
            missing.append(f"{d.name}/")
    assert not missing, f"the README's Layout section does not name: {missing}"
