"""The package's shape (shared/DESIGN.md "Layout"), checked so it stays that way.

- A name another module imports is public in its module: no ``from langtune_jax.x import _name``
  (nor ``from tests.x import _name``) anywhere (package, tests, scripts).
- The import graph of module-level imports has no cycle, and every module imports on its own in a
  fresh interpreter (the second check is slow: one process per module).
- Each package's ``__init__`` is its public surface: ``__all__`` lists names that exist; the
  top-level lazy exports resolve.
- The orchestrators read top to bottom: ``train``, ``load_split`` and ``from_pretrained`` are short.
- ``tests/`` mirrors ``langtune_jax/``: every test folder is a package folder there.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "langtune_jax"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def absolute(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module_name(path).split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_private_name_is_imported_from_another_module():
    files = [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "scripts").rglob("*.py"),
    ]
    found = []
    for path in files:
        for node in ast.walk(parse(path)):
            imported = isinstance(node, ast.ImportFrom) and absolute(node, path)
            if imported and imported.split(".")[0] in ("langtune_jax", "tests"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                private = [n for n in private if not n.startswith("__")]
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in private]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def module_level_imports(path: Path) -> set[str]:
    """langtune_jax modules imported when ``path`` is imported (not inside functions or
    ``if TYPE_CHECKING``): ``from pkg import sub`` counts as ``pkg.sub`` when sub is a module."""
    out: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("langtune_jax"))
            elif isinstance(node, ast.ImportFrom):
                mod = absolute(node, path)
                if not mod.startswith("langtune_jax"):
                    continue
                subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES}
                out.update(subs)
                if len(subs) < len(node.names):
                    out.add(mod)

    visit(parse(path).body)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_module_level_import_graph_has_no_cycle():
    graph = {name: module_level_imports(path) - {name} for name, path in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.slow
def test_each_module_imports_on_its_own():
    def run(name: str) -> str | None:
        proc = subprocess.run(
            [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=ROOT
        )
        return None if proc.returncode == 0 else f"{name}: {proc.stderr.strip().splitlines()[-1]}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f for f in pool.map(run, sorted(MODULES)) if f]
    assert not failures, "\n".join(failures)


PACKAGES = sorted(name for name, path in MODULES.items() if path.name == "__init__.py")


@pytest.mark.parametrize("name", PACKAGES)
def test_package_all_lists_names_that_exist(name):
    package = importlib.import_module(name)
    if name == "langtune_jax":
        names = [n for n in package.__all__ if n != "__version__"]
        assert names, "the top level exports nothing"
    else:
        assert hasattr(package, "__all__"), f"{name}/__init__.py has no __all__"
        names = package.__all__
    missing = [n for n in names if not hasattr(package, n)]
    assert not missing, f"{name}.__all__ names that do not exist: {missing}"


def test_top_level_exports_are_the_packages_own_objects():
    import langtune_jax
    from langtune_jax import data, models, peft

    assert langtune_jax.apply_lora is peft.apply_lora
    assert langtune_jax.from_pretrained is models.from_pretrained
    assert langtune_jax.language_weights is data.language_weights
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        langtune_jax.nope  # noqa: B018


def function_lengths(path: Path) -> dict[str, int]:
    return {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(parse(path))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


@pytest.mark.parametrize(
    "path, function",
    [
        ("train/loop.py", "train"),
        ("data/sources.py", "load_split"),
        ("models/hub.py", "from_pretrained"),
    ],
)
def test_orchestrators_read_top_to_bottom(path, function):
    lines = function_lengths(PACKAGE / path)[function]
    assert lines <= 60, f"{path}:{function} is {lines} lines; split it into named steps"


def test_tests_mirror_the_package():
    strays = [
        str(d.relative_to(ROOT))
        for d in sorted((ROOT / "tests").rglob("*"))
        if d.is_dir()
        and d.name != "__pycache__"
        and not (PACKAGE / d.relative_to(ROOT / "tests")).is_dir()
    ]
    assert not strays, f"test folders with no package folder of the same path: {strays}"
