"""A validation split carved from train, per language, when the data has none
(``data.validation_fraction``).

Each language holds out ``round(fraction * n)`` of its ``n`` training examples (at least one, and
never all of them; none for a language with a single example). Which rows is a pure function of
the language name and ``n`` — a stateless permutation (:func:`~langtune_jax.data.mixture.permute`)
keyed by a hash of the name — so every run, whatever its seed, holds out the same rows, and runs
stay comparable on their validation scores. Both parts keep the file order.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from langtune_jax.data.mixture import permute
from langtune_jax.data.sources import SplitData


def _language_key(language: str) -> int:
    digest = hashlib.sha256(f"langtune-validation:{language}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def held_out_rows(language: str, n: int, fraction: float) -> np.ndarray:
    """Sorted indices of the rows of a language of ``n`` examples that go to validation."""
    if n < 2 or fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n - 1, max(1, round(fraction * n)))
    order = permute(np.arange(n, dtype=np.int64), n, np.uint64(_language_key(language)))
    return np.sort(order[:k])


def hold_out_validation(train: SplitData, fraction: float) -> tuple[SplitData, SplitData]:
    """``(train without the held-out rows, validation)`` from a training split.

    Args:
      train: the training split as read.
      fraction: share of each language's examples to hold out, in (0, 1).

    Returns:
      The remaining training split (skipped-row counts kept) and the validation split.
    """
    kept: dict[str, list[dict]] = {}
    held: dict[str, list[dict]] = {}
    for lang, rows in train.examples.items():
        mask = np.zeros(len(rows), dtype=bool)
        mask[held_out_rows(lang, len(rows), fraction)] = True
        kept[lang] = [r for r, m in zip(rows, mask) if not m]
        if mask.any():
            held[lang] = [r for r, m in zip(rows, mask) if m]
    return dataclasses.replace(train, examples=kept), SplitData(examples=held)
