"""The library's shape: subpackages by concern, no import cycle, modules and functions of readable size."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "speechlm_lib"
MODULES = sorted(p for p in ROOT.rglob("*.py"))
MAX_MODULE_LINES = 400  # DEVELOPERS.md: files under ~400 lines
MAX_FUNCTION_LINES = 60  # DEVELOPERS.md: functions under ~50 (docstrings included here, hence a little slack)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """The speechlm_lib modules `path` imports at module level (imports inside functions are lazy on purpose)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("speechlm_lib"):
            for alias in node.names:  # `from pkg import module` imports the module, else the names come from pkg
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in KNOWN else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("speechlm_lib"))
    return {m for m in out if m in KNOWN and m != module_name(path)}


KNOWN = {module_name(p) for p in MODULES}


def test_every_module_imports():
    for name in sorted(KNOWN):
        importlib.import_module(name)


def test_no_import_cycle():
    graph = {module_name(p): top_level_imports(p) for p in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_tree_shows_the_recipe():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"data", "models", "training", "decoding", "recipes"} <= folders
    recipes = {p.stem for p in (ROOT / "recipes").glob("stage*.py")}
    assert {"stage1_ctc", "stage2_align", "stage3_lora"} <= recipes
    flat = {p.stem for p in ROOT.glob("*.py")} - {"__init__", "__main__"}
    assert len(flat) <= 11, f"the package top level holds {sorted(flat)}: put modules in a subpackage by concern"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_readable(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {text.count(chr(10))} lines; split it by concern"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: {', '.join(long)}"
