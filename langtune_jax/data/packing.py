"""Packing: several examples per row, and back to one entry per example.

`pack` fills rows of ``length`` tokens with whole examples (first fit, in draw order): segment
ids number the examples of a row from 1 (0 = padding), position ids restart per segment, and
for sequence classification each segment's first token is pooled (`segment_starts`,
`segment_labels`, `segment_language`). `segment_counts` fixes how many examples each eval row
holds before any batch is built, so nothing is dropped; `unpack_segments` turns the outputs of a
packed eval step into one entry per example again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from langtune_jax.data.features import Tokenized
from langtune_jax.tasks import IGNORE_INDEX


def pack(
    rows: Sequence[tuple[Tokenized, int]],
    num_rows: int,
    length: int,
    *,
    pad_id: int,
    task: str = "causal-lm",
    num_segments: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """Packs examples into `num_rows` rows of `length` tokens (one implementation, every task).

    Examples are placed in draw order, each into the row with the most room (worst fit), so
    all rows fill evenly. Each example becomes a segment: `segment_ids` 1, 2, ... per row
    (0 = padding); attention must stay within equal segment ids (and be causal for causal LM).
    Examples that fit in no row, or would exceed `num_segments` segments in it, are dropped
    (counted in the return value).

    Per task:
      * causal LM: `position_ids` restart at 0 in every segment and the first label of every
        segment is -100 (no segment is trained to follow the previous one);
      * token classification: token labels copied per segment (special tokens stay -100);
      * sequence classification: `labels` [R, S] per segment (S = `num_segments`), and
        `segment_starts` [R, S] the position of each segment's first token (its [CLS]/<s>, which
        the head pools); unused slots hold 0 and are masked by `segment_mask` [R, S].
      Encoders get no `position_ids`: they restart positions per segment themselves (RoBERTa's
      offset is the model's business). `token_type_ids` are copied per segment when the store
      has them.

    Returns:
      (batch [R, T] arrays as above plus input_ids and attention_mask;
       placed [K, 2] the (row, 0-based segment) of every drawn example, (-1, -1) if dropped;
       the number of dropped examples).
    """
    cap = num_segments if num_segments is not None else length
    has_types = bool(rows) and rows[0][0].token_type_ids is not None
    packer = _Packer(num_rows, length, cap, pad_id=pad_id, task=task, has_types=has_types)
    placed = np.full((len(rows), 2), -1, dtype=np.int64)
    for k, (store, r) in enumerate(rows):
        placed[k] = packer.place(store, r)
    return packer.batch(), placed, int((placed[:, 0] < 0).sum())


class _Packer:
    """The arrays of a packed batch of `pack`, filled one example at a time."""

    def __init__(self, num_rows, length, cap, *, pad_id: int, task: str, has_types: bool):
        self.length, self.cap = length, cap
        self.causal, self.seq_cls = task == "causal-lm", task == "sequence-classification"
        self.input_ids = np.full((num_rows, length), pad_id, dtype=np.int32)  # [R, T]
        self.segment_ids = np.zeros((num_rows, length), dtype=np.int32)
        self.types = np.zeros((num_rows, length), dtype=np.int32) if has_types else None
        if self.seq_cls:
            self.labels = np.zeros((num_rows, cap), dtype=np.int32)  # [R, S]
            self.starts = np.zeros((num_rows, cap), dtype=np.int32)
        else:
            self.labels = np.full((num_rows, length), IGNORE_INDEX, dtype=np.int32)
        self.fill = np.zeros(num_rows, dtype=np.int64)
        self.nseg = np.zeros(num_rows, dtype=np.int32)

    def place(self, store: Tokenized, r: int) -> tuple[int, int]:
        """Row `r` of `store` as a new segment of the row with the most room.

        Returns:
          (row, 0-based segment), or (-1, -1) when no row has room for it.
        """
        s = store.row(r)
        n = min(s.stop - s.start, self.length)
        room = np.where(self.nseg < self.cap, self.length - self.fill, -1)
        j = int(np.argmax(room))  # worst fit: rows fill evenly, in draw order
        if room[j] < n:
            return -1, -1
        a, src, seg = int(self.fill[j]), slice(s.start, s.start + n), int(self.nseg[j])
        self.input_ids[j, a : a + n] = store.input_ids[src]
        if self.types is not None:
            self.types[j, a : a + n] = store.token_type_ids[src]
        if self.seq_cls:
            self.labels[j, seg] = store.labels[r]
            self.starts[j, seg] = a
        else:
            self.labels[j, a : a + n] = store.token_labels[src]
            if self.causal:
                self.labels[j, a] = (
                    IGNORE_INDEX  # never predict a segment's first token from the last
                )
        self.nseg[j] += 1
        self.segment_ids[j, a : a + n] = self.nseg[j]
        self.fill[j] += n
        return j, seg

    def batch(self) -> dict[str, np.ndarray]:
        """The packed batch (keys as `pack` documents them)."""
        batch = {
            "input_ids": self.input_ids,
            "attention_mask": (self.segment_ids > 0).astype(np.int32),
            "labels": self.labels,
            "segment_ids": self.segment_ids,
        }
        if self.causal:
            batch["position_ids"] = segment_positions(self.segment_ids)
        if self.types is not None:
            batch["token_type_ids"] = self.types
        if self.seq_cls:
            batch["segment_starts"] = self.starts
            batch["segment_mask"] = (np.arange(self.cap)[None, :] < self.nseg[:, None]).astype(
                np.int32
            )
        return batch


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
    """Position ids [R, T] that restart at 0 in every segment of right-packed rows (0 on padding)."""
    t = np.arange(segment_ids.shape[1])
    new = np.ones_like(segment_ids, dtype=bool)
    new[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start = np.maximum.accumulate(np.where(new, t[None, :], 0), axis=1)
    return np.where(segment_ids > 0, t[None, :] - start, 0).astype(np.int32)


def row_first(placed: np.ndarray, num_rows: int) -> np.ndarray:
    """[R] the index of each row's first segment's example in the draws (-1 for an empty row)."""
    first = np.full(num_rows, -1, dtype=np.int64)
    k = np.nonzero(placed[:, 1] == 0)[0]
    first[placed[k, 0]] = k
    return first


def segment_counts(lengths: Sequence[int], num_rows: int, length: int, cap: int) -> list[int]:
    """How many of the examples (in order, by token length) each successive packed batch of
    `num_rows` rows takes, with `pack`'s worst-fit rule and nothing dropped (eval packing)."""
    sizes, fill, nseg, taken = [], np.zeros(num_rows, np.int64), np.zeros(num_rows, np.int64), 0
    for n in lengths:
        n = min(int(n), length)
        room = np.where(nseg < cap, length - fill, -1)
        j = int(np.argmax(room))
        if room[j] < n:  # no row has room: the batch is full, start the next one
            sizes.append(taken)
            fill[:], nseg[:], taken, j = 0, 0, 0, 0
        fill[j] += n
        nseg[j] += 1
        taken += 1
    if taken:
        sizes.append(taken)
    return sizes


def unpack_segments(host: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    """Packed classification outputs back to one entry per example (host side, numpy).

    Args:
      host: a packed batch (segment_ids, segment_language, labels, example_mask) with the eval
        step's `predictions` ([R, S] for sequence classification, [R, T] for token
        classification).
      task: sequence-classification or token-classification.

    Returns:
      predictions, labels, language_id, example_mask (and scores, and example_index from an
      eval batch's segment_example) with one entry (row) per segment slot, as an unpacked eval
      batch has them; token rows are padded with -100 to T.
    """
    lang = host["segment_language"]  # [R, S]
    index = host.get("segment_example")  # [R, S] eval batches: position in the split's order
    if task == "sequence-classification":
        out = {
            "predictions": host["predictions"].reshape(-1),
            "labels": host["labels"].reshape(-1),
            "language_id": lang.reshape(-1),
            "example_mask": host["example_mask"].reshape(-1),
        }
        if index is not None:
            out["example_index"] = index.reshape(-1)
        if "scores" in host:
            out["scores"] = host["scores"].reshape(-1)
        return out
    seg = host["segment_ids"]  # [R, T]
    r, s = np.nonzero(np.arange(1, lang.shape[1] + 1)[None, :] <= seg.max(1)[:, None])
    t = seg.shape[1]
    preds = np.full((len(r), t), IGNORE_INDEX, np.int64)
    labels = np.full((len(r), t), IGNORE_INDEX, np.int64)
    scores = np.zeros((len(r), t), np.float32) if "scores" in host else None
    for i, (row, slot) in enumerate(zip(r, s)):
        where = seg[row] == slot + 1
        n = int(where.sum())
        preds[i, :n] = host["predictions"][row][where]
        labels[i, :n] = host["labels"][row][where]
        if scores is not None:
            scores[i, :n] = host["scores"][row][where]
    out = {
        "predictions": preds,
        "labels": labels,
        "language_id": lang[r, s],
        "example_mask": np.ones(len(r), np.int32),
    }
    if index is not None:
        out["example_index"] = index[r, s]
    if scores is not None:
        out["scores"] = scores
    return out
