"""The package's structure: no import loop between its modules, and no import hidden inside a function to dodge one.

The module graph is read from the source (``ast``), with an edge for every ``import`` / ``from ... import`` of a
pyfast module anywhere in a file (function bodies included) and for the parent packages that importing a submodule
runs first. A strongly connected component of more than one module is a loop that only some import order keeps
alive. Function-local imports of pyfast modules are allowed only for what is optional or generated: the Triton
kernels (``pyfast._triton``, imported on first use because triton is optional), the SpikingJelly converter
(``pyfast.convert.spikingjelly``, the same for SpikingJelly) and ``pyfast._build_info`` (written by setup.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pyfast"
LAZY_ALLOWED = ("pyfast._triton", "pyfast._build_info", "pyfast._C", "pyfast.convert.spikingjelly")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, ast.AST]]:
    """(imported pyfast module, import node) for every import in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
            targets = subs + ([base] if len(subs) < len(node.names) else [])
        else:
            continue
        for target in targets:
            if target.startswith("pyfast"):
                parts = target.split(".")
                found += [(".".join(parts[:k]), node) for k in range(2, len(parts) + 1)]
    return [(t, node) for t, node in found if t in mods and t != name and not name.startswith(t + ".")]


def _import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: {t for t, _ in _imports(name, path, mods)} for name, path in mods.items()}


def _loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return loops


def test_the_loop_finder_finds_a_loop_through_a_parent_package():
    graph = {"pyfast.nn": {"pyfast.nn.karat"}, "pyfast.nn.karat": {"pyfast.models.vit", "pyfast.models"},
             "pyfast.models": {"pyfast.models.snn"}, "pyfast.models.snn": {"pyfast.nn"}, "pyfast.models.vit": set()}
    assert _loops(graph) == [["pyfast.models", "pyfast.models.snn", "pyfast.nn", "pyfast.nn.karat"]]


def test_no_import_loops_in_the_package():
    assert _loops(_import_graph()) == []


def test_no_function_local_imports_of_pyfast_modules():
    hidden = []
    for path in _modules().values():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    targets = [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                hidden += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {t}" for t in targets
                           if t.startswith("pyfast") and not t.startswith(LAZY_ALLOWED)]
    assert hidden == []


@pytest.mark.parametrize("first", ["pyfast.nn.karat", "pyfast.models", "pyfast.methods.distill", "pyfast.harness.build",
                                   "pyfast.convert.mesa", "pyfast.harness.reinforce", "pyfast.bench.lif"])
def test_each_entry_module_imports_first_in_a_fresh_interpreter(first):
    # Any module may be the first a user imports; the registry then finds every method, model and attention kind.
    code = (f"import {first}\nfrom pyfast.registry import ATTENTIONS, METHODS, MODELS\n"
            "assert {'softmax', 'mesa', 'karat'} <= set(ATTENTIONS.names())\n"
            "assert 'reinforced' in METHODS and 'vit-tiny' in MODELS\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
