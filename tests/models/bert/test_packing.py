"""Packed encoder rows equal unpacked ones: per-example losses and predictions, BERT and XLM-R.

Several examples share a row (``data.packing.pack``); attention is block-diagonal from the
segment ids, positions restart per segment (RoBERTa's pad offset included), token types follow
their segment, and sequence heads pool each segment's first token. With dropout off every
example's loss and prediction must equal the same example run alone in a padded row.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from langtune_jax.data.features import Tokenized, collate
from langtune_jax.data.packing import pack, unpack_segments
from langtune_jax.models import bert as bert_lib
from langtune_jax.tasks import IGNORE_INDEX
from langtune_jax.train.step import forward, per_language_sums, task_loss, token_nll

TOL = 1e-5
TINY = dict(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=40,
    initializer_range=0.3,  # large enough that leaking attention changes the outputs visibly
    labels=("a", "b", "c"),
)
MODELS = {
    ("bert", "sequence-classification"): bert_lib.BertForSequenceClassification,
    ("bert", "token-classification"): bert_lib.BertForTokenClassification,
    ("xlm-roberta", "sequence-classification"): bert_lib.XLMRobertaForSequenceClassification,
    ("xlm-roberta", "token-classification"): bert_lib.XLMRobertaForTokenClassification,
}
PAD = {"bert": 0, "xlm-roberta": 1}


def _store(task: str, pad: int, n: int = 9, seed: int = 0) -> Tokenized:
    """n random examples of 3..12 tokens: [CLS]-like first token, pair-style token types."""
    rng = np.random.RandomState(seed)
    ids, types, tok_labels, labels = [], [], [], []
    for _ in range(n):
        k = rng.randint(3, 13)
        row = rng.randint(pad + 2, TINY["vocab_size"], size=k)
        row[0] = pad + 1  # the token the sequence head pools
        ids.append(row)
        types.append((np.arange(k) >= k // 2).astype(np.int32))
        lab = rng.randint(0, 3, size=k)
        lab[0] = lab[-1] = IGNORE_INDEX  # special tokens carry no tag
        tok_labels.append(lab)
        labels.append(rng.randint(0, 3))
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in ids])])
    return Tokenized(
        input_ids=np.concatenate(ids).astype(np.int32),
        offsets=offsets,
        token_type_ids=np.concatenate(types).astype(np.int32),
        token_labels=np.concatenate(tok_labels).astype(np.int32)
        if task == "token-classification"
        else None,
        labels=np.asarray(labels, np.int32) if task == "sequence-classification" else None,
    )


def _model(family: str, task: str, train: bool):
    """Dropout off: eval mode, or train mode with every rate 0 (the einsum attention path on
    CPU; eval takes jax.nn.dot_product_attention), so both attention paths are checked."""
    zero = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0) if train else {}
    cfg = bert_lib.BertConfig(model_type=family, pad_token_id=PAD[family], **TINY, **zero)
    model = MODELS[family, task](cfg, rngs=nnx.Rngs(0))
    model.train() if train else model.eval()
    return model


def _losses(logits, batch, task: str, picks) -> np.ndarray:
    """The summed loss of each pick (a mask over ``labels``) through the step's ``task_loss``."""
    labels = np.asarray(batch["labels"])
    out = []
    for keep in picks:
        part = {**batch, "labels": jnp.asarray(np.where(keep, labels, IGNORE_INDEX))}
        out.append(float(task_loss(jnp.asarray(logits), part, task)[0]))
    return np.asarray(out)


