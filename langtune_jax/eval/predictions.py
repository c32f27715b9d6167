"""Per-example predictions of a classification evaluation: ``eval/<split>/predictions.jsonl``.

A report's scores say how well a run did per language; the predictions say on which examples.
:class:`PredictionLog` collects the eval step's predictions batch by batch, keyed by each row's
``example_index`` (its position in the split's fixed order, see
:meth:`~langtune_jax.data.DataPipeline.eval_order`), so padded and packed batches map back to
their examples exactly. One JSON object per example, in the split's order (languages sorted, file
order inside)::

    {"language": "sw", "index": 3, "text": "...", "prediction": "politics", "score": 0.71,
     "label": "sports", "correct": false}

``score`` is the model's softmax probability of its prediction. Token classification gives
``predictions`` and ``scores`` (one per word, at its first sub-word), ``labels`` and ``correct``
(every tag right). Unlabelled data (``langtune predict``) has no ``label(s)`` / ``correct``.
``index`` is the example's position among its language's examples of the split, in file order;
``text`` is the tokenized input decoded back (special tokens left out, so casing and spacing
follow the tokenizer).

:func:`one_class_note` names the failure a report's averages hide: a classifier that predicts
one class (one tag) for every example.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from langtune_jax.tasks import IGNORE_INDEX

log = logging.getLogger("langtune_jax")

PREDICTIONS_FILE = "predictions.jsonl"

#: Tasks whose evaluations have per-example predictions.
PREDICTION_TASKS = ("sequence-classification", "token-classification")


class PredictionLog:
    """The predictions of one evaluation, gathered batch by batch (every host's rows).

    Args:
      task: sequence-classification or token-classification.
      label_names: the run's label vocabulary (class id -> name).
      labelled: whether the data has labels (False: ``langtune predict``; the batches' labels
        only mark the positions to read).
    """

    def __init__(self, task: str, label_names: Sequence[str], *, labelled: bool = True):
        if task not in PREDICTION_TASKS:
            raise ValueError(f"per-example predictions need one of {PREDICTION_TASKS}, not {task}")
        self.task, self.label_names, self.labelled = task, list(label_names), labelled
        self._index: list[np.ndarray] = []
        self._preds: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    def add(self, host: Mapping[str, np.ndarray]) -> None:
        """One gathered eval batch (unpacked): ``example_index``, ``predictions``, ``labels``
        and optionally ``scores``."""
        if "example_index" not in host:
            raise ValueError("an eval batch without example_index: predictions cannot be mapped")
        index = np.asarray(host["example_index"]).reshape(-1)
        keep = index >= 0
        if "example_mask" in host:
            keep &= np.asarray(host["example_mask"]).reshape(-1) > 0
        self._index.append(index[keep])
        self._preds.append(np.asarray(host["predictions"])[keep])
        self._labels.append(np.asarray(host["labels"])[keep])
        preds = self._preds[-1]
        scores = host.get("scores")
        self._scores.append(
            np.asarray(scores)[keep] if scores is not None else np.full(preds.shape, np.nan)
        )

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
        n = len(order)
        if len(index) != n or len(np.unique(index)) != n or (n and index.max() >= n):
            raise RuntimeError(
                f"predictions cover {len(np.unique(index))} distinct of {len(order)} examples "
                f"({len(index)} rows): the eval batches and the split's order disagree"
            )
        at = np.argsort(index, kind="stable")
        preds = _stack(self._preds)[at]
        labels = _stack(self._labels)[at]
        scores = _stack(self._scores)[at]
        out = []
        for (language, row), pred, label, score in zip(order, preds, labels, scores):
            entry: dict[str, Any] = {"language": language, "index": int(row)}
            entry["text"] = text_of(language, row)
            if self.task == "sequence-classification":
                entry["prediction"] = self._name(pred)
                entry["score"] = _round(score)
                if self.labelled:
                    entry["label"] = self._name(label)
                    entry["correct"] = bool(label == pred) if label != IGNORE_INDEX else None
            else:
                valid = label != IGNORE_INDEX
                entry["predictions"] = [self._name(t) for t in pred[valid]]
                entry["scores"] = [_round(x) for x in score[valid]]
                if self.labelled:
                    entry["labels"] = [self._name(t) for t in label[valid]]
                    entry["correct"] = bool(np.all(label[valid] == pred[valid]))
            out.append(entry)
        return out

    def _name(self, label_id: Any) -> str | None:
        label_id = int(label_id)
        return None if label_id == IGNORE_INDEX else self.label_names[label_id]


def prediction_log(task: str, label_names: Sequence[str] | None) -> PredictionLog | None:
    """An empty log for an evaluation of ``task``, or None when the task has no per-example
    predictions (causal and masked LM)."""
    return PredictionLog(task, label_names or []) if task in PREDICTION_TASKS else None


def _round(score: Any) -> float | None:
    score = float(score)
    return None if np.isnan(score) else round(score, 4)


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-batch arrays; token rows of different widths are padded with -100."""
    if not parts:
        return np.zeros(0, np.int64)
    if parts[0].ndim == 1:
        return np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    fill = np.nan if parts[0].dtype.kind == "f" else IGNORE_INDEX
    padded = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=fill) for p in parts]
    return np.concatenate(padded)


def split_rows(predictions: PredictionLog, dataset: Any, split: str, tokenizer: Any) -> list[dict]:
    """The rows of a filled log for ``split`` of a `DataPipeline`, each with its text (the
    tokenized input decoded by ``tokenizer``)."""
    stores = dataset.split(split)[1]
    order = dataset.eval_order(split)
    ids = [stores[lang].input_ids[stores[lang].row(r)].tolist() for lang, r in order]
    texts = dict(zip(order, tokenizer.batch_decode(ids, skip_special_tokens=True)))
    return predictions.rows(order, lambda language, row: texts[(language, row)])


def save_predictions(
    out_dir: str | Path, predictions: PredictionLog, dataset: Any, split: str, tokenizer: Any
) -> Path:
    """``out_dir/predictions.jsonl`` of an evaluated split, with a warning when the model
    predicts one class for all of it (:func:`one_class_note`)."""
    rows = split_rows(predictions, dataset, split, tokenizer)
    note = one_class_note(rows, split)
    if note:
        log.warning(note)
    return write_predictions(Path(out_dir) / PREDICTIONS_FILE, rows)


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
    if not rows or not ("label" in rows[0] or "labels" in rows[0]):
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
