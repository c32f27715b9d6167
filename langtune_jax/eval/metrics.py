"""Per-language metrics, accumulated over batches, and the gap statistics between languages.

The idea: evaluation runs over padded, sharded batches, so every metric here is computed from
*additive counts* that a :class:`PerLanguageAccumulator` sums batch by batch, per language:

* ``sequence-classification``: a ``[C, C]`` confusion matrix -> accuracy, macro_f1,
  per_class_f1.
* ``token-classification``: entities true / predicted / correct per entity type, tokens seen /
  right -> entity-level micro precision, recall, f1; token_accuracy; per_type_f1.
* ``causal-lm``: summed token NLL, tokens seen / right -> loss, perplexity, token_accuracy.

Rows whose ``example_mask`` is 0 (batch padding) and positions whose label is ``-100``
(:data:`langtune_jax.tasks.IGNORE_INDEX`: padding, special tokens, sub-word continuations) never
count.

This module holds the pure metric functions and the metric table (:data:`METRICS`: each metric's
direction, whether it is a fraction, its digits), which the loop's best checkpoint, the reports,
compare and the plots all read; the accumulator and ``per_language_report`` are in
:mod:`langtune_jax.eval.accumulator`.

Conventions, chosen to match the reference implementations the tests compare against:

* **Macro-F1** is scikit-learn's ``f1_score(y, p, average="macro")``: per class
  ``F1 = 2 TP / (2 TP + FP + FN)``, averaged over the classes that appear in the truth or the
  predictions of that language. A class that appears in neither is undefined; ``zero_division``
  says what it scores: ``nan`` (default: left out of the macro mean, which is what scikit-learn's
  default label set does, so a language whose data never has a class is not marked down for it),
  ``0.0`` (``labels=range(C)`` over the full label set) or ``1.0``.
* **Entity F1** follows seqeval's default (conlleval-compatible) mode, ``seqeval.metrics.f1_score``
  with ``average="micro"``: entities are ``(type, start, end)`` chunks; an ``I-X`` that does not
  continue an ``X`` chunk starts a new one; chunks never cross sentences; P, R and F1 are 0 when
  undefined (seqeval's default ``zero_division="warn"`` acts as 0). Labels must be ``O`` or carry a
  ``B-``/``I-``/``E-``/``S-`` prefix.
* **Perplexity** is ``exp(sum of token NLL / number of tokens)``: tokens are pooled within a
  language, not averaged per example, so it can be summed over batches.
* ``overall`` pools all examples of all languages (micro over languages); the *mean over languages*
  (each language counted once) is in the gap statistics.

References:
  Hu et al., 2020, "XTREME: A Massively Multilingual Multi-task Benchmark for Evaluating
  Cross-lingual Generalization" (cross-lingual transfer gap: source score minus the mean of the
  other languages). Sang & De Meulder, 2003, CoNLL-2003 (entity-level micro F1, conlleval).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from langtune_jax.tasks import IGNORE_INDEX, TASKS

SCHEMA_VERSION = 1

#: The metric a report leads with, and the one gap tables and plots use by default.
PRIMARY_METRIC: dict[str, str] = {
    "sequence-classification": "macro_f1",
    "token-classification": "f1",
    "causal-lm": "perplexity",
    "masked-lm": "perplexity",
}
#: The scalar (per-language comparable) metrics each task reports, primary first.
SCALAR_METRICS: dict[str, tuple[str, ...]] = {
    "sequence-classification": ("macro_f1", "accuracy"),
    "token-classification": ("f1", "precision", "recall", "token_accuracy"),
    "causal-lm": ("perplexity", "loss", "token_accuracy"),
    "masked-lm": ("perplexity", "loss", "token_accuracy"),
}


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """How a scalar metric reads and how it is shown.

    Attributes:
      higher_is_better: the direction: gap statistics pick best = max (min when False), the loop
        keeps the checkpoint with the highest (lowest) value.
      fraction: a share in [0, 1], shown x 100 (percentage points) in tables and plots; otherwise
        shown as it is (loss in nats, perplexity).
      digits: decimals shown, after the x 100 of a fraction.
    """

    higher_is_better: bool
    fraction: bool
    digits: int


_SHARE = MetricInfo(higher_is_better=True, fraction=True, digits=1)
#: Every scalar metric a report holds (:data:`SCALAR_METRICS`), with its direction and display.
METRICS: dict[str, MetricInfo] = {
    "accuracy": _SHARE,
    "macro_f1": _SHARE,
    "f1": _SHARE,
    "precision": _SHARE,
    "recall": _SHARE,
    "token_accuracy": _SHARE,
    "loss": MetricInfo(higher_is_better=False, fraction=False, digits=3),
    "perplexity": MetricInfo(higher_is_better=False, fraction=False, digits=2),
}

#: Statistics over languages that a metric name may carry (``macro_f1_mean``): the loop logs and
#: selects best checkpoints by ``<metric>_<statistic>``.
STATISTICS: tuple[str, ...] = ("mean", "gap", "worst")


def metric_info(name: str) -> MetricInfo:
    """The :data:`METRICS` entry of a metric, or of a statistic over languages of one.

    ``<metric>_mean`` and ``<metric>_worst`` read as the metric itself; ``<metric>_gap``
    (max - min over languages) is in the metric's unit but always better smaller.

    Raises:
      ValueError: not a metric of the table (nor one with a statistic); the message lists them.
    """
    if name in METRICS:
        return METRICS[name]
    for stat in STATISTICS:
        base = name.removesuffix("_" + stat)
        if base != name and base in METRICS:
            info = METRICS[base]
            return dataclasses.replace(info, higher_is_better=False) if stat == "gap" else info
    raise ValueError(
        f"unknown metric {name!r}: the metric table has {', '.join(METRICS)} "
        f"(each optionally with _{', _'.join(STATISTICS)})"
    )


# Short forms users type -> the metric they mean (None: the task's own F1).
_METRIC_ALIASES = {"f1": None, "acc": "accuracy", "ppl": "perplexity", "entity_f1": "f1"}


def metric_names(task: str, *, statistics: bool = False) -> list[str]:
    """The metric names a report of ``task`` has; with ``statistics`` also
    ``<metric>_<mean|gap|worst>`` (what ``train.best_metric`` may name)."""
    names = list(SCALAR_METRICS[check_task(task)])
    if statistics:
        names += [f"{m}_{s}" for m in SCALAR_METRICS[check_task(task)] for s in STATISTICS]
    return names


def canonical_metric(name: str, task: str, *, statistics: bool = False) -> str:
    """The report's name for a metric as a user may write it.

    ``f1`` is the task's F1 (``macro_f1`` for sequence classification), ``acc`` / ``ppl`` are
    accuracy / perplexity, and with ``statistics`` ``mean_f1``, ``f1_mean`` and
    ``macro_f1_mean`` all name the mean over languages of that F1 (likewise ``gap``, ``worst``).

    Raises:
      ValueError: not a metric of this task; the message lists the names that are.
    """
    valid = metric_names(task, statistics=statistics)
    if name in valid:
        return name
    base, stat = name, None
    for s in STATISTICS:
        if name.startswith(s + "_"):
            base, stat = name[len(s) + 1 :], s
        elif name.endswith("_" + s):
            base, stat = name[: -len(s) - 1], s
    if base in _METRIC_ALIASES:
        alias = _METRIC_ALIASES[base]
        base = alias or ("macro_f1" if check_task(task) == "sequence-classification" else "f1")
    candidate = base if stat is None else f"{base}_{stat}"
    if candidate in valid and (stat is None or statistics):
        return candidate
    raise ValueError(
        f"{name!r} is not a metric of {check_task(task)} reports; choose one of {', '.join(valid)}"
    )


def check_task(task: str) -> str:
    """The canonical task name (``_`` read as ``-``), or a ValueError that lists the tasks."""
    canonical = str(task).replace("_", "-")
    if canonical not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    return canonical


# --------------------------------------------------------------------------- classification


def f1_per_class(confusion: np.ndarray, zero_division: float = 0.0) -> np.ndarray:
    """Per-class F1 from a confusion matrix, as scikit-learn computes it.

    Args:
      confusion: ``[C, C]`` counts, rows = true class, columns = predicted class.
      zero_division: the score of a class with ``TP + FP + FN == 0`` (absent from truth and
        predictions): 0.0, 1.0 or ``nan``.

    Returns:
      ``[C]`` float64, ``2 TP / (2 TP + FP + FN)``.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion)
    denom = confusion.sum(0) + confusion.sum(1)  # (TP + FP) + (TP + FN) = 2 TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), zero_division)
    return f1.astype(np.float64)


