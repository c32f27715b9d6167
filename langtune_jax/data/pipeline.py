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
pooled) all [b, S]. Eval packs classification too; `features.unpack_segments` turns packed
outputs back into one row per example for the per-language metrics.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import grain
import jax
import numpy as np

from langtune_jax.data import cache as cache_lib
from langtune_jax.data.config import DataConfig
from langtune_jax.data.errors import DataError, MissingSplitError
from langtune_jax.data.features import (
    Tokenized,
    choose_bucket,
    collate,
    has_chat_template,
    mask_tokens,
    pack,
    row_first,
    segment_counts,
    tokenize,
)
from langtune_jax.data.holdout import hold_out_validation
from langtune_jax.data.mixture import LanguageMixture, hash_key, permute
from langtune_jax.data.plan import SamplingPlan, WeightRecord, build_plan
from langtune_jax.data.readers import class_names
from langtune_jax.data.sampling import SamplingConfig
from langtune_jax.data.sources import SplitData, infer_labels, load_split
from langtune_jax.tasks import IGNORE_INDEX

log = logging.getLogger(__name__)


def _local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise ValueError(
            f"batch_size {global_batch} is not divisible by the {process_count} processes; "
            "use a multiple of the process count"
        )
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


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


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= pi < pc:
        raise ValueError(f"process_index {pi} outside [0, process_count={pc})")
    return pi, pc


