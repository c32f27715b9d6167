"""Rows -> this process's part of a global batch: what the train and eval batches share.

Every process lays a global batch out alike (its length bucket comes from all of its rows) and
materialises only its own rows, ``local_rows(B, p, P)``. `Batching` is the part of `DataPipeline`
that assembles them: padding to a length bucket, masked-LM corruption, packing into rows of
``data.max_length``, and the keys of a packed batch (listed in `langtune_jax.data.pipeline`). Its
subclasses choose the rows: `TrainBatching` (`langtune_jax.data.train_batching`) from the mixture,
`EvalBatching` (`langtune_jax.data.eval_batching`) in a split's fixed order.
"""

from __future__ import annotations

import jax
import numpy as np

from langtune_jax.data.features import Tokenized, choose_bucket, collate, mask_tokens
from langtune_jax.data.packing import pack, row_first
from langtune_jax.tasks import IGNORE_INDEX


def local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    """This process's rows ``[p*B/P, (p+1)*B/P)`` of a global batch of `global_batch` rows."""
    if global_batch % process_count:
        raise ValueError(
            f"batch_size {global_batch} is not divisible by the {process_count} processes; "
            "use a multiple of the process count"
        )
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


def processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """``(process_index, process_count)``, each defaulting to JAX's; checked."""
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= pi < pc:
        raise ValueError(f"process_index {pi} outside [0, process_count={pc})")
    return pi, pc


class Batching:
    """Batch assembly of `DataPipeline`, a mixin: it reads the pipeline's `data_cfg`, `task`,
    `seed`, `tokenizer`, `buckets`, `pad_id` and `all_languages`."""

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

    def _finish_packed(
        self, batch, placed, lang, local: slice, *, index: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Trim a packed global batch to its length bucket, take this process's rows, add the
        language and mask keys (see `langtune_jax.data.pipeline`'s docstring); with `index`
        (eval batches: each example's position in the split's order) also `segment_example`."""
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
            if index is not None:
                seg_index = np.full((num_rows, self.num_segments), -1, np.int32)
                seg_index[placed[ok, 0], placed[ok, 1]] = index[ok]
                out["segment_example"] = seg_index[local]
            mask = out.pop("segment_mask", None)
            if mask is not None:  # sequence classification: one target per segment
                out["example_mask"] = mask
        return out

    def _ordered_batch(self, stores, part, batch_size, process_index, process_count, *, mask_key):
        """Rows `part` ([(language, row)], at most batch_size) as a padded, masked batch;
        `mask_key` keys the masked-LM corruption (see `_mask`)."""
        pi, pc = processes(process_index, process_count)
        local = local_rows(batch_size, pi, pc)
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