def classification_metrics(
    confusion: np.ndarray,
    label_names: Sequence[str] | None = None,
    zero_division: float = math.nan,
) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class F1 from a ``[C, C]`` confusion matrix (rows = truth).

    Returns:
      ``{"num_examples", "accuracy", "macro_f1", "per_class_f1": {label: f1}}``; macro-F1 is the
      mean over all C classes (classes scored ``nan`` by ``zero_division=nan`` are left out).
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    n = int(confusion.sum())
    names = (
        list(label_names) if label_names is not None else [str(i) for i in range(len(confusion))]
    )
    f1 = f1_per_class(confusion, zero_division)
    macro = float(np.nanmean(f1)) if not np.all(np.isnan(f1)) else math.nan
    return {
        "num_examples": n,
        "accuracy": float(np.trace(confusion) / n) if n else math.nan,
        "macro_f1": macro,
        "per_class_f1": {name: float(v) for name, v in zip(names, f1, strict=True)},
    }


# --------------------------------------------------------------------------- entities (seqeval)


def _split_tag(label: str) -> tuple[str, str]:
    """seqeval's (prefix, type) split: ``"B-PER" -> ("B", "PER")``, ``"O" -> ("O", "_")``."""
    return label[0], label[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # Port of seqeval.metrics.sequence_labeling.end_of_chunk (default, conlleval-compatible mode).
    return (
        prev_tag in ("E", "S")
        or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != type_)
    )


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # Port of seqeval.metrics.sequence_labeling.start_of_chunk.
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


