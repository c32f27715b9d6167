"""The fixed-order batches of `DataPipeline`: every example of an evaluation split once, and the
probe sample of train.

Eval batch `k` holds the split's examples ``k*B .. k*B+B-1`` in one fixed order (languages sorted,
file order inside); the last batch is filled with rows whose `example_mask` is 0. Each row carries
its position in that order as `example_index` (-1 for a filler; packed: `segment_example` per
segment slot), so per-example predictions map back to their examples. With packing
(classification tasks) a batch packs the next examples in that order, as many as fit
(`packing.segment_counts` fixes the layout up front), so nothing is dropped. `probe_batches`
serves a fixed per-language sample of train in padded batches too (never packed): the base
model's loss per language, for dynamic weights.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import grain
import numpy as np

from langtune_jax.data.batching import Batching, local_rows, processes
from langtune_jax.data.mixture import hash_key, permute
from langtune_jax.data.packing import segment_counts


class EvalBatching(Batching):
    """Eval and probe batches of `DataPipeline`, a mixin: it reads the pipeline's `split()`,
    `stores`, `languages` and `seed`."""

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

    def eval_order(self, split: str) -> list[tuple[str, int]]:
        """Every example of an eval split as ``(language, row)``; an eval batch's
        ``example_index`` (packed: ``segment_example``) indexes this list, -1 for fillers."""
        return list(self._order(split))

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
        pi, pc = processes(process_index, process_count)
        local = local_rows(batch_size, pi, pc)
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
            index = np.arange(bounds[k], bounds[k + 1], dtype=np.int32)
            return self._finish_packed(batch, placed, lang, local, index=index)
        part = order[k * batch_size : (k + 1) * batch_size]
        batch = self._ordered_batch(
            stores, part, batch_size, process_index, process_count, mask_key=(1, k)
        )
        index = np.arange(k * batch_size, (k + 1) * batch_size, dtype=np.int32)
        batch["example_index"] = np.where(index < len(order), index, -1)[local]
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
        pi, pc = processes(process_index, process_count)
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
