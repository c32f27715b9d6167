"""The train batches of `DataPipeline`: global batch `s` from the stateless mixture.

Step `s` reads mixture draws ``s*M .. s*M+M-1``, ``M = examples_per_step(B)`` (B, or with packing
enough examples to fill B rows); the mixture follows the weight segments (dynamic weights) and is
shuffled in blocks of M. So `batch_at` is a pure function of (seed, step, segments), and
`train_batches` maps it over the steps from any start step in a grain background thread.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator

import grain
import numpy as np

from langtune_jax.data.batching import Batching, local_rows, processes
from langtune_jax.data.features import Tokenized
from langtune_jax.data.mixture import LanguageMixture


class TrainBatching(Batching):
    """Train batches of `DataPipeline`, a mixin: it reads the pipeline's `train`, `stores`,
    `languages`, `probabilities` and `tokens`, and the weight segments `_plan_run` starts."""

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

    def _draws(self, step: int, batch_size: int) -> tuple[list[tuple[Tokenized, int]], np.ndarray]:
        m = self.examples_per_step(batch_size)
        mix = self.mixture(m)
        lang, ex = mix.locate(np.arange(step * m, (step + 1) * m, dtype=np.int64))  # [M]
        # Mixture language ids index train.examples' keys (sorted) = self.languages.
        stores = [self.stores[name] for name in mix.languages]
        return [(stores[li], int(e)) for li, e in zip(lang.tolist(), ex.tolist())], lang

    def _packed(self, step: int, batch_size: int):
        rows, lang = self._draws(step, batch_size)
        batch, placed, dropped = self._pack(rows, batch_size)
        return batch, placed, dropped, lang

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
        pi, pc = processes(process_index, process_count)
        local = local_rows(batch_size, pi, pc)
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
        pi, pc = processes(process_index, process_count)
        local_rows(batch_size, pi, pc)  # fail early on a bad split
        ds = grain.MapDataset.range(int(start_step), sys.maxsize).map(
            functools.partial(
                self.batch_at, batch_size=batch_size, process_index=pi, process_count=pc
            )
        )
        opts = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
        return iter(ds.to_iter_dataset(opts))
