"""Features: tokenization, truncation, label alignment, padding buckets, masked-LM masking.

Examples are tokenized once, in batches, with a Hugging Face fast tokenizer, into a ragged store
per language (`Tokenized`: flat int32 arrays + offsets) so that building a batch is only slicing
and copying. Labels follow the transformers conventions:

* sequence classification: `labels` [B] int32 (index into the label vocabulary);
* token classification: `labels` [B, T], the tag id on the first sub-token of each word and -100
  on later sub-tokens, special tokens and padding;
* causal LM: `labels` [B, T] = input ids (the loss shifts by one, as in transformers), -100 on
  BOS, prompt tokens, padding and the first token of every packed segment (so no segment is trained
  to follow the previous one).
* masked LM: the store keeps `token_labels` = input ids, -100 on special tokens; `mask_tokens`
  draws BERT's masking per batch row (15% of the maskable tokens; of those 80% -> [MASK], 10% -> a
  random token, 10% unchanged) and leaves `labels` = the original id at chosen positions only.

Batches are padded to the smallest length bucket that fits their longest row, so a jitted step
sees only `len(buckets)` shapes. Packing several examples per row is `langtune_jax.data.packing`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from langtune_jax.tasks import IGNORE_INDEX


@dataclasses.dataclass
class Tokenized:
    """Tokenized examples of one language, stored ragged.

    Attributes:
      input_ids: [total_tokens] int32, the rows concatenated.
      offsets: [n + 1] int64; row r is input_ids[offsets[r]:offsets[r + 1]].
      token_type_ids: like input_ids, or None when the tokenizer gives none.
      token_labels: like input_ids (token classification and causal LM), or None.
      labels: [n] int32 (sequence classification), or None.
      truncated: how many rows were longer than ``max_length`` and lost their end.
    """

    input_ids: np.ndarray
    offsets: np.ndarray
    token_type_ids: np.ndarray | None = None
    token_labels: np.ndarray | None = None
    labels: np.ndarray | None = None
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, r: int) -> slice:
        return slice(int(self.offsets[r]), int(self.offsets[r + 1]))


def _ragged(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer brings its own chat template (else `format_chat` falls back)."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_chat(tokenizer, history: Sequence[dict]) -> tuple[str, bool]:
    """The prompt text of a chat: ``history`` then the assistant's turn (generation prompt).

    Training on ``messages`` and ``langtune generate`` both format chats with this function, so a
    model is prompted the way it was trained.

    Args:
      tokenizer: a Hugging Face tokenizer.
      history: the messages before the response, ``[{"role", "content"}]``.

    Returns:
      ``(text, templated)``: with the tokenizer's chat template, its rendering and True (the
      template writes its own special tokens); without one, the fallback ``"role: content\n"`` per
      message then ``"assistant: "`` and False (the caller prepends BOS, as for plain prompts).
    """
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(
            list(history), tokenize=False, add_generation_prompt=True
        )
        return text, True
    return "".join(f"{m['role']}: {m['content']}\n" for m in history) + "assistant: ", False


def tokenize(
    examples: Sequence[dict],
    tokenizer,
    *,
    task: str,
    max_length: int,
    label_to_id: dict[str, int] | None = None,
    chunk: int = 1000,
) -> Tokenized:
    """Tokenizes examples (batched, fast tokenizer) into a ragged `Tokenized` store.

    Args:
      examples: example dicts from `load_split` (one language or several).
      tokenizer: a Hugging Face fast tokenizer (`PreTrainedTokenizerFast`).
      task: sequence-classification, token-classification, causal-lm or masked-lm.
      max_length: rows are truncated to this many tokens (special tokens included).
      label_to_id: label (tag) -> id, for the classification tasks.
      chunk: examples per tokenizer call.

    Returns:
      The `Tokenized` store, rows in the order of `examples`.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; the data pipeline needs one "
            "(word ids for label alignment, batched encoding): load it with use_fast=True or "
            "convert it with transformers' PreTrainedTokenizerFast"
        )
    if task not in _ADD_ROWS:
        raise ValueError(f"unknown task {task!r}")
    rows = _Rows(tokenizer, max_length)
    for start in range(0, len(examples), chunk):
        _ADD_ROWS[task](rows, examples[start : start + chunk], label_to_id)
    return rows.store()