def _picks(shape, where) -> list[np.ndarray]:
    out = []
    for w in where:
        keep = np.zeros(shape, bool)
        keep[w] = True
        out.append(keep)
    return out


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("family", "task"), sorted(MODELS))
def test_packed_equals_unpacked(family, task, train):
    pad = PAD[family]
    store = _store(task, pad)
    rows = [(store, i) for i in range(len(store))]
    packed, placed, dropped = pack(rows, 3, 32, pad_id=pad, task=task, num_segments=8)
    assert dropped == 0 and packed["segment_ids"].max() >= 3  # really several per row
    plain = collate(rows, 12, pad_id=pad, task=task)
    model = _model(family, task, train)

    pj = {k: jnp.asarray(v) for k, v in packed.items() if k != "segment_mask"}
    if task == "sequence-classification":
        pj["example_mask"] = jnp.asarray(packed["segment_mask"])
    logits_p = np.asarray(forward(model, pj, None).logits)
    logits_u = np.asarray(
        forward(model, {k: jnp.asarray(v) for k, v in plain.items()}, None).logits
    )

    # Example k sits in (row, slot) placed[k]; compare logits / predictions example by example.
    seg = packed["segment_ids"]
    for k, (r, s) in enumerate(placed):
        n = store.lengths[k]
        if task == "sequence-classification":
            got, want = logits_p[r, s], logits_u[k]
        else:
            got, want = logits_p[r][seg[r] == s + 1], logits_u[k, :n]
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))

    # Per-example losses through task_loss: packed (per segment) vs unpacked (per row); padding
    # segments and padding tokens never count.
    if task == "sequence-classification":
        where_p = [(r, s) for r, s in placed]
        where_u = [(k,) for k in range(len(store))]
    else:
        where_p = [(r, seg[r] == s + 1) for r, s in placed]
        where_u = [(k, slice(None)) for k in range(len(store))]
    got = _losses(logits_p, pj, task, _picks(packed["labels"].shape, where_p))
    want = _losses(logits_u, plain, task, _picks(plain["labels"].shape, where_u))
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    assert (want > 0).all()
    (_, count_p), (_, count_u) = (
        task_loss(jnp.asarray(logits_p), pj, task),
        task_loss(jnp.asarray(logits_u), plain, task),
    )
    assert float(count_p) == float(count_u) > 0

    # Negative control: one segment per row (leaking attention, running positions) changes the
    # outputs of every example that is not first in its row, so the comparisons above can fail.
    leaky = {k: v for k, v in pj.items() if k != "segment_ids"}
    logits_l = np.asarray(forward(model, leaky, None).logits)
    later = [k for k, (_, s) in enumerate(placed) if s > 0]
    assert later
    for k in later:
        r, s = placed[k]
        if task == "sequence-classification":
            assert np.abs(logits_l[r, s] - logits_u[k]).max() > 1e-3
        else:
            assert (
                np.abs(logits_l[r][seg[r] == s + 1] - logits_u[k, : store.lengths[k]]).max() > 1e-3
            )


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_unpack_segments_restores_one_row_per_example(task):
    store = _store(task, 0, n=7, seed=3)
    rows = [(store, i) for i in range(len(store))]
    packed, placed, _ = pack(rows, 2, 32, pad_id=0, task=task, num_segments=8)
    host = dict(packed)
    host["segment_language"] = np.zeros((2, 8), np.int32)
    host["segment_language"][placed[:, 0], placed[:, 1]] = np.arange(7) % 3
    host["example_mask"] = packed.get("segment_mask", np.ones(2, np.int32))
    host["predictions"] = packed["labels"]  # perfect predictions: unpacked labels come back
    out = unpack_segments(host, task)
    real = out["example_mask"] > 0
    assert real.sum() == 7
    plain = collate(rows, 32, pad_id=0, task=task)
    order = [int(r * 8 + s) for r, s in placed] if task == "sequence-classification" else None
    if order is None:  # token rows come out in (row, slot) order
        order = np.lexsort((placed[:, 1], placed[:, 0]))
        np.testing.assert_array_equal(out["labels"], plain["labels"][order])
        np.testing.assert_array_equal(out["language_id"], (np.arange(7) % 3)[order])
    else:
        np.testing.assert_array_equal(out["labels"][order], plain["labels"])
        np.testing.assert_array_equal(out["language_id"][order], np.arange(7) % 3)
    np.testing.assert_array_equal(out["predictions"], out["labels"])


def test_packed_per_language_losses_count_each_example_for_its_language():
    """loss/<lang> and dynamic weights read these sums: a packed row of several languages must
    split its loss by segment, equal to the unpacked batch's per-language sums."""
    task, pad = "sequence-classification", 0
    store = _store(task, pad)
    rows = [(store, i) for i in range(len(store))]
    lang = np.arange(len(store)) % 3  # three languages, mixed within every packed row
    packed, placed, _ = pack(rows, 3, 32, pad_id=pad, task=task, num_segments=8)
    seg_lang = np.zeros_like(packed["segment_mask"])
    for k, (r, s) in enumerate(placed):
        seg_lang[r, s] = lang[k]
    pj = {k: jnp.asarray(v) for k, v in packed.items() if k != "segment_mask"}
    pj |= {"example_mask": jnp.asarray(packed["segment_mask"]), "segment_language": seg_lang}
    pj["language_id"] = jnp.asarray(seg_lang[:, 0])  # a row's first segment (what routing sees)
    plain = {k: jnp.asarray(v) for k, v in collate(rows, 12, pad_id=pad, task=task).items()}
    plain["language_id"] = jnp.asarray(lang)
    model = _model("bert", task, train=False)
    got = per_language_sums(*token_nll(forward(model, pj, None).logits, pj, task), pj, 3)
    want = per_language_sums(*token_nll(forward(model, plain, None).logits, plain, task), plain, 3)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_array_equal(got[1], want[1])
    assert np.all(np.asarray(want[1]) > 0)
