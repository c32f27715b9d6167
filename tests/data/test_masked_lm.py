"""Masked-LM data: text-only rows, special tokens never masked, BERT's 15% with 80/10/10, and the
masking a pure function of (seed, step, row): resume and multi-host read the same batches."""

import json

import numpy as np
import pytest

from langtune_jax.data import DataConfig, DataPipeline, SamplingConfig
from langtune_jax.data.features import collate, mask_tokens, tokenize
from langtune_jax.tasks import IGNORE_INDEX


def test_tokenize_keeps_maskable_ids_and_ignores_special_tokens(tokenizer):
    store = tokenize(
        [{"text": "the cat sat on the mat"}], tokenizer, task="masked-lm", max_length=16
    )
    ids = store.input_ids[store.row(0)]
    labels = store.token_labels[store.row(0)]
    want = tokenizer("the cat sat on the mat")["input_ids"]
    assert list(ids) == want
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX  # [CLS], [SEP]
    assert list(labels[1:-1]) == want[1:-1]


def test_bert_masking_rates_and_labels(tokenizer):
    store = tokenize(
        [{"text": "the cat sat on the mat and a dog ran in the park"}] * 2000,
        tokenizer,
        task="masked-lm",
        max_length=32,
    )
    batch = collate([(store, r) for r in range(2000)], 32, pad_id=0, task="masked-lm")
    mask_id = tokenizer.mask_token_id
    out = mask_tokens(
        batch, [(0, 0, r) for r in range(2000)], mask_token_id=mask_id, vocab_size=len(tokenizer)
    )
    maskable = batch["labels"] != IGNORE_INDEX
    chosen = out["labels"] != IGNORE_INDEX
    assert not (chosen & ~maskable).any()  # never a special token or padding
    np.testing.assert_array_equal(out["labels"][chosen], batch["input_ids"][chosen])
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.01
    to_mask = (out["input_ids"] == mask_id) & chosen
    kept = (out["input_ids"] == batch["input_ids"]) & chosen
    assert abs(to_mask.sum() / chosen.sum() - 0.8) < 0.03
    # Kept: the 10% unchanged plus random draws that hit the same id.
    assert abs(kept.sum() / chosen.sum() - 0.1) < 0.03
    np.testing.assert_array_equal(out["input_ids"][~chosen], batch["input_ids"][~chosen])


@pytest.fixture
def text_only_data(tmp_path):
    for split, n in (("train", 24), ("validation", 6)):
        (tmp_path / split).mkdir()
        for lang, words in (("en", "the cat sat on the mat"), ("es", "el gato come pescado")):
            rows = [{"text": words, "language": lang} for _ in range(n)]  # no label column
            (tmp_path / split / f"{lang}.jsonl").write_text(
                "\n".join(json.dumps(r) for r in rows) + "\n"
            )
    return tmp_path


def test_pipeline_masks_deterministically_and_per_process(text_only_data, tokenizer):
    cfg = DataConfig(sources=[{"path": str(text_only_data / "{split}")}], max_length=16)
    pipe = DataPipeline(cfg, SamplingConfig(strategy="uniform"), tokenizer, task="masked-lm")
    a = pipe.batch_at(3, 8, process_index=0, process_count=1)
    b = pipe.batch_at(3, 8, process_index=0, process_count=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert (a["labels"] != IGNORE_INDEX).any()
    assert (a["input_ids"] == tokenizer.mask_token_id).any()
    # Two processes build the same global batch, each its own rows.
    halves = [pipe.batch_at(3, 8, process_index=p, process_count=2) for p in (0, 1)]
    for k in ("input_ids", "labels"):
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), a[k])
    # Another step masks other positions.
    c = pipe.batch_at(4, 8, process_index=0, process_count=1)
    assert not np.array_equal(a["labels"], c["labels"])
    ev = pipe.eval_batch_at("validation", 0, 8, process_index=0, process_count=1)
    assert (ev["labels"] != IGNORE_INDEX).any()