@dataclasses.dataclass
class _Rows:
    """The rows of a `Tokenized` store while they are being tokenized, chunk by chunk."""

    tokenizer: Any
    max_length: int
    ids: list[list[int]] = dataclasses.field(default_factory=list)
    types: list[list[int]] = dataclasses.field(default_factory=list)
    token_labels: list[list[int]] = dataclasses.field(default_factory=list)
    labels: list[int] = dataclasses.field(default_factory=list)
    truncated: int = 0

    def encode(self, *texts, **options):
        """``tokenizer(*texts, **options)`` truncated to max_length; its input ids (and token
        type ids, when the tokenizer gives them) are appended. Returns the encoding."""
        enc = self.tokenizer(*texts, truncation=True, max_length=self.max_length, **options)
        # A fast tokenizer keeps what truncation cut in each encoding's `overflowing`.
        self.truncated += sum(bool(e.overflowing) for e in enc.encodings or ())
        self.ids += enc["input_ids"]
        if "token_type_ids" in enc:
            self.types += enc["token_type_ids"]
        return enc

    def store(self) -> Tokenized:
        flat, offsets = _ragged(self.ids)
        return Tokenized(
            input_ids=flat,
            offsets=offsets,
            token_type_ids=_ragged(self.types)[0] if self.types else None,
            token_labels=_ragged(self.token_labels)[0] if self.token_labels else None,
            labels=np.asarray(self.labels, dtype=np.int32) if self.labels else None,
            truncated=self.truncated,
        )


def _sequence_rows(rows: _Rows, part: Sequence[dict], label_to_id) -> None:
    """Text (and text pair) rows; the label id per row."""
    pairs = [ex.get("text_pair") for ex in part]
    rows.encode([ex["text"] for ex in part], pairs if any(p is not None for p in pairs) else None)
    # An unlabelled row (`langtune predict`) holds class 0 in place of a label: never scored.
    rows.labels += [0 if ex["label"] is None else label_to_id[ex["label"]] for ex in part]


def _token_rows(rows: _Rows, part: Sequence[dict], label_to_id) -> None:
    """Pre-split words; the tag id on the first sub-token of each word, -100 elsewhere."""
    enc = rows.encode([ex["tokens"] for ex in part], is_split_into_words=True)
    for b, ex in enumerate(part):
        row, prev = [], None
        for w in enc.word_ids(b):
            # Only the first sub-token of a word carries its tag (unlabelled rows: tag 0 marks
            # the positions `langtune predict` reads, never scored).
            tag = 0 if ex["tags"] is None or w is None else label_to_id[ex["tags"][w]]
            row.append(IGNORE_INDEX if w is None or w == prev else tag)
            prev = w
        rows.token_labels.append(row)


def _masked_rows(rows: _Rows, part: Sequence[dict], label_to_id) -> None:
    """Text rows; token labels = the ids, -100 on special tokens (`mask_tokens` draws later)."""
    enc = rows.encode([ex["text"] for ex in part], return_special_tokens_mask=True)
    for row, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
        rows.token_labels.append([IGNORE_INDEX if sp else t for t, sp in zip(row, special)])


def _lm_rows(rows: _Rows, part: Sequence[dict], label_to_id) -> None:
    """Causal LM rows (see `_causal_rows`): no token type ids."""
    ids, labels, truncated = _causal_rows(part, rows.tokenizer, rows.max_length)
    rows.ids += ids
    rows.token_labels += labels
    rows.truncated += truncated


_ADD_ROWS = {
    "sequence-classification": _sequence_rows,
    "token-classification": _token_rows,
    "causal-lm": _lm_rows,
    "masked-lm": _masked_rows,
}