class EntityScheme:
    """Chunking tables for a fixed IOB2/IOBES label set, vectorised over whole batches.

    seqeval walks tags one by one and decides from (previous tag, tag) whether a chunk ends or
    starts. Those decisions depend only on the two labels, so they become two ``[S, S]`` boolean
    tables over label ids (plus an initial state and the ``O`` that separates sentences); a batch
    is then chunked with array lookups instead of a Python loop over tokens.

    Args:
      label_names: the tag of each label id, e.g. ``["O", "B-PER", "I-PER", ...]``.
    """

    def __init__(self, label_names: Sequence[str]):
        bad = [n for n in label_names if n != "O" and n[:2] not in ("B-", "I-", "E-", "S-")]
        if bad:
            raise ValueError(
                f"token-classification label(s) {bad} are not entity tags: use 'O' or a "
                "'B-'/'I-'/'E-'/'S-' prefix (IOB2 / IOBES), e.g. 'B-PER'"
            )
        self.label_names = list(label_names)
        # States: the labels, then "O" as the sentence separator, then seqeval's initial state.
        states = [_split_tag(n) for n in self.label_names] + [("O", "_"), ("O", "")]
        self.separator, self.initial = len(states) - 2, len(states) - 1
        self.types = sorted({t for tag, t in states[:-2] if tag != "O"})
        type_index = {t: i for i, t in enumerate(self.types)}
        self.type_of = np.array([type_index.get(t, -1) for _, t in states], dtype=np.int64)
        s = len(states)
        self.ends = np.zeros((s, s), dtype=bool)
        self.starts = np.zeros((s, s), dtype=bool)
        for i, (ptag, ptype) in enumerate(states):
            for j, (tag, type_) in enumerate(states):
                self.ends[i, j] = _end_of_chunk(ptag, tag, ptype, type_)
                self.starts[i, j] = _start_of_chunk(ptag, tag, ptype, type_)

    def chunks(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chunks of a flattened tag-id sequence (sentences separated by ``self.separator``).

        Returns:
          ``(type, start, end)`` int64 arrays, one entry per chunk, ``end`` inclusive.
        """
        prev = np.concatenate([[self.initial], flat[:-1]])  # [N]
        ends = self.ends[prev, flat]  # a chunk ended at position i - 1
        starts = self.starts[prev, flat]  # a chunk starts at position i
        idx = np.arange(len(flat))
        last_start = np.maximum.accumulate(np.where(starts, idx, 0))  # seqeval's begin_offset
        at = np.nonzero(ends)[0]  # never 0: the initial state is "O"
        return self.type_of[prev[at]], last_start[at - 1], at - 1


def entity_scores(n_true: float, n_pred: float, n_correct: float) -> dict[str, float]:
    """Micro precision, recall and F1 from entity counts, 0 where undefined (seqeval default)."""
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_true if n_true else 0.0
    f1 = 2 * n_correct / (n_pred + n_true) if n_correct else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


# --------------------------------------------------------------------------- causal LM


def lm_token_stats(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token negative log-likelihood and argmax prediction from logits (numpy, float64).

    Args:
      logits: ``[B, T, V]``, already aligned with ``labels`` (the caller shifts: ``labels[b, t]``
        is the target that ``logits[b, t]`` predicts).
      labels: ``[B, T]`` token ids; ``IGNORE_INDEX`` positions get NLL 0.

    Returns:
      ``(nll [B, T] in nats, predictions [B, T])``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    shifted = logits - logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(-1))  # [B, T]
    safe = np.where(labels == IGNORE_INDEX, 0, labels)
    target = np.take_along_axis(shifted, safe[..., None], axis=-1)[..., 0]  # [B, T]
    nll = np.where(labels == IGNORE_INDEX, 0.0, log_z - target)
    return nll, logits.argmax(-1)


def lm_metrics(nll_sum: float, num_tokens: int, num_correct: int) -> dict[str, float]:
    """Mean token loss (nats), perplexity ``exp(loss)`` and token accuracy from summed counts."""
    if not num_tokens:
        return {"loss": math.nan, "perplexity": math.nan, "token_accuracy": math.nan}
    loss = nll_sum / num_tokens
    return {
        "loss": float(loss),
        "perplexity": float(math.exp(loss)) if loss < 700 else math.inf,
        "token_accuracy": float(num_correct / num_tokens),
    }


# --------------------------------------------------------------------------- gap statistics


def gap_statistics(
    per_language: Mapping[str, float | None],
    source_language: str | None = None,
    *,
    higher_is_better: bool = True,
    zero_shot: Sequence[str] = (),
) -> dict[str, Any]:
    """How far apart the languages are on one metric.

    Args:
      per_language: ``{language: score}``; ``None`` / NaN entries (no data) are left out.
      source_language: the language trained on in a zero-shot transfer run; adds
        ``transfer_gap`` = source score minus the mean of the other languages (XTREME's
        cross-lingual transfer gap; positive = the source is better for higher-is-better metrics).
      higher_is_better: False for loss / perplexity: best is then the minimum.
      zero_shot: languages evaluated zero-shot (absent from the training data). With any, the
        transfer gap is measured to them: ``transfer_gap`` = source score minus the mean of the
        zero-shot languages, ``transfer_gaps`` = ``{language: source score - its score}``; the
        source score is ``source_language``'s, or without one the mean of the languages seen in
        training (``seen_mean``; ``zero_shot_mean`` beside it).

    Returns:
      ``{"num_languages", "best", "best_language", "worst", "worst_language", "mean", "gap",
      "relative_gap_pct", "std"}`` (+ ``"transfer_gap"``): ``gap = max - min`` (always >= 0),
      ``relative_gap_pct = 100 * gap / |best|`` (None when best is 0), ``std`` the population
      standard deviation (ddof=0) over languages, ``mean`` the unweighted mean over languages.
      Ties go to the language listed first.
    """
    values = {
        k: float(v) for k, v in per_language.items() if v is not None and not math.isnan(float(v))
    }
    if not values:
        raise ValueError("gap_statistics needs at least one language with a score; got none")
    langs, arr = list(values), np.array(list(values.values()), dtype=np.float64)
    best_i = int(np.argmax(arr) if higher_is_better else np.argmin(arr))
    worst_i = int(np.argmin(arr) if higher_is_better else np.argmax(arr))
    gap = float(arr.max() - arr.min())
    stats: dict[str, Any] = {
        "num_languages": len(arr),
        "best": float(arr[best_i]),
        "best_language": langs[best_i],
        "worst": float(arr[worst_i]),
        "worst_language": langs[worst_i],
        "mean": float(arr.mean()),
        "gap": gap,
        "relative_gap_pct": float(100.0 * gap / abs(arr[best_i])) if arr[best_i] != 0 else None,
        "std": float(arr.std()),
    }
    targets = [k for k in zero_shot if k in values]
    if targets:
        stats.update(_transfer(values, source_language, targets))
    elif source_language is not None:
        if source_language not in values:
            raise ValueError(
                f"source_language {source_language!r} has no score; languages with scores: "
                f"{', '.join(langs)}"
            )
        others = [v for k, v in values.items() if k != source_language]
        stats["transfer_gap"] = values[source_language] - float(np.mean(others)) if others else None
    return stats


def _transfer(
    values: Mapping[str, float], source_language: str | None, targets: Sequence[str]
) -> dict[str, Any]:
    """XTREME's transfer gap from the source (or the seen languages' mean) to zero-shot targets."""
    seen = [v for k, v in values.items() if k not in targets]
    if source_language is not None:
        if source_language not in values or source_language in targets:
            raise ValueError(
                f"source_language {source_language!r} has no score among the languages seen in "
                f"training ({', '.join(k for k in values if k not in targets) or 'none'})"
            )
        source = values[source_language]
    else:
        source = float(np.mean(seen)) if seen else None
    zs_mean = float(np.mean([values[k] for k in targets]))
    return {
        "seen_mean": float(np.mean(seen)) if seen else None,
        "zero_shot_mean": zs_mean,
        "transfer_gap": None if source is None else source - zs_mean,
        "transfer_gaps": {k: None if source is None else source - values[k] for k in targets},
    }
