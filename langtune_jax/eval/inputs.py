"""Turning what callers pass into int64 id arrays for the per-language accumulator.

Labels and predictions arrive as numpy / jax arrays, logits (one axis more than the labels),
nested (ragged) lists of ids, or tag / class strings. These helpers normalise them, padding
ragged rows with ``IGNORE_INDEX``, and derive label names when the caller gave none. Used by
:class:`~langtune_jax.eval.accumulator.PerLanguageAccumulator` and
:func:`~langtune_jax.eval.accumulator.per_language_report`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from langtune_jax.tasks import IGNORE_INDEX


def as_ids(x: Any, label_index: Mapping[str, int] | None, what: str) -> np.ndarray:
    """Label or prediction ids as one int64 array, whatever form they came in.

    Args:
      x: a numpy / jax array (ints, or floats cast), a list of ints or label strings, or a list
        of such rows (ragged rows are padded on the right with ``IGNORE_INDEX``).
      label_index: ``{label name: id}`` to map strings; None when ``x`` holds ids.
      what: what ``x`` is ("labels", "predictions"), for error messages.

    Returns:
      ``[N]`` or ``[N, T]`` int64 ids.

    Raises:
      ValueError: strings without ``label_index``, or strings that are not in it.
    """
    if not isinstance(x, (list, tuple)):
        x = np.asarray(x)  # numpy or jax arrays
        if x.dtype.kind in "iubf":
            return x.astype(np.int64)
    rows = list(x)
    if rows and isinstance(rows[0], (list, tuple, np.ndarray)):  # ragged sequences -> pad
        width = max(len(r) for r in rows)
        out = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for i, r in enumerate(rows):
            if len(r):
                out[i, : len(r)] = as_ids(np.asarray(r), label_index, what)
        return out
    arr = np.asarray(rows)
    if arr.dtype.kind in "USO":
        if label_index is None:
            raise ValueError(f"{what} are strings: pass label_names to map them to ids")
        unknown = sorted({str(v) for v in arr.ravel()} - set(label_index))
        if unknown:
            raise ValueError(f"{what} hold labels {unknown} not in label_names {list(label_index)}")
        return np.array([label_index[str(v)] for v in arr.ravel()], np.int64).reshape(arr.shape)
    return arr.astype(np.int64)


def argmax_if_logits(predictions: Any, label_ndim: int) -> Any:
    """Predictions as ids: logits (float, one axis more than the labels) -> their argmax.

    Args:
      predictions: ids, logits, or (ragged) lists, returned unchanged unless they are logits.
      label_ndim: the number of axes of the labels (1: ``[B]``, 2: ``[B, T]``).
    """
    if isinstance(predictions, (list, tuple)):
        return predictions
    arr = np.asarray(predictions)
    return arr.argmax(-1) if arr.dtype.kind == "f" and arr.ndim == label_ndim + 1 else arr


def derive_label_names(predictions: Any, labels: Any, task: str) -> list[str]:
    """Label names for a caller that gave none.

    Args:
      predictions: ids, logits or (ragged) lists of ids or strings.
      labels: the same layouts.
      task: the task; token classification with integer ids cannot name its tags.

    Returns:
      The string labels seen, sorted with "O" first; for ids ``"0" .. "<max id>"`` (or the logits'
      class count), ``["0"]`` when every label is ``IGNORE_INDEX``.

    Raises:
      ValueError: token classification given integer ids.
    """
    values: set = set()
    for x in (labels, predictions):
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            values.update(str(i) for i in range(x.shape[-1]))
            continue
        stack = [x]
        while stack:
            item = stack.pop()
            if isinstance(item, (list, tuple, np.ndarray)):
                stack.extend(list(item))
            else:
                values.add(item.item() if isinstance(item, np.generic) else item)
    if all(isinstance(v, str) for v in values):
        return sorted(values, key=lambda v: (v != "O", v))
    if task == "token-classification":
        raise ValueError("token-classification with integer ids needs label_names (the tags)")
    ids = [int(v) for v in values if int(v) != IGNORE_INDEX]
    return [str(i) for i in range(max(ids) + 1)] if ids else ["0"]
