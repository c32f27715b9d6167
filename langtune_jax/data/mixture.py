"""Stateless weighted mixture of per-language datasets.

`LanguageMixture[i]` is `(language, example)` as a pure function of (seed, i, weights): no
sampler state, so a run resumed at step k, or sharded over any number of hosts, reads exactly what
an unbroken single-host run reads.

The design, in three stateless layers (all vectorised in numpy):

1. **Language schedule (deterministic, low discrepancy).** Probabilities are apportioned to
   integer slots `w_l` out of a period of `D` draws (largest remainder, every language with
   p_l > 0 gets at least one slot, so tiny weights are never rounded to zero; realised
   probabilities are `w_l / D`, off by < 1/D). Inside the period, language l "arrives" at times
   `(k + u_l) * D / w_l` for k = 0..w_l-1 (phases u_l in [0, 1) drawn from the seed); sorting all
   arrivals gives the schedule. Arrivals of each language are evenly spaced, so in *every* window
   of n consecutive draws the count of language l is n * w_l / D within a small constant
   independent of n (under 1.5 in the tests, for every window length) — no drift, no
   starvation, unlike i.i.d. sampling whose error grows like sqrt(n). The schedule of period D is a precomputed table; draw i reads entry
   i mod D, so the mixture has no length (`len` is `sys.maxsize`).
2. **Shuffle within blocks.** Draws are grouped in blocks of `block_size` (the pipeline uses the
   global batch size) and permuted inside each block by a stateless permutation keyed by
   (seed, block). A block keeps exactly the language counts of its schedule window; only the
   positions inside it are randomised (so hosts that read different rows see mixed languages).
3. **Per-language order.** The j-th draw of language l (j = period * w_l + rank in period) is
   example `perm_{seed,l,e}(j mod n_l)` of epoch e = j // n_l: a fresh permutation per epoch of
   that language, so no example repeats inside a language epoch.

**Weight segments** (dynamic sampling): weights may change at given indices. Segment j has its own
schedule table; draw i of segment j reads that table at i mod D, and a language's draw counter
continues from the draws it got in earlier segments (counted exactly from the tables), so its
epochs go on across a change and two segments with equal weights read exactly one mixture.
The draws stay a pure function of (seed, i, segments).

Permutations are pure functions of (n, key), keys being splitmix64 hashes of the seed and the
indices. Up to 2^18 elements: the argsort of n keyed hashes, cached (a few tables per language, so
a batch costs a handful of numpy calls). Larger domains: a Feistel network over the next even
power of two with cycle walking (a bijection on [0, n) in O(1) memory, as in format-preserving
encryption; grain's own `index_shuffle` is the same idea).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014), elementwise on uint64 (wrapping arithmetic).

    Takes and returns arrays of at least one dimension: numpy wraps uint64 array arithmetic
    silently (0-d values would be scalars, which warn on overflow).
    """
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix_int(x: int) -> int:
    """`_mix64` on a Python int (same wrapping arithmetic)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def hash_key(*parts: Any) -> np.ndarray:
    """uint64 keys [N] (N = broadcast size of the parts, at least 1) hashed from integer parts.

    Scalar parts are folded in Python ints (cheap); the first array part switches to numpy.
    """
    state: int | np.ndarray = _GOLDEN
    for p in parts:
        if isinstance(state, int) and np.ndim(p) == 0:
            state = _mix_int(state ^ ((int(p) + _GOLDEN) & _MASK))
        else:
            p = np.atleast_1d(np.asarray(p)).astype(np.uint64)
            state = _mix64(np.asarray(state, dtype=np.uint64) ^ (p + np.uint64(_GOLDEN)))
    return np.atleast_1d(np.asarray(state, dtype=np.uint64))


_TABLE_MAX = 1 << 18  # domains up to this size use a cached permutation table


def _tables(n: int, keys: np.ndarray) -> np.ndarray:
    """Permutations of [0, n) named by `keys` [U]: argsort of keyed hashes ([U, n] int32)."""
    k = keys.astype(np.uint64)[:, None]  # [U, 1]
    ranks = _mix64(np.arange(n, dtype=np.uint64)[None, :] ^ k)  # [U, n]
    ranks = _mix64(ranks + k)
    return np.argsort(ranks, axis=1, kind="stable").astype(np.int32)


@functools.lru_cache(maxsize=64)
def _table(n: int, key: int) -> np.ndarray:
    """One cached permutation table ([n] int32)."""
    return _tables(n, np.array([key], dtype=np.uint64))[0]


def permute(index: np.ndarray, n: int, key: np.ndarray | int) -> np.ndarray:
    """Stateless permutation of [0, n): `index` -> its image under the permutation named by `key`.

    Domains up to 2^18 use a table, the argsort of n keyed hashes (cached, a few per language);
    larger ones a 4-round balanced Feistel network on 2h bits (2^(2h) >= n, < 4n) with cycle
    walking: values that land outside [0, n) are encrypted again until they come back inside,
    which keeps it a bijection on [0, n).

    Args:
      index: int array of positions in [0, n).
      n: domain size (>= 1).
      key: uint64 key, scalar or broadcastable to `index` (e.g. one key per epoch).

    Returns:
      int64 array, same shape as `index`.
    """
    index = np.asarray(index, dtype=np.int64)
    if n <= 1:
        return np.zeros_like(index)
    if n <= _TABLE_MAX:
        keys = np.broadcast_to(np.asarray(key, dtype=np.uint64), index.shape)
        uniq, inverse = np.unique(keys, return_inverse=True)
        if len(uniq) <= 4:  # the usual case in a batch: one or two epochs or blocks, cached
            tables = np.stack([_table(n, int(k)) for k in uniq])
        else:  # bulk calls: all tables at once (memory ~ elements in the call + n)
            tables = _tables(n, uniq)
        return tables[inverse.reshape(index.shape), index].astype(np.int64)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    sh = np.uint64(half)
    flat = index.reshape(-1).astype(np.uint64)  # [N]
    keys = np.broadcast_to(np.asarray(key, dtype=np.uint64), index.shape).reshape(-1)
    # Four independent round keys per element, derived from its key.
    round_keys = [hash_key(keys, r) for r in range(4)]  # 4 x [N]

    def encrypt(x: np.ndarray, sel: np.ndarray | slice) -> np.ndarray:
        left, right = x >> sh, x & mask
        for rk in round_keys:
            left, right = right, left ^ (_mix64(right ^ rk[sel]) & mask)
        return (left << sh) | right

    flat = encrypt(flat, slice(None))
    walk = np.nonzero(flat >= np.uint64(n))[0]
    while walk.size:  # cycle walking: at most a few rounds, the domain is < 4n
        flat[walk] = encrypt(flat[walk], walk)
        walk = walk[flat[walk] >= np.uint64(n)]
    return flat.astype(np.int64).reshape(index.shape)


def apportion(probabilities: Sequence[float], total: int) -> np.ndarray:
    """Integer slots out of `total` proportional to `probabilities` (largest remainder).

    Every positive probability gets at least one slot (taken from the largest languages), so a
    tiny weight is never rounded to zero.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    p = p / p.sum()
    quota = p * total
    w = np.floor(quota).astype(np.int64)
    rest = total - int(w.sum())
    order = np.argsort(-(quota - w), kind="stable")
    w[order[:rest]] += 1
    for i in np.nonzero((p > 0) & (w == 0))[0]:
        w[int(np.argmax(w))] -= 1
        w[i] = 1
    return w


