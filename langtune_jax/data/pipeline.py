"""Train and eval pipelines: sources -> tokenized stores -> mixture -> batches, per process.

    pipe = DataPipeline(data_cfg, sampling_cfg, tokenizer, task="sequence-classification",
                        seed=0, total_samples=steps * batch_size)
    print(pipe.plan.table())
    for batch in pipe.train_batches(batch_size=32, start_step=k): ...
    for batch in pipe.eval_batches("validation", batch_size=64): ...

Global batch `s` is a pure function of (seed, s, weights): its rows are mixture draws
`s*B .. s*B+B-1` (or, with packing, `s*M .. s*M+M-1` examples packed into B rows). Every process
computes the same global batch layout (its padded length comes from all B rows) and materialises
only its own rows `[p*B/P, (p+1)*B/P)`, so the global batch is identical whatever the number of
processes, and resuming at step k needs nothing but k. Batches are built ahead in a background
thread by grain (`MapDataset.range(start_step, ...).map(batch_at).to_iter_dataset(...)`).

Batch keys (numpy, per process): input_ids, attention_mask [b, T] int32; token_type_ids [b, T]
when the tokenizer gives them; labels [b] (sequence classification) or [b, T] with -100 ignored
(causal LM: aligned with input_ids, the loss shifts by one as in transformers); language_id [b]
int32 (index into `DataPipeline.languages`; a packed row's first segment); example_mask [b] int32
(0 = a padding row of the last eval batch or an empty packed row, else 1). With packing also
segment_ids [b, T] (1, 2, ... per example, 0 = padding): attention stays within equal segment ids
(and is causal for causal LM). Causal LM adds position_ids (restarting per segment); encoders
restart positions from segment_ids themselves. Packed classification adds segment_language
[b, S] (each segment's language id; S = `num_segments`); sequence classification then has
labels, example_mask (1 = a real segment) and segment_starts (each segment's first token, the one
pooled) all [b, S]. Eval packs classification too; `packing.unpack_segments` turns packed
outputs back into one row per example for the per-language metrics.

`DataPipeline` (here) reads, validates, tokenizes and caches the splits and makes the plan; it
serves batches through its parts: `TrainBatching` (`langtune_jax.data.train_batching`: the train
batches from the mixture), `EvalBatching` (`langtune_jax.data.eval_batching`: eval and probe
batches in a fixed order), both on `Batching` (`langtune_jax.data.batching`: padding, masking,
packing, each process's rows).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from langtune_jax.data import cache as cache_lib
from langtune_jax.data.config import DataConfig, SourceConfig
from langtune_jax.data.errors import DataError, MissingSplitError
from langtune_jax.data.eval_batching import EvalBatching
from langtune_jax.data.features import Tokenized, has_chat_template, tokenize
from langtune_jax.data.holdout import hold_out_validation
from langtune_jax.data.mixture import LanguageMixture
from langtune_jax.data.plan import SamplingPlan, build_plan
from langtune_jax.data.readers import class_names
from langtune_jax.data.sampling import SamplingConfig
from langtune_jax.data.sources import (
    SplitData,
    infer_labels,
    input_keys,
    load_split,
    overlap_note,
)
from langtune_jax.data.train_batching import TrainBatching
from langtune_jax.data.weight_record import WeightRecord
from langtune_jax.tasks import IGNORE_INDEX

log = logging.getLogger(__name__)


def check_eval_languages(split: str, languages: list[str], train_languages: list[str]) -> list[str]:
    """The one rule for which languages an evaluation split may hold: any. A language train lacks
    is evaluated zero-shot (through a fallback or language adapter, else the shared adapter; the
    session checks that some adapter serves it before step 0). A training language the split
    lacks is warned about: it has no scores, and the split's statistics leave it out.

    Returns:
      The split's zero-shot languages (sorted), logged once per split.
    """
    unknown = sorted(set(languages) - set(train_languages))
    missing = [lang for lang in train_languages if lang not in languages]
    if missing:
        log.warning(
            "split %r has no rows of the training language(s) %s: they get no %s scores, and the "
            "mean, worst and gap leave them out; add their rows to the split",
            split,
            ", ".join(map(repr, missing)),
            split,
        )
    if unknown:
        log.info(
            "split %r: language(s) %s not in train: evaluated zero-shot",
            split,
            ", ".join(map(repr, unknown)),
        )
    return unknown


def truncation_note(split: str, stores: dict[str, Tokenized], max_length: int) -> str | None:
    """A sentence on the examples of a split that ``data.max_length`` cut, or None if none was."""
    cut = {lang: store.truncated for lang, store in stores.items() if store.truncated}
    if not cut:
        return None
    total = sum(len(store) for store in stores.values())
    per_lang = ", ".join(f"{lang} {n:,}" for lang, n in sorted(cut.items()))
    return (
        f"split {split!r}: {sum(cut.values()):,} of {total:,} examples are longer than "
        f"data.max_length={max_length} tokens and were cut to it ({per_lang}); raise "
        "data.max_length to keep them whole"
    )


def check_targets(split: str, stores: dict[str, Tokenized], task: str, max_length: int) -> None:
    """Every language of a split keeps at least one trainable target after truncation.

    Token classification and causal LM carry their targets per token; truncation to
    `data.max_length` can cut all of them (a prompt longer than `max_length` leaves no response
    token), and such a language would train on nothing or score as empty.

    Raises:
      DataError: naming the split, the language and `data.max_length`.
    """
    if task == "sequence-classification":
        return
    for lang, store in stores.items():
        if store.token_labels is None or not np.any(store.token_labels != IGNORE_INDEX):
            raise DataError(
                f"split {split!r}, language {lang!r}: no example keeps a target token after "
                f"truncation to data.max_length={max_length}; raise data.max_length or shorten "
                "the prompts"
            )


def _warn(note: str | None) -> None:
    if note:
        log.warning(note)


def _check_task(task: str, data_cfg: DataConfig, tokenizer) -> None:
    """Refuse what the task cannot do with this data config or tokenizer (masked LM)."""
    if task == "masked-lm" and data_cfg.packing:
        raise DataError(
            "data.packing is not supported with model.task masked-lm yet; set data.packing: false"
        )
    if task == "masked-lm" and getattr(tokenizer, "mask_token_id", None) is None:
        raise DataError(
            f"model.task masked-lm needs a tokenizer with a mask token; "
            f"{type(tokenizer).__name__} has none (use the model's own tokenizer)"
        )


class DataPipeline(TrainBatching, EvalBatching):
    """Loads, validates and tokenizes the data of a run once; then serves batches.

    Args:
      data_cfg: sources, lengths, labels, bad-row policy.
      sampling_cfg: language strategy and options.
      tokenizer: a Hugging Face fast tokenizer.
      task: sequence-classification, token-classification or causal-lm.
      seed: the run seed (mixture order).
      total_samples: examples the run draws (steps x global batch size); used for the plan and as
        UniMax's budget when `sampling.budget` is unset.
      batch_size: the run's global batch size. With packing a step draws
        `examples_per_step(batch_size)` examples, not `batch_size`, so the plan (expected samples
        and epochs, UniMax's budget) counts `total_samples / batch_size` steps of that many.
      cache_dir: a folder (the run folder's ``data_cache``) where tokenized splits are kept,
        keyed by a data + tokenizer fingerprint (`langtune_jax.data.cache`); None = no cache.
      warn: log the warnings of reading the data (off when reopening a trained run, whose
        training already showed them).

    Attributes:
      languages: sorted training languages (`language_id` indexes this list).
      zero_shot: evaluation languages absent from train, in the order their splits were loaded;
        an eval batch's `language_id` indexes `all_languages` = languages + zero_shot.
      labels: label (tag) vocabulary: `data.labels`, else the `ClassLabel` names of Hugging
        Face sources (in their order), else the sorted labels of train.
      train: the training `SplitData`; `stores`: language -> `Tokenized` train rows.
      plan: the `SamplingPlan`; `probabilities`: per-draw probability per language (the prior
        of dynamic weights).
      weights: strategy dynamic: the `WeightRecord` whose segments the mixture reads (the loop
        records losses into it and calls `set_weight_segments`); None for static strategies.
    """

    def __init__(
        self,
        data_cfg: DataConfig,
        sampling_cfg: SamplingConfig,
        tokenizer,
        *,
        task: str,
        seed: int = 0,
        total_samples: int | None = None,
        batch_size: int | None = None,
        cache_dir: str | Path | None = None,
        warn: bool = True,
        defer_cache: bool = False,
    ):
        self.data_cfg, self.sampling_cfg, self.tokenizer = data_cfg, sampling_cfg, tokenizer
        self.task, self.seed = task, int(seed)
        self.buckets = data_cfg.buckets()
        self.pad_id = next(
            (t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0
        )
        _check_task(task, data_cfg, tokenizer)
        # With defer_cache, tokenized splits are written only by `commit_cache` (after the run's
        # checks passed: a refused run leaves its folder untouched).
        self._pending: list[tuple[str, SplitData, dict[str, Tokenized]]] | None = (
            [] if defer_cache else None
        )
        self.zero_shot: list[str] = []
        self._eval_cache: dict[str, tuple[SplitData, dict[str, Tokenized]]] = {}
        self._eval_order: dict[str, list[tuple[str, int]]] = {}
        self._eval_packs_cache: dict[tuple[str, int], list[int]] = {}
        self._external: dict[str, DataConfig] = {}  # splits of other sources (`add_split`)
        self._train_inputs: dict[str, set[str]] | None = None  # `input_keys` of train, once
        self._mixtures: dict[int, LanguageMixture] = {}
        self._cache = (
            Path(cache_dir) / cache_lib.data_fingerprint(data_cfg, task, tokenizer)
            if cache_dir is not None
            else None
        )
        self._load_train()
        self.languages = self.train.languages
        self.tokens = {lang: int(s.offsets[-1]) for lang, s in self.stores.items()}
        self._plan_run(total_samples or 0, batch_size)
        # The plan's own warnings print with its table (`plan.table()`), once.
        if warn and self._chat_fallback():
            log.warning(
                "the tokenizer has no chat template: chat messages are formatted as "
                "'role: content' lines, then 'assistant: ' (langtune generate does the same)"
            )

    def _load_train(self) -> None:
        """The train split from the cache when it holds it, else read, validated and tokenized."""
        cached = cache_lib.load_split(self._cache, "train") if self._cache else None
        if cached is None:
            self._read_train()
            return
        self.train, self.stores, self.labels = cached
        self.label_to_id = {label: i for i, label in enumerate(self.labels)}

    def _plan_run(self, total_samples: int, batch_size: int | None) -> None:
        """The sampling plan, its per-draw probabilities and (strategy dynamic) the weight record."""
        self.plan = self.make_plan(total_samples)
        self.probabilities = self.plan.probabilities
        if self.packing and total_samples and batch_size:
            # Packed steps draw more examples than rows; the draws per step depend on the mixture
            # (mean example length), so plan once more with the real count of draws.
            steps = total_samples // batch_size
            self.plan = self.make_plan(steps * self.examples_per_step(batch_size))
            self.probabilities = self.plan.probabilities
        self.weights = (
            WeightRecord(
                self.sampling_cfg, self.plan, steps=total_samples // max(batch_size or 1, 1)
            )
            if self.sampling_cfg.strategy == "dynamic"
            else None
        )
        if self.weights is not None:
            self.plan.dynamic = self.weights.to_dict()
        self._segments: list[tuple[int, dict[str, float]]] = [(0, dict(self.probabilities))]

    def _chat_fallback(self) -> bool:
        chat = any(s.messages_column for s in self.data_cfg.sources)
        return self.task == "causal-lm" and chat and not has_chat_template(self.tokenizer)

    def _read_train(self) -> None:
        """Read, validate and tokenize train (and the held-out validation rows); cache them."""
        data_cfg, task = self.data_cfg, self.task
        self.train = load_split(data_cfg, "train", task=task, labels=data_cfg.labels)
        self.labels = (
            list(data_cfg.labels)
            if data_cfg.labels is not None
            else class_names(data_cfg, task) or infer_labels(self.train, task)
        )
        self.label_to_id = {label: i for i, label in enumerate(self.labels)}
        held = self._hold_out() if data_cfg.validation_fraction > 0 else None
        self.stores = self._tokenize(self.train)
        check_targets("train", self.stores, task, data_cfg.max_length)
        # Train's truncated rows are a note of the plan, which prints at the start of training.
        self._save("train", self.train, self.stores)
        if held is not None:
            self._eval_cache["validation"] = (held, self._tokenize(held))
            _warn(
                truncation_note(
                    "validation", self._eval_cache["validation"][1], data_cfg.max_length
                )
            )
            self._warn_overlap("validation", held)
            self._save("validation", *self._eval_cache["validation"])

    def _hold_out(self) -> SplitData:
        """Carve validation from train (``data.validation_fraction``) when the data has none."""
        labels = self.labels if "classification" in self.task else None
        try:
            load_split(self.data_cfg, "validation", task=self.task, labels=labels)
        except MissingSplitError:
            pass
        else:
            raise DataError(
                "data.validation_fraction is set but the data has a validation split; remove "
                "data.validation_fraction or that split"
            )
        self.train, held = hold_out_validation(self.train, self.data_cfg.validation_fraction)
        return held

    def _save(self, name: str, data: SplitData, stores: dict[str, Tokenized]) -> None:
        if self._pending is not None:
            self._pending.append((name, data, stores))
        elif self._cache is not None and jax.process_index() == 0:
            cache_lib.save_split(self._cache, name, data, stores, self.labels)

    def commit_cache(self) -> None:
        """Write the tokenized splits held back by ``defer_cache``; later splits write at once."""
        pending, self._pending = self._pending or [], None
        for item in pending:
            self._save(*item)

    def _tokenize(self, split: SplitData) -> dict[str, Tokenized]:
        return {
            lang: tokenize(
                rows,
                self.tokenizer,
                task=self.task,
                max_length=self.data_cfg.max_length,
                label_to_id=self.label_to_id,
            )
            for lang, rows in split.examples.items()
        }

    def make_plan(self, total_samples: int) -> SamplingPlan:
        """The sampling plan for a run of `total_samples` draws."""
        return build_plan(
            self.train.counts(),
            self.sampling_cfg,
            total_samples,
            tokens=self.tokens,
            skipped=self.train.skipped,
            skipped_reasons=self.train.reasons,
            notes=self.train.notes()
            + [n for n in [truncation_note("train", self.stores, self.data_cfg.max_length)] if n],
        )

    # ---------------------------------------------------------------- eval splits

    def split(self, split: str) -> tuple[SplitData, dict[str, Tokenized]]:
        """A validated, tokenized evaluation split (cached). Labels outside the vocabulary are
        errors (or skipped rows with on_bad_row: skip). Languages absent from train are
        evaluated zero-shot: they join `zero_shot` (and `all_languages`) in first-seen order."""
        if split == "train":
            return self.train, self.stores
        external = self._external.get(split)
        if split not in self._eval_cache and self._cache is not None and external is None:
            cached = cache_lib.load_split(self._cache, split)
            if cached is not None:
                self._eval_cache[split] = cached[:2]
                self._add_zero_shot(
                    check_eval_languages(split, cached[0].languages, self.languages)
                )
        if split not in self._eval_cache:
            labels = (
                self.labels
                if self.task in ("sequence-classification", "token-classification")
                else None
            )
            data = load_split(external or self.data_cfg, split, task=self.task, labels=labels)
            self._add_zero_shot(check_eval_languages(split, data.languages, self.languages))
            stores = self._tokenize(data)
            check_targets(split, stores, self.task, self.data_cfg.max_length)
            _warn(truncation_note(split, stores, self.data_cfg.max_length))
            self._warn_overlap(split, data)
            self._eval_cache[split] = (data, stores)
            if external is None:  # the cache's fingerprint covers the run's own sources only
                self._save(split, *self._eval_cache[split])
        return self._eval_cache[split]

    def _warn_overlap(self, split: str, data: SplitData) -> None:
        """Warn about `data`'s examples that are training inputs (train's keys made once)."""
        if self._train_inputs is None:
            self._train_inputs = input_keys(self.train)
        _warn(overlap_note(split, data, self._train_inputs))

    def add_split(self, name: str, source: SourceConfig) -> None:
        """Serve split ``name`` from ``source`` (``langtune eval --data``), read and checked with
        the run's data options and label vocabulary; it is not written to the tokenized cache."""
        if name == "train" or name in self._eval_cache or name in self._external:
            raise DataError(f"split {name!r} is already part of this run's data; pick another name")
        self._external[name] = dataclasses.replace(
            self.data_cfg, sources=[source], split_names={}, validation_fraction=0.0
        )

    def _add_zero_shot(self, languages: list[str]) -> None:
        self.zero_shot += [lang for lang in languages if lang not in self.zero_shot]

    @property
    def all_languages(self) -> list[str]:
        """Training languages, then the zero-shot languages found so far (`language_id` of an
        eval batch indexes this list; training ids are the same, a prefix of it)."""
        return self.languages + self.zero_shot

    def zero_shot_languages(self, split: str) -> list[str]:
        """The languages of `split` that train does not have (the split is loaded and cached)."""
        data, _ = self.split(split)
        return [lang for lang in data.languages if lang not in self.languages]

    def has_split(self, split: str) -> bool:
        """Whether any source has data for `split` (bad rows in it still raise)."""
        try:
            self.split(split)
        except MissingSplitError:
            return False
        return True


def train_batches(
    data_cfg: DataConfig,
    sampling_cfg: SamplingConfig,
    tokenizer,
    *,
    task: str,
    batch_size: int,
    seed: int = 0,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    total_samples: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One-call train iterator (builds a `DataPipeline`; keep the pipeline to reuse it)."""
    pipe = DataPipeline(
        data_cfg, sampling_cfg, tokenizer, task=task, seed=seed, total_samples=total_samples
    )
    return pipe.train_batches(
        batch_size,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
    )


def eval_batches(
    data_cfg: DataConfig,
    tokenizer,
    split: str,
    *,
    task: str,
    batch_size: int,
    sampling_cfg: SamplingConfig | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One-call eval iterator over a whole split (labels and languages come from train)."""
    pipe = DataPipeline(data_cfg, sampling_cfg or SamplingConfig(), tokenizer, task=task)
    return pipe.eval_batches(
        split, batch_size, process_index=process_index, process_count=process_count
    )