class DataPipeline:
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
        self._save("train", self.train, self.stores)
        if held is not None:
            self._eval_cache["validation"] = (held, self._tokenize(held))
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
            notes=self.train.notes(),
        )

    def _mask(self, batch: dict[str, np.ndarray], where: tuple[int, int], local: slice):
        """Masked LM: BERT's corruption keyed by (seed, train 0 / eval 1, step, global row)."""
        if self.task != "masked-lm":
            return batch
        keys = [(self.seed, *where, row) for row in range(local.start, local.stop)]
        return mask_tokens(
            batch,
            keys,
            mask_token_id=self.tokenizer.mask_token_id,
            vocab_size=len(self.tokenizer),
            probability=self.data_cfg.mlm_probability,
        )

    # ---------------------------------------------------------------- train

    def set_weight_segments(self, segments: list[tuple[int, dict[str, float]]]) -> None:
        """Piecewise weights: `(start_step, weights)` pairs, the first at step 0.

        Train batch s then depends on (seed, s, segments) only; iterators made before the call
        keep the old weights (make a new one from the step where the new weights start).
        """
        if not segments or segments[0][0] != 0:
            raise ValueError("weight segments must start at step 0")
        self._segments = [(int(s), dict(w)) for s, w in segments]
        self._mixtures = {}

    def weights_at(self, step: int) -> dict[str, float]:
        """Per-draw probability of each language at global train step `step`."""
        return dict(next(w for start, w in reversed(self._segments) if start <= step))

    def mixture(self, block_size: int) -> LanguageMixture:
        """The stateless mixture over training examples, shuffled in blocks of `block_size`
        (the draws per step: weight segments start at multiples of it)."""
        if block_size not in self._mixtures:
            (_, first), *later = self._segments
            self._mixtures[block_size] = LanguageMixture(
                self.train.examples,
                first,
                seed=self.seed,
                block_size=block_size,
                segments=[(s * block_size, w) for s, w in later],
            )
        return self._mixtures[block_size]

    def examples_per_step(self, batch_size: int) -> int:
        """Mixture draws per global batch: batch_size, or with packing enough to fill the rows.

        With packing: the expected example length under the mixture sets how many examples fit a
        row (a fixed number, so step s still maps to a fixed index range); examples that do not
        fit are dropped, counted by `packing_dropped`.
        """
        if not self.packing:
            return batch_size
        mean = sum(
            self.probabilities[lang] * self.tokens[lang] / len(self.stores[lang])
            for lang in self.languages
        )
        # 90% of the expected capacity: few drops, rows still mostly full.
        return max(batch_size, int(0.9 * batch_size * self.data_cfg.max_length / max(mean, 1.0)))

    @property
    def packing(self) -> bool:
        """Whether batches pack several examples per row (``data.packing``, every task)."""
        return self.data_cfg.packing

    @property
    def num_segments(self) -> int | None:
        """Segment slots per packed classification row: max_length // 2 (every tokenized example
        has at least [CLS] and [SEP]), so the slot count never drops an example and never changes
        shape. None for causal LM (its segments need no slots)."""
        return self.data_cfg.max_length // 2 if self.task != "causal-lm" else None

    def _draws(self, step: int, batch_size: int) -> tuple[list[tuple[Tokenized, int]], np.ndarray]:
        m = self.examples_per_step(batch_size)
        mix = self.mixture(m)
        lang, ex = mix.locate(np.arange(step * m, (step + 1) * m, dtype=np.int64))  # [M]
        # Mixture language ids index train.examples' keys (sorted) = self.languages.
        stores = [self.stores[name] for name in mix.languages]
        return [(stores[li], int(e)) for li, e in zip(lang.tolist(), ex.tolist())], lang

    def _pack(self, rows: list[tuple[Tokenized, int]], batch_size: int):
        """`pack` into `batch_size` rows of data.max_length with the pipeline's segment slots."""
        return pack(
            rows,
            batch_size,
            self.data_cfg.max_length,
            pad_id=self.pad_id,
            task=self.task,
            num_segments=self.num_segments,
        )

    def _packed(self, step: int, batch_size: int):
        rows, lang = self._draws(step, batch_size)
        batch, placed, dropped = self._pack(rows, batch_size)
        return batch, placed, dropped, lang

    def _finish_packed(self, batch, placed, lang, local: slice) -> dict[str, np.ndarray]:
        """Trim a packed global batch to its length bucket, take this process's rows, add the
        language and mask keys (see the module docstring)."""
        num_rows = batch["input_ids"].shape[0]
        used = int(batch["attention_mask"].sum(1).max())
        t = choose_bucket(used, self.buckets)
        first = row_first(placed, num_rows)
        per_segment = {"segment_starts", "segment_mask"}
        if self.task == "sequence-classification":
            per_segment.add("labels")  # [R, S]
        out = {k: v[local] if k in per_segment else v[local, :t] for k, v in batch.items()}
        # A packed row's language (for routing) is that of its first segment.
        out["language_id"] = lang[np.maximum(first, 0)][local].astype(np.int32)
        out["example_mask"] = (first[local] >= 0).astype(np.int32)
        if self.num_segments is not None:
            seg_lang = np.zeros((num_rows, self.num_segments), np.int32)
            ok = placed[:, 0] >= 0
            seg_lang[placed[ok, 0], placed[ok, 1]] = lang[ok]
            out["segment_language"] = seg_lang[local]
            mask = out.pop("segment_mask", None)
            if mask is not None:  # sequence classification: one target per segment
                out["example_mask"] = mask
        return out

    def packing_dropped(self, step: int, batch_size: int) -> int:
        """Examples drawn for packed step `step` that fit in no row (0 without packing)."""
        return self._packed(step, batch_size)[2] if self.packing else 0

    def batch_at(
        self,
        step: int,
        batch_size: int,
        *,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> dict[str, np.ndarray]:
        """This process's rows of global train batch `step` (a pure function of seed and step).

        Args:
          step: the global step (0-based).
          batch_size: the global batch size (rows over all processes).
          process_index, process_count: default to jax.process_index() / process_count().
        """
        pi, pc = _processes(process_index, process_count)
        local = _local_rows(batch_size, pi, pc)
        if self.packing:
            batch, placed, _, lang = self._packed(step, batch_size)
            return self._finish_packed(batch, placed, lang, local)
        rows, lang = self._draws(step, batch_size)
        return self._padded(rows, lang, len(rows), local, mask_key=(0, step))

    def train_batches(
        self,
        batch_size: int,
        *,
        start_step: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 4,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Endless iterator of this process's train batches from `start_step` on.

        Batches are built `prefetch` ahead by a grain background thread (0 = no prefetch).
        """
        pi, pc = _processes(process_index, process_count)
        _local_rows(batch_size, pi, pc)  # fail early on a bad split
        ds = grain.MapDataset.range(int(start_step), sys.maxsize).map(
            functools.partial(
                self.batch_at, batch_size=batch_size, process_index=pi, process_count=pc
            )
        )
        opts = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
        return iter(ds.to_iter_dataset(opts))

    # ---------------------------------------------------------------- eval

    def split(self, split: str) -> tuple[SplitData, dict[str, Tokenized]]:
        """A validated, tokenized evaluation split (cached). Labels outside the vocabulary are
        errors (or skipped rows with on_bad_row: skip). Languages absent from train are
        evaluated zero-shot: they join `zero_shot` (and `all_languages`) in first-seen order."""
        if split == "train":
            return self.train, self.stores
        if split not in self._eval_cache and self._cache is not None:
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
            data = load_split(self.data_cfg, split, task=self.task, labels=labels)
            self._add_zero_shot(check_eval_languages(split, data.languages, self.languages))
            stores = self._tokenize(data)
            check_targets(split, stores, self.task, self.data_cfg.max_length)
            self._eval_cache[split] = (data, stores)
            self._save(split, *self._eval_cache[split])
        return self._eval_cache[split]

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

    def _order(self, split: str) -> list[tuple[str, int]]:
        """Every (language, row) of an eval split: languages sorted, file order inside."""
        data, stores = self.split(split)
        if split not in self._eval_order:
            self._eval_order[split] = [
                (lang, r) for lang in data.languages for r in range(len(stores[lang]))
            ]
        return self._eval_order[split]

    def _eval_packs(self, split: str, batch_size: int) -> list[int]:
        """Start of every packed eval batch in the split's order (and the end, last)."""
        key = (split, batch_size)
        if key not in self._eval_packs_cache:
            _, stores = self.split(split)
            per_lang = {lang: store.lengths for lang, store in stores.items()}
            lengths = [int(per_lang[lang][r]) for lang, r in self._order(split)]
            sizes = segment_counts(lengths, batch_size, self.data_cfg.max_length, self.num_segments)
            self._eval_packs_cache[key] = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        return self._eval_packs_cache[key]

    def num_eval_batches(self, split: str, batch_size: int) -> int:
        """Global eval batches that hold every example of `split` once."""
        if self.packing and self.task != "causal-lm":
            return len(self._eval_packs(split, batch_size)) - 1
        data, _ = self.split(split)
        return -(-sum(data.counts().values()) // batch_size)

    def eval_batch_at(
        self,
        split: str,
        k: int,
        batch_size: int,
        *,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> dict[str, np.ndarray]:
        """This process's rows of global eval batch k (languages sorted, file order inside).

        With packing (classification tasks) the batch packs the next examples in order into
        `batch_size` rows, as many as fit; nothing is dropped (see `unpack_segments`).
        """
        pi, pc = _processes(process_index, process_count)
        local = _local_rows(batch_size, pi, pc)
        _, stores = self.split(split)
        order = self._order(split)
        lang_index = {lang: i for i, lang in enumerate(self.all_languages)}
        if self.packing and self.task != "causal-lm":
            bounds = self._eval_packs(split, batch_size)
            part = order[bounds[k] : bounds[k + 1]]
            rows = [(stores[lang], r) for lang, r in part]
            lang = np.array([lang_index[g] for g, _ in part], np.int32)
            batch, placed, dropped = self._pack(rows, batch_size)
            assert dropped == 0, "eval packing layout and pack() disagree"
            return self._finish_packed(batch, placed, lang, local)
        part = order[k * batch_size : (k + 1) * batch_size]
        return self._ordered_batch(
            stores, part, batch_size, process_index, process_count, mask_key=(1, k)
        )

    def _ordered_batch(self, stores, part, batch_size, process_index, process_count, *, mask_key):
        """Rows `part` ([(language, row)], at most batch_size) as a padded, masked batch;
        `mask_key` keys the masked-LM corruption (see `_mask`)."""
        pi, pc = _processes(process_index, process_count)
        local = _local_rows(batch_size, pi, pc)
        real = len(part)
        part = part + [part[0]] * (batch_size - real)  # filler rows, masked out by `_padded`
        rows = [(stores[lang], r) for lang, r in part]
        lang_index = {lang: i for i, lang in enumerate(self.all_languages)}
        lang_ids = np.array([lang_index[lang] for lang, _ in part], np.int32)
        return self._padded(rows, lang_ids, real, local, mask_key=mask_key)

    def _padded(
        self,
        rows: list[tuple[Tokenized, int]],
        lang_ids: np.ndarray,
        real: int,
        local: slice,
        *,
        mask_key: tuple[int, int],
    ) -> dict[str, np.ndarray]:
        """This process's rows of an unpacked global batch (train, eval and probe batches).

        The rows are padded to the length bucket of the longest of all `rows` (so every process
        pads alike), corrupted for masked LM by `mask_key` (see `_mask`), and given their
        `language_id` ([B] `lang_ids`, indexing `all_languages`) and `example_mask`: rows after
        the first `real` are fillers, with mask 0 and ignored labels.
        """
        lengths = [int(s.offsets[r + 1] - s.offsets[r]) for s, r in rows]
        t = choose_bucket(max(lengths), self.buckets)
        batch = collate(rows[local], t, pad_id=self.pad_id, task=self.task)
        batch = self._mask(batch, mask_key, local)
        mask = (np.arange(len(rows)) < real).astype(np.int32)[local]
        if self.task == "sequence-classification":
            batch["labels"] = np.where(mask > 0, batch["labels"], 0).astype(np.int32)
        else:
            batch["labels"] = np.where(mask[:, None] > 0, batch["labels"], IGNORE_INDEX).astype(
                np.int32
            )
        batch["language_id"] = np.asarray(lang_ids)[local].astype(np.int32)
        batch["example_mask"] = mask
        return batch

    def probe_batches(
        self,
        per_language: int,
        batch_size: int,
        *,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of a fixed sample of the training split: `per_language` examples of each
        language (all of a smaller one), chosen by a stateless permutation of the seed; the base
        model's per-language loss is measured on them (dynamic weights)."""
        order = []
        for lang_id, lang in enumerate(self.languages):
            n = len(self.stores[lang])
            rows = permute(np.arange(min(per_language, n)), n, hash_key(self.seed, 3, lang_id))
            order += [(lang, int(r)) for r in rows.tolist()]
        for k in range(-(-len(order) // batch_size)):
            part = order[k * batch_size : (k + 1) * batch_size]
            yield self._ordered_batch(
                self.stores, part, batch_size, process_index, process_count, mask_key=(2, k)
            )

    def eval_batches(
        self,
        split: str,
        batch_size: int,
        *,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Every example of `split` once, in fixed-size batches; the last batch is padded with
        rows whose `example_mask` is 0."""
        pi, pc = _processes(process_index, process_count)
        n = self.num_eval_batches(split, batch_size)
        ds = grain.MapDataset.range(n).map(
            functools.partial(
                self.eval_batch_at,
                split,
                batch_size=batch_size,
                process_index=pi,
                process_count=pc,
            )
        )
        opts = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
        return iter(ds.to_iter_dataset(opts))


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