def _causal_rows(part, tokenizer, max_length):
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompts, responses, heads = [], [], []
    for ex in part:
        templated = False
        if "messages" in ex:
            p, templated = format_chat(tokenizer, ex["messages"][:-1])
            r = str(ex["messages"][-1]["content"])
        elif "prompt" in ex:
            p, r = ex["prompt"], ex["response"]
        else:
            p, r = "", ex["text"]
        prompts.append(p)
        responses.append(r)
        # A chat template writes its own special tokens; everything else gets BOS.
        heads.append([] if templated else bos)
    enc_p = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    enc_r = tokenizer(responses, add_special_tokens=False)["input_ids"]
    ids, labels, truncated = [], [], 0
    for p, r, head in zip(enc_p, enc_r, heads):
        full = head + p + r + eos
        truncated += len(full) > max_length
        ids.append(full[:max_length])
        labels.append(([IGNORE_INDEX] * (len(head) + len(p)) + r + eos)[:max_length])
    return ids, labels, truncated


def choose_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (the largest bucket if none is)."""
    for b in buckets:
        if b >= length:
            return b
    return buckets[-1]


def collate(
    rows: Sequence[tuple[Tokenized, int]],
    length: int,
    *,
    pad_id: int,
    task: str,
) -> dict[str, np.ndarray]:
    """Pads rows (one example each) to `length` and stacks them.

    Args:
      rows: (store, row index) per batch row.
      length: padded length T (a bucket).
      pad_id: the tokenizer's pad token id.
      task: decides the label layout (see the module docstring).

    Returns:
      input_ids, attention_mask [B, T] int32, token_type_ids [B, T] when the store has them,
      labels [B] or [B, T] int32.
    """
    b = len(rows)
    input_ids = np.full((b, length), pad_id, dtype=np.int32)  # [B, T]
    mask = np.zeros((b, length), dtype=np.int32)
    has_types = bool(rows) and rows[0][0].token_type_ids is not None
    types = np.zeros((b, length), dtype=np.int32) if has_types else None
    if task == "sequence-classification":
        labels = np.zeros((b,), dtype=np.int32)  # [B]
    else:
        labels = np.full((b, length), IGNORE_INDEX, dtype=np.int32)  # [B, T]
    for i, (store, r) in enumerate(rows):
        s = store.row(r)
        n = min(s.stop - s.start, length)
        s = slice(s.start, s.start + n)
        input_ids[i, :n] = store.input_ids[s]
        mask[i, :n] = 1
        if has_types:
            types[i, :n] = store.token_type_ids[s]
        if task == "sequence-classification":
            labels[i] = store.labels[r]
        else:
            labels[i, :n] = store.token_labels[s]
    out = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if has_types:
        out["token_type_ids"] = types
    return out


def mask_tokens(
    batch: dict[str, np.ndarray],
    keys: Sequence[Sequence[int]],
    *,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
) -> dict[str, np.ndarray]:
    """BERT's masked-LM corruption of a collated batch, drawn per row from a fixed key.

    Each maskable position (``labels != -100``: not special, not padding) is chosen with
    ``probability``; a chosen token becomes ``[MASK]`` (80%), a uniformly random token of the
    vocabulary (10%) or stays (10%). ``labels`` keep the original id at chosen positions and -100
    elsewhere, so the loss counts the chosen positions only (Devlin et al., 2019, sec. 3.1; as
    transformers' ``DataCollatorForLanguageModeling``).

    Args:
      batch: ``collate`` output of masked-LM rows (``labels`` [B, T] = maskable token ids).
      keys: one integer sequence per row seeding that row's draws (e.g. ``(seed, step, row)``): the
        masking is a pure function of the key, so resumed and multi-host runs mask alike.
      mask_token_id, vocab_size: the tokenizer's ``[MASK]`` id and vocabulary size.
      probability: the share of maskable tokens chosen.

    Returns:
      The batch with corrupted ``input_ids`` and the masked-LM ``labels`` (new arrays).
    """
    ids, labels = batch["input_ids"].copy(), batch["labels"].copy()
    for i, key in enumerate(keys):
        rng = np.random.default_rng(list(key))
        t = ids.shape[1]
        chosen = (labels[i] != IGNORE_INDEX) & (rng.random(t) < probability)  # [T]
        how = rng.random(t)
        random_ids = rng.integers(0, vocab_size, size=t, dtype=np.int64).astype(np.int32)
        ids[i] = np.where(chosen & (how < 0.8), mask_token_id, ids[i])
        ids[i] = np.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, ids[i])
        labels[i] = np.where(chosen, labels[i], IGNORE_INDEX)
    return {**batch, "input_ids": ids, "labels": labels}
