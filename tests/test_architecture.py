"""The package layout of ARCHITECTURE.md holds: imports between the four parts run one way, there
are no import cycles, and no `psr` module is imported inside a function."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "psr"

# lower rank may not import higher rank
RANK = {"engines": 0, "library": 1, "study": 2, "tools": 3}


def part(module: str) -> str:
    second = module.split(".")[1] if "." in module else ""
    if second in ("engines", "study", "tools"):
        return second
    if second in ("cli", "__main__"):
        return "tools"
    return "library"


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def imported(node: ast.AST, known: set[str]) -> list[str]:
    """The psr modules an import statement names (`from psr import x` names `psr.x` if a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "psr"]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "psr":
        subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        return subs or [node.module]
    return []


def top_level_imports(tree: ast.Module, known: set[str]) -> set[str]:
    found = set()
    for node in tree.body:
        for name in imported(node, known):
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            found.add(name)
    return found


def test_parts_import_one_way():
    mods = modules()
    wrong = []
    for name, tree in mods.items():
        for target in top_level_imports(tree, set(mods)):
            if target != "psr" and RANK[part(target)] > RANK[part(name)]:
                wrong.append(f"{name} ({part(name)}) imports {target} ({part(target)})")
    assert not wrong, "\n".join(wrong)


def test_engines_import_nothing_else_from_psr():
    mods = modules()
    wrong = [f"{n} imports {t}" for n, tree in mods.items() if part(n) == "engines"
             for t in top_level_imports(tree, set(mods)) if part(t) != "engines" and t != "psr"]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    mods = modules()
    graph = {n: {t for t in top_level_imports(tree, set(mods)) if t != n} for n, tree in mods.items()}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as e:  # pragma: no cover - the failure message
        raise AssertionError(f"import cycle: {e.args[1]}") from None


def test_no_psr_import_inside_a_function():
    mods = modules()
    inside = []
    for name, tree in mods.items():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if imported(node, set(mods)):
                        inside.append(f"{name}.{fn.name}: line {node.lineno}")
    assert not inside, "\n".join(inside)


def test_the_checks_see_a_violation():
    """The walkers above find what they look for (a mutation check of the test itself)."""
    tree = ast.parse("import os\nfrom psr.study import runner\ndef f():\n    from psr import io\n")
    known = {"psr.study", "psr.study.runner", "psr.io"}
    assert top_level_imports(tree, known) == {"psr.study.runner"}
    fn = tree.body[2]
    assert [imported(n, known) for n in ast.walk(fn) if imported(n, known)] == [["psr.io"]]
    assert RANK[part("psr.study.runner")] > RANK[part("psr.search")]
