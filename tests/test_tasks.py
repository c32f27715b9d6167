"""Task names and the ignore index have one home, importable without the rest of the package."""

import ast
import typing
from pathlib import Path

from langtune_jax import config, tasks


def test_task_names_come_from_the_literal():
    assert tasks.TASKS == typing.get_args(tasks.Task)
    assert tasks.TASKS == (
        "sequence-classification",
        "token-classification",
        "causal-lm",
        "masked-lm",
    )
    assert tasks.LM_TASKS <= set(tasks.TASKS)
    hints = typing.get_type_hints(config.ModelSection)
    assert hints["task"] == tasks.Task


def test_ignore_index_is_the_transformers_value():
    assert tasks.IGNORE_INDEX == -100


def test_tasks_imports_nothing_else_of_the_package():
    # Any module may import tasks.py: it must not pull in (or cycle back to) another module.
    tree = ast.parse(Path(tasks.__file__).read_text(encoding="utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "langtune_jax"], imported
