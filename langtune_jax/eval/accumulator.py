"""The streaming per-language accumulator and the one-shot ``per_language_report``.

:class:`PerLanguageAccumulator` sums, per language and batch by batch, the additive counts behind
every metric of :mod:`langtune_jax.eval.metrics` (confusion matrices, entity counts, token NLL);
``compute()`` turns them into the report (per-language and overall metrics, gap statistics).
:func:`per_language_report` does the same for predictions already in memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from langtune_jax.eval.inputs import argmax_if_logits, as_ids, derive_label_names
from langtune_jax.eval.metrics import (
    PRIMARY_METRIC,
    SCALAR_METRICS,
    SCHEMA_VERSION,
    EntityScheme,
    check_task,
    classification_metrics,
    entity_scores,
    gap_statistics,
    lm_metrics,
    lm_token_stats,
    metric_info,
)
from langtune_jax.tasks import IGNORE_INDEX, LM_TASKS, Task


class PerLanguageAccumulator:
    """Sums the counts behind every metric, per language, over evaluation batches.

    Usage::

        acc = PerLanguageAccumulator("sequence-classification", ["en", "de", "sw"], label_names)
        for batch, out in ...:  # numpy arrays (jax.device_get)
            acc.update(out["predictions"], batch["labels"], batch["language_id"],
                       batch["example_mask"])
        report = acc.compute()  # per_language, overall, gaps (see per_language_report)

    Args:
      task: one of :data:`langtune_jax.tasks.TASKS`.
      languages: language names; ``language_id`` indexes this list.
      label_names: class names (sequence classification; optional when ``num_labels`` is given)
        or entity tags (token classification; required). Unused for causal LM.
      num_labels: number of classes when ``label_names`` is not given.
      source_language: adds the cross-lingual transfer gap to the gap statistics.
      zero_division: the F1 of a class absent from a language's truth and predictions: nan
        (default: left out of the macro mean, as scikit-learn's ``f1_score(average="macro")``
        without ``labels=`` scores only the classes present; a language that never has a class
        is not penalised for it), 0.0 or 1.0; sequence classification only.
    """

    def __init__(
        self,
        task: Task | str,
        languages: Sequence[str],
        label_names: Sequence[str] | None = None,
        *,
        num_labels: int | None = None,
        source_language: str | None = None,
        zero_division: float = math.nan,
    ):
        self.task = check_task(task)
        self.languages = [str(lang) for lang in languages]
        if len(set(self.languages)) != len(self.languages) or not self.languages:
            raise ValueError(f"languages must be a non-empty list of unique names: {languages}")
        if source_language is not None and source_language not in self.languages:
            raise ValueError(
                f"source_language {source_language!r} is not among the languages {self.languages}"
            )
        if not (zero_division in (0.0, 1.0) or math.isnan(zero_division)):
            raise ValueError(f"zero_division must be 0.0, 1.0 or nan, got {zero_division!r}")
        self.source_language = source_language
        self.zero_division = float(zero_division)
        self.label_names = list(label_names) if label_names is not None else None
        n_lang = len(self.languages)
        self.num_examples = np.zeros(n_lang, dtype=np.int64)
        if self.task == "sequence-classification":
            if self.label_names is None and num_labels is None:
                raise ValueError("sequence-classification needs label_names or num_labels")
            self.num_labels = len(self.label_names) if self.label_names else int(num_labels)
            if self.label_names is None:
                self.label_names = [str(i) for i in range(self.num_labels)]
            self.confusion = np.zeros((n_lang, self.num_labels, self.num_labels), dtype=np.int64)
        elif self.task == "token-classification":
            if self.label_names is None:
                raise ValueError("token-classification needs label_names (the tags, e.g. 'B-PER')")
            self.num_labels = len(self.label_names)
            self.scheme = EntityScheme(self.label_names)
            n_types = len(self.scheme.types)
            # [L, K] entity counts per language and type: true, predicted, correct.
            self.entities = np.zeros((3, n_lang, n_types), dtype=np.int64)
            self.tokens = np.zeros((2, n_lang), dtype=np.int64)  # seen, right
        else:
            self.nll_sum = np.zeros(n_lang, dtype=np.float64)
            self.tokens = np.zeros((2, n_lang), dtype=np.int64)  # seen, right

    # -- updates ----------------------------------------------------------------------------

    def _rows(self, language_id: Any, example_mask: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Validated ``(row indices kept, their language ids)``."""
        lang = np.asarray(language_id, dtype=np.int64).reshape(-1)
        mask = np.ones(n, bool) if example_mask is None else np.asarray(example_mask).reshape(-1)
        if len(lang) != n or len(mask) != n:
            raise ValueError(
                f"batch size mismatch: {n} examples, {len(lang)} language ids, {len(mask)} mask "
                "entries"
            )
        keep = np.nonzero(mask.astype(bool))[0]
        bad = lang[keep][(lang[keep] < 0) | (lang[keep] >= len(self.languages))]
        if len(bad):
            raise ValueError(
                f"language_id {int(bad[0])} out of range: {len(self.languages)} languages "
                f"{self.languages}"
            )
        return keep, lang[keep]

    def _check_labels(self, ids: np.ndarray, what: str) -> None:
        valid = ids[ids != IGNORE_INDEX]
        if valid.size and (valid.min() < 0 or valid.max() >= self.num_labels):
            raise ValueError(
                f"{what} hold id {int(valid.min() if valid.min() < 0 else valid.max())} outside "
                f"[0, {self.num_labels}) for label_names {self.label_names}"
            )

    def update(
        self,
        predictions: Any,
        labels: Any = None,
        language_id: Any = None,
        example_mask: Any = None,
        *,
        token_nll: Any = None,
    ) -> None:
        """Add one batch.

        Also takes a single mapping, ``update({**eval_step_outputs, **batch})``, with the keys
        ``labels``, ``language_id``, optional ``example_mask``, and ``predictions`` (classification;
        causal LM with ``token_nll``) or, for causal LM, ``nll_sum``, ``token_count`` and
        ``correct`` (per-example sums, see :meth:`update_lm_totals`).

        Args:
          predictions: sequence classification ``[B]`` class ids or ``[B, C]`` logits; token
            classification ``[B, T]`` tag ids or ``[B, T, C]`` logits; causal LM ``[B, T]``
            predicted token ids (with ``token_nll``) or ``[B, T, V]`` logits (aligned with
            ``labels``: the caller shifts).
          labels: ``[B]`` class ids, or ``[B, T]`` ids with ``IGNORE_INDEX`` at positions that
            must not count.
          language_id: ``[B]`` index into ``languages``.
          example_mask: ``[B]``, 0 for padding rows (never counted); None = all rows count.
          token_nll: causal LM only, ``[B, T]`` per-token negative log-likelihood in nats.
        """
        if isinstance(predictions, Mapping):
            self._update_from_mapping(predictions)
            return
        if labels is None or language_id is None:
            raise ValueError("update needs predictions, labels and language_id (or one mapping)")
        index = {n: i for i, n in enumerate(self.label_names)} if self.label_names else None
        labels = as_ids(labels, index, "labels")
        if self.task in LM_TASKS:
            self._update_lm(predictions, labels, language_id, example_mask, token_nll)
        else:
            preds = as_ids(argmax_if_logits(predictions, labels.ndim), index, "predictions")
            self._update_classes(preds, labels, language_id, example_mask)

    def _update_lm(
        self,
        predictions: Any,
        labels: np.ndarray,
        language_id: Any,
        example_mask: Any,
        token_nll: Any,
    ) -> None:
        """Add an LM batch: per-token NLL (computed from logits when not given) summed per row."""
        if token_nll is None:
            token_nll, predictions = lm_token_stats(np.asarray(predictions), labels)
        preds, nll = np.asarray(predictions, np.int64), np.asarray(token_nll, np.float64)
        valid = labels != IGNORE_INDEX  # [B, T]
        self.update_lm_totals(
            np.where(valid, nll, 0.0).sum(-1),
            valid.sum(-1),
            (valid & (preds == labels)).sum(-1),
            language_id,
            example_mask,
        )

    def _update_classes(
        self, preds: np.ndarray, labels: np.ndarray, language_id: Any, example_mask: Any
    ) -> None:
        """Add a classification batch of ids: the confusion matrix, or entity and token counts."""
        if preds.shape != labels.shape:
            raise ValueError(f"predictions {preds.shape} and labels {labels.shape} differ in shape")
        keep, lang = self._rows(language_id, example_mask, len(labels))
        if self.task == "sequence-classification":  # an IGNORE_INDEX label: the row must not count
            counted = labels[keep] != IGNORE_INDEX
            keep, lang = keep[counted], lang[counted]
        preds, labels = preds[keep], labels[keep]
        self._check_labels(labels, "labels")
        np.add.at(self.num_examples, lang, 1)
        if self.task == "sequence-classification":
            self._check_labels(preds, "predictions")
            np.add.at(self.confusion, (lang, labels, preds), 1)
        elif len(labels):
            self._update_entities(preds, labels, lang)

    def _update_from_mapping(self, batch: Mapping[str, Any]) -> None:
        if self.task in LM_TASKS and "nll_sum" in batch:
            needed = ("nll_sum", "token_count", "correct", "language_id")
        else:
            needed = ("predictions", "labels", "language_id")
        missing = [k for k in needed if k not in batch]
        if missing:
            raise ValueError(
                f"{self.task} batch mapping lacks {missing}; it has {sorted(batch)} (expected "
                f"{list(needed)} and optionally example_mask)"
            )
        if needed[0] == "nll_sum":
            self.update_lm_totals(
                batch["nll_sum"],
                batch["token_count"],
                batch["correct"],
                batch["language_id"],
                batch.get("example_mask"),
            )
        else:
            self.update(
                batch["predictions"],
                batch["labels"],
                batch["language_id"],
                batch.get("example_mask"),
                token_nll=batch.get("token_nll"),
            )

    def _update_entities(self, preds: np.ndarray, labels: np.ndarray, lang: np.ndarray) -> None:
        valid = labels != IGNORE_INDEX  # [B, T]; predictions at ignored positions are dropped
        self._check_labels(np.where(valid, preds, 0), "predictions")
        np.add.at(self.tokens[0], lang, valid.sum(-1))
        np.add.at(self.tokens[1], lang, (valid & (preds == labels)).sum(-1))
        # Flatten the kept tokens, one separator "O" after each sentence (as seqeval does).
        lengths = valid.sum(-1)  # [B]
        keep = np.concatenate([valid, np.ones_like(valid[:, :1])], axis=1).ravel()  # [B * (T + 1)]
        sep_ids = np.full((len(labels), 1), self.scheme.separator)
        offsets = np.cumsum(lengths + 1) - (lengths + 1)  # flat index of each row's first token
        n = int((lengths + 1).sum())
        codes = []
        for ids in (labels, preds):
            flat = np.concatenate([ids, sep_ids], axis=1).ravel()[keep]  # [n]
            typ, start, end = self.scheme.chunks(flat)
            row = np.searchsorted(offsets, start, side="right") - 1
            np.add.at(self.entities[len(codes)], (lang[row], typ), 1)
            codes.append((typ * (n + 1) + start) * (n + 1) + end)  # unique id per chunk
        both = np.intersect1d(codes[0], codes[1], assume_unique=True)
        typ, start = both // (n + 1) ** 2, both // (n + 1) % (n + 1)
        row = np.searchsorted(offsets, start, side="right") - 1
        np.add.at(self.entities[2], (lang[row], typ), 1)

    def update_lm_totals(
        self,
        nll_sum: Any,
        token_count: Any,
        correct_count: Any,
        language_id: Any,
        example_mask: Any = None,
    ) -> None:
        """Add per-example causal-LM sums reduced on device (cheaper than moving logits).

        Args:
          nll_sum: ``[B]`` summed token NLL (nats) over each example's counted tokens.
          token_count: ``[B]`` number of counted tokens (labels != IGNORE_INDEX).
          correct_count: ``[B]`` counted tokens whose argmax prediction equals the label.
          language_id: ``[B]``; example_mask: ``[B]``, 0 for padding rows.
        """
        if self.task not in LM_TASKS:
            raise ValueError(
                f"update_lm_totals is for the LM tasks, this accumulator is {self.task}"
            )
        nll_sum = np.asarray(nll_sum, np.float64).reshape(-1)
        keep, lang = self._rows(language_id, example_mask, len(nll_sum))
        np.add.at(self.num_examples, lang, 1)
        np.add.at(self.nll_sum, lang, nll_sum[keep])
        # Counts may arrive as float32 from a jitted step: round, do not truncate.
        for row, counts in ((0, token_count), (1, correct_count)):
            counts = np.rint(np.asarray(counts, np.float64)).astype(np.int64).reshape(-1)
            np.add.at(self.tokens[row], lang, counts[keep])

    def _count_arrays(self) -> list[np.ndarray]:
        names = {
            "sequence-classification": ["confusion"],
            "token-classification": ["entities", "tokens"],
            "causal-lm": ["nll_sum", "tokens"],
            "masked-lm": ["nll_sum", "tokens"],
        }[self.task]
        return [self.num_examples] + [getattr(self, n) for n in names]

    def merge(self, other: PerLanguageAccumulator) -> PerLanguageAccumulator:
        """Add the counts of ``other`` (same task, languages, labels) into this one; returns self.

        For evaluation split across JAX processes: each process accumulates its own shard, then
        the counts are gathered and merged (all metrics are sums of counts, so order is free).
        """
        same = (self.task, self.languages, self.label_names) == (
            other.task,
            other.languages,
            other.label_names,
        )
        if not same:
            raise ValueError(
                f"cannot merge accumulators of different set-ups: {self.task} {self.languages} "
                f"vs {other.task} {other.languages} (labels must match too)"
            )
        for mine, theirs in zip(self._count_arrays(), other._count_arrays(), strict=True):
            mine += theirs
        return self

    # -- results ----------------------------------------------------------------------------

    def _metrics(self, sel: np.ndarray | slice) -> dict[str, Any]:
        """Metrics of the languages ``sel`` selects, their counts pooled."""
        n = int(np.sum(self.num_examples[sel]))
        if self.task == "sequence-classification":
            conf = self.confusion[sel].sum(0)
            return classification_metrics(conf, self.label_names, self.zero_division)
        tokens = self.tokens[:, sel].sum(-1)
        if self.task in LM_TASKS:
            out = lm_metrics(float(np.sum(self.nll_sum[sel])), int(tokens[0]), int(tokens[1]))
            return {"num_examples": n, "num_tokens": int(tokens[0]), **out}
        ent = self.entities[:, sel].sum(1)  # [3, K]
        per_type = {
            t: entity_scores(*ent[:, k])["f1"]
            for k, t in enumerate(self.scheme.types)
            if ent[0, k] or ent[1, k]  # seqeval lists the types seen in truth or predictions
        }
        return {
            "num_examples": n,
            "num_tokens": int(tokens[0]),
            **entity_scores(*ent.sum(-1)),
            "token_accuracy": float(tokens[1] / tokens[0]) if tokens[0] else math.nan,
            "num_true_entities": int(ent[0].sum()),
            "num_pred_entities": int(ent[1].sum()),
            "per_type_f1": per_type,
        }

    def compute(
        self, source_language: str | None = None, zero_shot: Sequence[str] = ()
    ) -> dict[str, Any]:
        """The report: per-language and overall metrics and gap statistics (no side effects).

        Args:
          source_language: overrides the constructor's (adds the transfer gap).
          zero_shot: languages absent from the training data. Those with examples are listed in
            the report's ``zero_shot`` and the transfer gap is measured to them (see
            :func:`gap_statistics`); those without examples are not reported as empty.

        Returns:
          A dict with the keys documented in :func:`per_language_report`.
        """
        if source_language is not None and source_language not in self.languages:
            raise ValueError(
                f"source_language {source_language!r} is not among the languages {self.languages}"
            )
        source_language = source_language or self.source_language
        present = [i for i, _ in enumerate(self.languages) if self.num_examples[i] > 0]
        if not present:
            raise ValueError(f"no examples were counted for any of {self.languages}")
        per_language = {self.languages[i]: self._metrics(np.array([i])) for i in present}
        metrics = SCALAR_METRICS[self.task]
        source = source_language if source_language in per_language else None
        return {
            "schema_version": SCHEMA_VERSION,
            "task": self.task,
            "primary_metric": PRIMARY_METRIC[self.task],
            "metrics": list(metrics),
            "higher_is_better": {m: metric_info(m).higher_is_better for m in metrics},
            "languages": list(per_language),
            "empty_languages": [
                lang
                for lang in self.languages
                if lang not in per_language and lang not in zero_shot
            ],
            "zero_shot": [lang for lang in per_language if lang in zero_shot],
            "source_language": source,
            "label_names": self.label_names,
            "per_language": per_language,
            "overall": self._metrics(slice(None)),
            "gaps": {
                m: gap_statistics(
                    {lang: r[m] for lang, r in per_language.items()},
                    source,
                    higher_is_better=metric_info(m).higher_is_better,
                    zero_shot=zero_shot,
                )
                for m in metrics
            },
        }