class LanguageMixture(grain.MapDataset):
    """Stateless weighted mixture: index i -> (language, example) (see the module docstring).

    Args:
      datasets: language -> per-language dataset (a `grain.MapDataset` or any sequence).
      weights: language -> probability (renormalised; a language with weight 0 is never drawn;
        languages in `datasets` without a weight are an error).
      seed: the run seed; every order derives from it.
      block_size: draws shuffled together (1 = the raw schedule); the pipeline uses the global
        batch size so each batch holds the schedule's exact language counts.
      period: schedule period D; probabilities are realised to a multiple of 1/D.
      segments: later weight segments, ``(start_index, weights)`` pairs with increasing start
        indices (> 0, multiples of `block_size`); `weights` holds from index 0 to the first start.
        Draw i reads the schedule of its segment at position i mod D, and each language's draw
        counter carries over from segment to segment, so a language's epochs continue (no
        example repeats early) and equal weights in two segments give exactly the draws of one.

    Attributes:
      languages: languages in the order of `datasets`; `language_ids` below index into it.
      probabilities: realised per-draw probability of each language in the first segment (w_l / D).
    """

    def __init__(
        self,
        datasets: Mapping[str, Any],
        weights: Mapping[str, float],
        *,
        seed: int = 0,
        block_size: int = 1,
        period: int = 1 << 20,
        segments: Sequence[tuple[int, Mapping[str, float]]] = (),
    ):
        parents = [d for d in datasets.values() if isinstance(d, grain.MapDataset)]
        super().__init__(parents)
        self._datasets = dict(datasets)
        self.languages = list(datasets)
        self._sizes = np.array([len(datasets[lang]) for lang in self.languages], dtype=np.int64)
        if block_size < 1 or period < len(self.languages):
            raise ValueError("LanguageMixture: block_size must be >= 1 and period >= #languages")
        self._seed = int(seed)
        self._block = int(block_size)
        self._period = int(period)
        starts = [0] + [int(start) for start, _ in segments]
        if any(b <= a for a, b in zip(starts, starts[1:])) or any(s % self._block for s in starts):
            raise ValueError(
                f"LanguageMixture: segment starts {starts[1:]} must increase and be multiples of "
                f"block_size {self._block}"
            )
        self._starts = np.array(starts, dtype=np.int64)
        self._segments = []  # per segment: (slots [L], language table [D], rank table [D], base [L])
        offset = np.zeros(len(self.languages), dtype=np.int64)  # draws per language so far
        for j, w in enumerate([weights, *(w for _, w in segments)]):
            slots = apportion(self._check_weights(w), self._period)  # [L] w_l, sums to D
            lang_table, rank_table = self._schedule(slots)
            # base + (draws of l in this schedule before i) = the global draw counter of l.
            base = offset - self._count_before(slots, lang_table, starts[j])
            self._segments.append((slots, lang_table, rank_table, base))
            if j + 1 < len(starts):
                offset = base + self._count_before(slots, lang_table, starts[j + 1])
        self._slots = self._segments[0][0]
        self.probabilities = {
            lang: float(w) / self._period for lang, w in zip(self.languages, self._slots)
        }

    def _check_weights(self, weights: Mapping[str, float]) -> np.ndarray:
        missing = [lang for lang in self.languages if lang not in weights]
        extra = [lang for lang in weights if lang not in self._datasets]
        if missing or extra:
            raise ValueError(
                f"LanguageMixture: weights and datasets disagree (no weight: {missing}, "
                f"no data: {extra}); give one weight per language of the data"
            )
        p = np.array([float(weights[lang]) for lang in self.languages])
        if (p < 0).any() or not p.sum() > 0:
            raise ValueError(f"LanguageMixture: weights must be >= 0, not all zero (got {p})")
        for lang, n, pl in zip(self.languages, self._sizes, p):
            if n == 0 and pl > 0:
                raise ValueError(f"LanguageMixture: language {lang!r} has no examples")
        return p

    def _count_before(self, slots: np.ndarray, lang_table: np.ndarray, index: int) -> np.ndarray:
        """[L] draws of each language in schedule positions [0, index) of one segment's table."""
        cycles, rest = divmod(int(index), self._period)
        return cycles * slots + np.bincount(lang_table[:rest], minlength=len(self.languages))

    def _schedule(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self._period
        phases = (
            hash_key(self._seed, 0x5EED, np.arange(len(self.languages))).astype(np.float64)
            / 2.0**64
        )  # [L] in [0, 1)
        times, langs, ranks = [], [], []
        for lang_id, w in enumerate(slots):
            if w == 0:  # weight 0: never drawn
                continue
            k = np.arange(w, dtype=np.float64)
            times.append((k + phases[lang_id]) * (d / w))  # evenly spaced arrivals in [0, D)
            langs.append(np.full(w, lang_id, dtype=np.int32))
            ranks.append(np.arange(w, dtype=np.int64))
        order = np.argsort(np.concatenate(times), kind="stable")  # ties: language order
        return np.concatenate(langs)[order], np.concatenate(ranks)[order]  # [D], [D]

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return f"LanguageMixture(languages={self.languages}, seed={self._seed})"

    def locate(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised core: global draw indices -> (language ids, example indices).

        Args:
          indices: int array [N] of global draw indices (>= 0).

        Returns:
          (language_ids [N] int32 into `languages`, example_indices [N] int64 into the dataset of
          that language).
        """
        i = np.asarray(indices, dtype=np.int64)
        if (i < 0).any():
            raise IndexError("LanguageMixture: negative index")
        if self._block > 1:
            block, pos = np.divmod(i, self._block)
            i = block * self._block + permute(pos, self._block, hash_key(self._seed, 1, block))
        cycle, pos = np.divmod(i, self._period)
        seg = np.searchsorted(self._starts, i, side="right") - 1  # [N] segment of each draw
        lang = np.empty_like(pos, dtype=np.int32)
        draw = np.empty_like(i)  # j-th draw of that language
        for j in np.unique(seg).tolist():
            sel = seg == j
            slots, lang_table, rank_table, base = self._segments[j]
            lang[sel] = lang_table[pos[sel]]
            draw[sel] = base[lang[sel]] + cycle[sel] * slots[lang[sel]] + rank_table[pos[sel]]
        sizes = self._sizes[lang]  # [N]
        epoch, r = np.divmod(draw, sizes)
        keys = hash_key(self._seed, 2, lang, epoch)  # [N] one permutation per (language, epoch)
        example = np.empty_like(draw)
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        if len(uniq) <= 16 and sizes.max() <= _TABLE_MAX:
            # A batch touches a few (language, epoch) pairs: gather from their cached tables.
            for u, k in enumerate(uniq.tolist()):
                sel = inverse == u
                example[sel] = _table(int(sizes[first[u]]), k)[r[sel]]
        else:  # bulk: per language, all its epochs at once (same permutations)
            for lang_id in np.unique(lang):
                sel = lang == lang_id
                example[sel] = permute(r[sel], int(self._sizes[lang_id]), keys[sel])
        return lang.astype(np.int32), example

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._getitems([index])[0]

    def _getitems(self, indices: Sequence[int]) -> list[tuple[str, Any]]:
        lang, ex = self.locate(indices)
        out = []
        for lang_id, e in zip(lang.tolist(), ex.tolist()):
            name = self.languages[lang_id]
            out.append((name, self._datasets[name][e]))
        return out
