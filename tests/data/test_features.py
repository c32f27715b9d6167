"""Tokenization, truncation, buckets, label alignment, causal masks and packing."""

import numpy as np

from langtune_jax.data import choose_bucket, collate, pack, tokenize
from langtune_jax.data.packing import row_first
from langtune_jax.tasks import IGNORE_INDEX


def test_sequence_classification_matches_tokenizer_and_pads_to_bucket(tokenizer):
    exs = [
        {"text": "the cat sat on the mat", "text_pair": "a dog", "label": "b"},
        {"text": "el gato", "text_pair": "la casa es grande", "label": "a"},
    ]
    store = tokenize(
        exs, tokenizer, task="sequence-classification", max_length=8, label_to_id={"a": 0, "b": 1}
    )
    ref = tokenizer(
        [e["text"] for e in exs], [e["text_pair"] for e in exs], truncation=True, max_length=8
    )
    assert [store.input_ids[store.row(i)].tolist() for i in range(2)] == ref["input_ids"]
    assert store.lengths.max() <= 8  # truncated
    assert store.labels.tolist() == [1, 0]
    t = choose_bucket(int(store.lengths.max()), [4, 8, 16])
    assert t == 8
    batch = collate(
        [(store, 0), (store, 1)], 16, pad_id=tokenizer.pad_token_id, task="sequence-classification"
    )
    assert batch["input_ids"].shape == (2, 16) and batch["labels"].tolist() == [1, 0]
    n0 = len(ref["input_ids"][0])
    assert batch["attention_mask"][0].tolist() == [1] * n0 + [0] * (16 - n0)
    assert batch["input_ids"][0, n0:].tolist() == [tokenizer.pad_token_id] * (16 - n0)
    assert batch["token_type_ids"][0, :n0].tolist() == ref["token_type_ids"][0]


def test_choose_bucket():
    assert [choose_bucket(n, [16, 32, 64]) for n in (1, 16, 17, 64, 99)] == [16, 16, 32, 64, 64]


def test_token_labels_go_to_first_subtoken(tokenizer):
    ex = {"tokens": ["John", "lives", "gatomat"], "tags": ["B-PER", "O", "B-LOC"]}
    tags = {"B-LOC": 0, "B-PER": 1, "O": 2}
    store = tokenize([ex], tokenizer, task="token-classification", max_length=64, label_to_id=tags)
    enc = tokenizer(ex["tokens"], is_split_into_words=True)
    word_ids = enc.word_ids()
    labels = store.token_labels[store.row(0)].tolist()
    assert len(labels) == len(enc["input_ids"])
    assert word_ids.count(2) > 1  # the long word is split into several sub-tokens
    expected, prev = [], None
    for w in word_ids:
        expected.append(-100 if w is None or w == prev else tags[ex["tags"][w]])
        prev = w
    assert labels == expected
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX  # [CLS], [SEP]
    assert [x for x in labels if x != IGNORE_INDEX] == [1, 2, 0]
    batch = collate([(store, 0)], 32, pad_id=0, task="token-classification")
    assert batch["labels"][0, len(labels) :].tolist() == [IGNORE_INDEX] * (32 - len(labels))


