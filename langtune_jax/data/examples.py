"""A row -> the example dict of a task, checked (see :mod:`langtune_jax.data.sources`).

`example_from_row` reads the columns a source names, and raises `BadRow` with the reason and the
fix for a missing column, empty text or label, tokens and tags of different lengths, or chat
messages that are not a list of ``{role, content}``. `check_label` refuses labels (tags) outside
the training vocabulary.
"""

from __future__ import annotations

import json
from typing import Any

from langtune_jax.data.config import SourceConfig
from langtune_jax.data.errors import BadRow, DataError
from langtune_jax.tasks import TASKS


def required_column(row: dict, name: str, where: str, field: str, also: str = "") -> Any:
    """The value of column `name` of a row.

    Args:
      row: the row.
      name: the column.
      where: ``"file:line"`` of the row.
      field: the `SourceConfig` field naming the column (told to the user as the fix).
      also: another fix, appended to that one.

    Raises:
      BadRow: the column is missing or null.
    """
    if name not in row or row[name] is None:
        columns = ", ".join(map(repr, row)) or "no columns"
        fix = f"set data.sources[].{field} to the right column{also}"
        raise BadRow(
            where,
            f"missing column {name!r} (row has {columns}); {fix}",
            header=None if name in row else f"the header has no column {name!r} ({columns}); {fix}",
        )
    return row[name]


def _text(row: dict, name: str, where: str, field: str) -> str:
    value = required_column(row, name, where, field)
    if not isinstance(value, str):
        raise BadRow(where, f"column {name!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(where, f"empty text in column {name!r}; remove the row or fill it")
    return value


def example_from_row(row: dict, src: SourceConfig, task: str, where: str) -> dict:
    """The example dict of a task from a row (see :mod:`langtune_jax.data.sources`), with
    ``"where"``.

    Args:
      row: the row, as a reader yields it.
      src: the source (its column names).
      task: one of `TASKS`.
      where: ``"file:line"`` of the row.

    Raises:
      BadRow: a missing column, empty text or label, tokens and tags of different lengths, or
        malformed chat messages.
      DataError: an unknown task.
    """
    if task == "sequence-classification":
        ex = {"text": _text(row, src.text_column, where, "text_column"), "text_pair": None}
        if src.text_pair_column:
            ex["text_pair"] = _text(row, src.text_pair_column, where, "text_pair_column")
        ex["label"] = None  # label_column None: unlabelled rows (`langtune predict`)
        if src.label_column is not None:
            label = required_column(row, src.label_column, where, "label_column")
            if isinstance(label, str) and not label.strip():
                raise BadRow(where, f"empty label in column {src.label_column!r}")
            ex["label"] = str(label)
    elif task == "token-classification":
        tokens = required_column(row, src.tokens_column, where, "tokens_column")
        if isinstance(tokens, str):
            tokens = tokens.split()
        tokens = list(tokens)
        if not tokens:
            raise BadRow(where, f"empty token list in column {src.tokens_column!r}")
        tags = None  # tags_column None: unlabelled rows (`langtune predict`)
        if src.tags_column is not None:
            tags = required_column(row, src.tags_column, where, "tags_column")
            tags = [str(t) for t in (tags.split() if isinstance(tags, str) else tags)]
            if len(tokens) != len(tags):
                raise BadRow(where, f"{len(tokens)} tokens but {len(tags)} tags")
        ex = {"tokens": [str(t) for t in tokens], "tags": tags}
    elif task == "causal-lm":
        ex = _causal_example(row, src, where)
    elif task == "masked-lm":  # unlabelled text: other columns (a label, say) are not read
        ex = {"text": _text(row, src.text_column, where, "text_column")}
    else:
        raise DataError(f"unknown task {task!r}; the data pipeline supports {', '.join(TASKS)}")
    ex["where"] = where
    return ex


def _causal_example(row: dict, src: SourceConfig, where: str) -> dict:
    """Chat messages, a prompt + response, or plain text, by which columns the source names."""
    if src.messages_column:
        msgs = required_column(row, src.messages_column, where, "messages_column")
        if isinstance(msgs, str):
            msgs = json.loads(msgs)
        if not msgs or not all(isinstance(m, dict) and "content" in m for m in msgs):
            raise BadRow(where, "messages must be a non-empty list of {role, content}")
        if not str(msgs[-1]["content"]).strip():
            raise BadRow(where, "the last message (the response) is empty")
        return {
            "messages": [{"role": m.get("role", "user"), "content": m["content"]} for m in msgs]
        }
    if src.prompt_column:
        return {
            "prompt": _text(row, src.prompt_column, where, "prompt_column"),
            "response": _text(row, src.response_column, where, "response_column"),
        }
    return {"text": _text(row, src.text_column, where, "text_column")}


def check_label(ex: dict, labels: set[str], task: str) -> None:
    """Raises a bad-row error when the example's label (or a tag) is not in `labels`;
    unlabelled rows (label or tags None) pass."""
    if ex.get("label" if task == "sequence-classification" else "tags") is None:
        return
    if task == "sequence-classification" and ex["label"] not in labels:
        raise BadRow(
            ex["where"],
            f"unknown label {ex['label']!r} (labels: {', '.join(sorted(labels))}); fix the row "
            "or add it to data.labels",
        )
    if task == "token-classification":
        bad = [t for t in ex["tags"] if t not in labels]
        if bad:
            raise BadRow(
                ex["where"],
                f"unknown tag {bad[0]!r} (tags: {', '.join(sorted(labels))}); fix the row or "
                "add it to data.labels",
            )
