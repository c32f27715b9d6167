"""Per-example predictions of a classification evaluation: ``eval/<split>/predictions.jsonl``.

A report's scores say how well a run did per language; the predictions say on which examples.
:class:`PredictionLog` collects the eval step's predictions batch by batch, keyed by each row's
``example_index`` (its position in the split's fixed order, see
:meth:`~langtune_jax.data.DataPipeline.eval_order`), so padded and packed batches map back to
their examples exactly. One JSON object per example, in the split's order (languages sorted, file
order inside)::

    {"language": "sw", "index": 3, "text": "...", "label": "sports", "prediction": "politics",
     "correct": false}

Token classification gives ``labels`` / ``predictions`` (one tag per labelled token, the first
sub-word of each word) and ``correct`` (every tag right). ``index`` is the example's position
among its language's examples of the split, in file order; ``text`` is the tokenized input decoded
back (special tokens left out, so casing and spacing follow the tokenizer).

:func:`one_class_note` names the failure a report's averages hide: a classifier that predicts
one class (one tag) for every example.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from langtune_jax.tasks import IGNORE_INDEX

PREDICTIONS_FILE = "predictions.jsonl"

#: Tasks whose evaluations have per-example predictions.
PREDICTION_TASKS = ("sequence-classification", "token-classification")


class PredictionLog:
    """The predictions of one evaluation, gathered batch by batch (every host's rows).

    Args:
      task: sequence-classification or token-classification.
      label_names: the run's label vocabulary (class id -> name).
    """

    def __init__(self, task: str, label_names: Sequence[str]):
        if task not in PREDICTION_TASKS:
            raise ValueError(f"per-example predictions need one of {PREDICTION_TASKS}, not {task}")
        self.task, self.label_names = task, list(label_names)
        self._index: list[np.ndarray] = []
        self._preds: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def add(self, host: Mapping[str, np.ndarray]) -> None:
        """One gathered eval batch (unpacked): ``example_index``, ``predictions``, ``labels``."""
        if "example_index" not in host:
            raise ValueError("an eval batch without example_index: predictions cannot be mapped")
        index = np.asarray(host["example_index"]).reshape(-1)
        keep = index >= 0
        if "example_mask" in host:
            keep &= np.asarray(host["example_mask"]).reshape(-1) > 0
        self._index.append(index[keep])
        self._preds.append(np.asarray(host["predictions"])[keep])
        self._labels.append(np.asarray(host["labels"])[keep])

    def rows(
        self,
        order: Sequence[tuple[str, int]],
        text_of: Callable[[str, int], str],
    ) -> list[dict[str, Any]]:
        """One dict per example, in the split's order.

        Args:
          order: the split's ``(language, row)`` list (``DataPipeline.eval_order``).
          text_of: ``(language, row) -> str``, the example's input as text.

        Raises:
          RuntimeError: the batches did not hold every example of ``order`` exactly once.
        """
        index = np.concatenate(self._index) if self._index else np.zeros(0, np.int64)
        if len(index) != len(order) or len(np.unique(index)) != len(order):
            raise RuntimeError(
                f"predictions cover {len(np.unique(index))} distinct of {len(order)} examples "
                f"({len(index)} rows): the eval batches and the split's order disagree"
            )
        at = np.argsort(index, kind="stable")
        preds = _stack(self._preds)[at]
        labels = _stack(self._labels)[at]
        out = []
        for (language, row), pred, label in zip(order, preds, labels):
            entry: dict[str, Any] = {"language": language, "index": int(row)}
            entry["text"] = text_of(language, row)
            if self.task == "sequence-classification":
                entry["label"] = self._name(label)
                entry["prediction"] = self._name(pred)
                entry["correct"] = bool(label == pred) if label != IGNORE_INDEX else None
            else:
                valid = label != IGNORE_INDEX
                entry["labels"] = [self._name(t) for t in label[valid]]
                entry["predictions"] = [self._name(t) for t in pred[valid]]
                entry["correct"] = bool(np.all(label[valid] == pred[valid]))
            out.append(entry)
        return out

    def _name(self, label_id: Any) -> str | None:
        label_id = int(label_id)
        return None if label_id == IGNORE_INDEX else self.label_names[label_id]


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-batch arrays; token rows of different widths are padded with -100."""
    if not parts:
        return np.zeros(0, np.int64)
    if parts[0].ndim == 1:
        return np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    padded = [
        np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=IGNORE_INDEX) for p in parts
    ]
    return np.concatenate(padded)


def write_predictions(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as JSON Lines through a temporary file (a reader never sees half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def one_class_note(rows: Sequence[Mapping[str, Any]], split: str) -> str | None:
    """A warning when every prediction of a split is the same class (token classification: the
    same tag) although its examples hold several; else None.

    Such a classifier has learned the majority class, not the task; its accuracy can still
    look fair on skewed data.
    """
    if not rows:
        return None
    if "prediction" in rows[0]:
        preds = [r["prediction"] for r in rows]
        truth = {r["label"] for r in rows if r["label"] is not None}
        what, plural = "class", "classes"
    else:
        preds = [t for r in rows for t in r["predictions"]]
        truth = {t for r in rows for t in r["labels"]}
        what, plural = "tag", "tags"
    if len(set(preds)) != 1 or len(truth) < 2:
        return None
    return (
        f"split {split!r}: the model predicts {what} {preds[0]!r} for all {len(preds):,} "
        f"{'examples' if what == 'class' else 'labelled tokens'}, though the data holds "
        f"{len(truth)} {plural}; it has learned the majority {what}, not the task. Train longer "
        "or with a higher train.learning_rate, check that the head trains (the run's "
        "'trainable params' line), or balance the labels"
    )
