"""The README points only inside the repository, and its Python examples run as written (with a
two-step budget) and use every name they import."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_no_reference_outside_the_repository():
    assert "../" not in README
    paths = set(re.findall(r"`((?:docs|configs|demo|scripts|tests)/[\w./-]*\w)`", README))
    paths |= set(re.findall(r"\]\(((?:docs|demo)/[^)]+)\)", README))
    assert paths
    missing = [p for p in sorted(paths) if not (ROOT / p).exists() and "my.yaml" not in p]
    assert not missing, missing


def test_python_examples_use_every_name_they_import():
    assert len(PYTHON) >= 2
    for code in PYTHON:
        tree = ast.parse(code)
        imported = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom | ast.Import)
            for alias in node.names
        }
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert imported and imported <= used, imported - used


@pytest.mark.slow
def test_python_examples_run(tmp_path, monkeypatch, capsys):
    train_code, pieces = PYTHON
    assert "train(RunConfig(" in train_code
    short = train_code.replace("steps=100", "steps=2").replace(
        'RunSection(name="from-python")', f'RunSection(name="from-python", output_dir="{tmp_path}")'
    )
    assert short.count(str(tmp_path)) == 1 and "steps=2" in short
    monkeypatch.chdir(ROOT)  # the examples use the shipped demo/ paths
    scope: dict = {}
    exec(compile(short, "README.md", "exec"), scope)
    run_dir = scope["run_dir"]
    assert (run_dir / "eval" / "test" / "report.md").exists()
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    assert "'en': 0.76" in capsys.readouterr().out
    out = tmp_path / "untrained-adapter"
    exec(compile(pieces.replace('"runs/untrained-adapter"', f'"{out}"'), "README.md", "exec"), {})
    assert (out / "adapter_model.safetensors").exists()


def test_no_file_holds_merge_conflict_markers():
    """A merge left `<<<<<<< HEAD` in the README once; no tracked text file may hold one."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)
    suffixes = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".cfg", ""}
    bad = [
        name
        for name in tracked
        if Path(name).suffix in suffixes
        and (ROOT / name).is_file()
        and marker.search((ROOT / name).read_text(encoding="utf-8", errors="replace"))
    ]
    assert not bad, f"merge conflict markers in {bad}"