def per_language_report(
    predictions: Any,
    labels: Any,
    languages: Sequence[str],
    task: Task | str,
    *,
    label_names: Sequence[str] | None = None,
    source_language: str | None = None,
    zero_division: float = math.nan,
    language_order: Sequence[str] | None = None,
    zero_shot: Sequence[str] = (),
) -> dict[str, Any]:
    """Per-language metrics, overall metrics and gap statistics for one evaluation set.

    Args:
      predictions: one entry per example. Sequence classification: class ids ``[N]`` (or logits
        ``[N, C]``, or label strings). Token classification: ``[N, T]`` tag ids (or ``[N, T, C]``
        logits, or ragged lists of ids / tag strings). Causal LM: logits ``[N, T, V]`` aligned
        with ``labels`` (for large sets use :class:`PerLanguageAccumulator` with per-token NLL).
      labels: the truth, same layout; ``IGNORE_INDEX`` (-100) marks positions that do not count.
      languages: ``[N]`` language name of each example.
      task: one of :data:`langtune_jax.tasks.TASKS`.
      label_names: class names / entity tags (ids index this list). For sequence classification
        without it, the classes are ``0 .. max id``; for token classification it is required
        when ids are given, and derived (sorted, "O" first) when tags are strings.
      source_language: adds ``transfer_gap`` to every metric's gap statistics.
      zero_division: see :class:`PerLanguageAccumulator`.
      language_order: the languages in report order (e.g. the config's); languages listed here
        without examples go to ``empty_languages``. Default: order of first appearance.
      zero_shot: languages evaluated zero-shot (absent from training): listed in ``zero_shot``;
        the transfer gap is measured to them (:func:`gap_statistics`).

    Returns:
      ``{"schema_version", "task", "primary_metric", "metrics" (scalar metric names, primary
      first), "higher_is_better" {metric: bool}, "languages" (with data, in first-seen order),
      "empty_languages", "zero_shot" (languages evaluated zero-shot), "source_language",
      "label_names", "per_language" {language: metrics}, "overall" (all examples pooled),
      "gaps" {metric: gap_statistics(...)}}``. Metric values are fractions in [0, 1] except
      loss (nats) and perplexity (see :data:`~langtune_jax.eval.metrics.METRICS`).
    """
    task = check_task(task)
    langs = [str(x) for x in languages]
    order = list(dict.fromkeys([*(language_order or []), *langs]))
    if label_names is None and task not in LM_TASKS:
        label_names = derive_label_names(predictions, labels, task)
    acc = PerLanguageAccumulator(
        task,
        order,
        label_names,
        source_language=source_language,
        zero_division=zero_division,
    )
    lang_ids = np.array([order.index(x) for x in langs], dtype=np.int64) if langs else []
    if task == "token-classification":
        predictions, labels = _token_ids_of_one_width(predictions, labels, acc.label_names)
    if len(labels) != len(langs):
        raise ValueError(f"{len(labels)} labels but {len(langs)} language entries")
    acc.update(predictions, labels, lang_ids)
    return acc.compute(zero_shot=zero_shot)


def _token_ids_of_one_width(
    predictions: Any, labels: Any, label_names: Sequence[str]
) -> tuple[Any, np.ndarray]:
    """Token-classification inputs as ids; ragged ids / tags padded to one width ``[N, T]``.

    Logit predictions are left as they are (the accumulator takes their argmax).
    """
    index = {n: i for i, n in enumerate(label_names)}
    labels = as_ids(labels, index, "labels")
    if not (isinstance(predictions, np.ndarray) and predictions.dtype.kind == "f"):
        predictions = as_ids(predictions, index, "predictions")
        # Ragged inputs padded separately may differ in width: pad both to the wider one.
        width = max(labels.shape[1], predictions.shape[1])
        pad = width - labels.shape[1]
        labels = np.pad(labels, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
        predictions = np.pad(predictions, ((0, 0), (0, width - predictions.shape[1])))
    return predictions, labels