def test_causal_prompt_is_masked(tokenizer):
    exs = [{"prompt": "el gato", "response": "the cat"}, {"text": "a dog ran"}]
    store = tokenize(exs, tokenizer, task="causal-lm", max_length=32)
    p = tokenizer("el gato", add_special_tokens=False)["input_ids"]
    r = tokenizer("the cat", add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert store.input_ids[store.row(0)].tolist() == [bos] + p + r + [eos]
    assert store.token_labels[store.row(0)].tolist() == [IGNORE_INDEX] * (1 + len(p)) + r + [eos]
    t = tokenizer("a dog ran", add_special_tokens=False)["input_ids"]
    assert store.token_labels[store.row(1)].tolist() == [IGNORE_INDEX] + t + [
        eos
    ]  # BOS is never a target


def test_chat_messages_fallback_template(tokenizer):
    msgs = [{"role": "user", "content": "el gato"}, {"role": "assistant", "content": "the cat"}]
    store = tokenize([{"messages": msgs}], tokenizer, task="causal-lm", max_length=64)
    labels = store.token_labels[store.row(0)]
    r = tokenizer("the cat", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert labels[labels != IGNORE_INDEX].tolist() == r


def test_packing_segments_positions_and_labels(tokenizer):
    texts = [{"text": t} for t in ["the cat sat", "a dog ran in the park", "el gato", "la casa"]]
    store = tokenize(texts, tokenizer, task="causal-lm", max_length=16)
    contents = [store.input_ids[store.row(i)].tolist() for i in range(4)]
    rows = [(store, i) for i in range(4)]
    batch, slots, dropped = pack(rows, num_rows=2, length=16, pad_id=0)
    seg, pos, lab, ids = (batch[k] for k in ("segment_ids", "position_ids", "labels", "input_ids"))
    placed = []
    for r in range(2):
        for s in range(1, seg[r].max() + 1):
            where = np.nonzero(seg[r] == s)[0]
            assert np.array_equal(where, np.arange(where[0], where[0] + len(where)))  # contiguous
            assert pos[r, where].tolist() == list(range(len(where)))
            assert lab[r, where[0]] == IGNORE_INDEX  # no prediction across segment boundaries
            k = contents.index(ids[r, where].tolist())  # which example this segment holds
            assert lab[r, where[1:]].tolist() == store.token_labels[store.row(k)][1:].tolist()
            placed.append(k)
    assert len(set(placed)) == len(placed) and len(placed) + dropped == 4
    assert (batch["attention_mask"] == (seg > 0)).all()
    assert (lab[seg == 0] == IGNORE_INDEX).all()
    assert slots[0].tolist() == [0, 0]  # the first draw opens row 0
    assert row_first(slots, 2)[0] == 0
    # overflow is dropped and counted, never silently
    _, _, dropped = pack(rows, num_rows=1, length=16, pad_id=0)
    assert dropped >= 1


def test_truncated_rows_are_counted_for_every_task(tokenizer):
    """`Tokenized.truncated` counts the rows that max_length cut, against the untruncated
    tokenizer (sequence pairs, pre-split words, masked LM) and the causal row layout."""
    texts = ["the cat sat on the mat", "el gato", "la casa es grande y blanca", "a dog"]
    full = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    seq = tokenize(
        [{"text": t, "label": "a"} for t in texts],
        tokenizer,
        task="sequence-classification",
        max_length=6,
        label_to_id={"a": 0},
    )
    assert seq.truncated == sum(n > 6 for n in full) == 2
    pair = tokenize(
        [{"text": "el gato", "text_pair": "la casa es grande", "label": "a"}],
        tokenizer,
        task="sequence-classification",
        max_length=6,
        label_to_id={"a": 0},
    )
    assert pair.truncated == 1
    words = [t.split() for t in texts]
    tags = tokenize(
        [{"tokens": w, "tags": ["O"] * len(w)} for w in words],
        tokenizer,
        task="token-classification",
        max_length=6,
        label_to_id={"O": 0},
    )
    ref = tokenizer(words, is_split_into_words=True)["input_ids"]
    assert tags.truncated == sum(len(r) > 6 for r in ref)
    mlm = tokenize([{"text": t} for t in texts], tokenizer, task="masked-lm", max_length=6)
    assert mlm.truncated == seq.truncated
    # Causal rows: BOS + prompt + response + EOS; exactly max_length is not cut.
    r = tokenizer("the cat", add_special_tokens=False)["input_ids"]
    exact = 1 + len(r) + 1
    causal = tokenize(
        [{"prompt": "", "response": "the cat"}, {"prompt": "el gato", "response": "the cat"}],
        tokenizer,
        task="causal-lm",
        max_length=exact,
    )
    assert causal.truncated == 1 and causal.lengths.tolist() == [exact, exact]
    assert tokenize([{"text": "a dog"}], tokenizer, task="masked-lm", max_length=64).truncated == 0
