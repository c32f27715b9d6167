"""Train/eval pipelines: keys and shapes, resume, per-process shards, eval padding, packing."""

import json

import numpy as np
import pytest

from langtune_jax.data import (
    DataConfig,
    DataError,
    DataPipeline,
    MissingSplitError,
    SamplingConfig,
    SourceConfig,
    eval_batches,
    train_batches,
    unpack_segments,
)

SIZES = {"en": 60, "es": 30, "qu": 5, "sw": 9}
WORDS = ["the cat sat", "a dog ran", "el gato", "la casa es grande", "mvua inanyesha"]
LABELS = ["food", "money", "sports"]


def _write(root, sizes=SIZES, extra=None):
    for split, scale in (("train", 1), ("validation", 0.5)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for lang, n in sizes.items():
            rows = [
                {
                    "text": " ".join(WORDS[(i + j) % 5] for j in range(1 + i % 4)),
                    "label": LABELS[i % 3],
                    "language": lang,
                }
                for i in range(max(1, int(n * scale)))
            ]
            if extra and split in extra and lang in extra[split]:
                rows.append(extra[split][lang])
            (root / split / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def pipe(tmp_path, tokenizer):
    _write(tmp_path)
    cfg = DataConfig(
        sources=[SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")],
        max_length=16,
        length_buckets=[8],
    )
    return DataPipeline(
        cfg,
        SamplingConfig(strategy="uniform"),
        tokenizer,
        task="sequence-classification",
        seed=3,
        total_samples=800,
    )


def test_train_batch_keys_shapes_and_content(pipe, tokenizer):
    assert pipe.languages == sorted(SIZES) and pipe.labels == LABELS
    b = pipe.batch_at(0, 8, process_index=0, process_count=1)
    assert set(b) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "labels",
        "language_id",
        "example_mask",
    }
    assert b["input_ids"].shape[0] == 8 and b["input_ids"].shape[1] in (8, 16)
    assert b["labels"].shape == (8,) and b["language_id"].dtype == np.int32
    assert (b["example_mask"] == 1).all()
    # each row is the example the mixture names
    lang, ex = pipe.mixture(8).locate(np.arange(8))
    for r in range(8):
        e = pipe.train.examples[pipe.languages[lang[r]]][ex[r]]
        assert b["language_id"][r] == lang[r] and LABELS[b["labels"][r]] == e["label"]
        ids = tokenizer(e["text"], truncation=True, max_length=16)["input_ids"]
        assert b["input_ids"][r, : len(ids)].tolist() == ids
        assert b["attention_mask"][r].sum() == len(ids)


def test_resume_from_step_reads_what_an_unbroken_run_reads(pipe):
    it = pipe.train_batches(8, process_index=0, process_count=1)
    unbroken = [next(it) for _ in range(6)]
    resumed = pipe.train_batches(8, start_step=4, process_index=0, process_count=1)
    for k in (4, 5):
        got = next(resumed)
        assert all(np.array_equal(got[key], unbroken[k][key]) for key in got)


@pytest.mark.parametrize("procs", [2, 4])
def test_processes_get_their_rows_of_the_same_global_batch(pipe, procs):
    for step in (0, 7):
        full = pipe.batch_at(step, 8, process_index=0, process_count=1)
        parts = [pipe.batch_at(step, 8, process_index=p, process_count=procs) for p in range(procs)]
        for key in full:
            assert np.array_equal(np.concatenate([p[key] for p in parts]), full[key]), key
    with pytest.raises(ValueError, match="not divisible"):
        pipe.batch_at(0, 6, process_index=0, process_count=4)


def test_realised_shares_follow_the_plan(pipe):
    langs = np.concatenate(
        [pipe.batch_at(s, 8, process_index=0, process_count=1)["language_id"] for s in range(100)]
    )
    shares = np.bincount(langs, minlength=4) / len(langs)
    assert shares == pytest.approx([0.25] * 4, abs=2 / len(langs))
    assert pipe.plan.rows[2].language == "qu" and pipe.plan.rows[2].warning is not None


def test_eval_covers_every_example_once_with_masked_padding(pipe):
    batches = list(pipe.eval_batches("validation", 8, process_index=0, process_count=1))
    index = np.concatenate([b["example_index"] for b in batches])
    mask = np.concatenate([b["example_mask"] for b in batches])
    n = len(pipe.eval_order("validation"))
    assert index[mask > 0].tolist() == list(range(n)) and (index[mask == 0] == -1).all()
    n = sum(max(1, int(v * 0.5)) for v in SIZES.values())  # 30 + 15 + 2 + 4 = 51
    assert len(batches) == -(-n // 8)
    mask = np.concatenate([b["example_mask"] for b in batches])
    assert mask.sum() == n and (mask[n:] == 0).all() and len(mask) == len(batches) * 8
    langs = np.concatenate([b["language_id"] for b in batches])[:n]
    assert np.bincount(langs).tolist() == [30, 15, 2, 4]
    # two processes: same rows, split
    halves = [
        list(pipe.eval_batches("validation", 8, process_index=p, process_count=2)) for p in range(2)
    ]
    for k, b in enumerate(batches):
        for key in b:
            assert np.array_equal(np.concatenate([halves[0][k][key], halves[1][k][key]]), b[key])


def test_eval_unknown_label_error_or_skip(tmp_path, tokenizer):
    bad = {"validation": {"es": {"text": "el gato", "label": "weather", "language": "es"}}}
    _write(tmp_path, extra=bad)
    src = [SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")]
    pipe = DataPipeline(
        DataConfig(sources=src), SamplingConfig(), tokenizer, task="sequence-classification"
    )
    with pytest.raises(DataError, match=r"es\.jsonl:16: unknown label 'weather'"):
        pipe.split("validation")
    pipe = DataPipeline(
        DataConfig(sources=src, on_bad_row="skip"),
        SamplingConfig(),
        tokenizer,
        task="sequence-classification",
    )
    data, _ = pipe.split("validation")
    assert data.skipped == {"es": 1} and data.counts()["es"] == 15


def test_manual_weight_for_unknown_language_is_an_error(tmp_path, tokenizer):
    _write(tmp_path)
    src = [SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")]
    weights = {"en": 1.0, "es": 1.0, "qu": 1.0, "sw": 1.0, "de": 1.0}
    with pytest.raises(DataError, match="'de' not in the data"):
        DataPipeline(
            DataConfig(sources=src),
            SamplingConfig(strategy="manual", weights=weights),
            tokenizer,
            task="sequence-classification",
        )


def test_causal_packing_pipeline(tmp_path, tokenizer):
    _write(tmp_path)
    cfg = DataConfig(
        sources=[SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")],
        max_length=32,
        packing=True,
    )
    pipe = DataPipeline(
        cfg, SamplingConfig(strategy="uniform", unit="tokens"), tokenizer, task="causal-lm", seed=1
    )
    assert pipe.examples_per_step(4) > 4
    b = pipe.batch_at(2, 4, process_index=0, process_count=1)
    assert {"segment_ids", "position_ids", "labels", "language_id"} <= set(b)
    assert b["input_ids"].shape == b["segment_ids"].shape == (4, b["input_ids"].shape[1])
    m = pipe.examples_per_step(4)
    assert b["segment_ids"].max(1).sum() + pipe.packing_dropped(2, 4) == m
    assert b["segment_ids"].max(1).sum() > 4  # several examples per row
    assert (b["attention_mask"] == (b["segment_ids"] > 0)).all()
    parts = [pipe.batch_at(2, 4, process_index=p, process_count=2) for p in range(2)]
    assert np.array_equal(np.concatenate([p["input_ids"] for p in parts]), b["input_ids"])
    ev = next(pipe.eval_batches("validation", 4, process_index=0, process_count=1))
    assert "segment_ids" not in ev and ev["labels"].shape == ev["input_ids"].shape
    # The plan counts the examples a packed run really draws: steps x examples_per_step.
    planned = DataPipeline(
        cfg,
        SamplingConfig(strategy="uniform", unit="tokens"),
        tokenizer,
        task="causal-lm",
        seed=1,
        total_samples=10 * 4,
        batch_size=4,
    ).plan
    assert planned.total_samples == 10 * m
    assert sum(r.expected_samples for r in planned.rows) == pytest.approx(10 * m)


def test_token_classification_pipeline(tmp_path, tokenizer):
    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
        rows = [
            {
                "tokens": ["John", "lives", "in", "Paris"],
                "tags": ["B-PER", "O", "O", "B-LOC"],
                "language": "en",
            }
        ] * 3
        (tmp_path / split / "en.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(
        sources=[SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")], max_length=16
    )
    pipe = DataPipeline(cfg, SamplingConfig(), tokenizer, task="token-classification")
    assert pipe.labels == ["B-LOC", "B-PER", "O"]
    b = pipe.batch_at(0, 2, process_index=0, process_count=1)
    assert b["labels"].shape == b["input_ids"].shape
    assert b["labels"][0][b["labels"][0] != -100].tolist() == [1, 2, 2, 0]


def test_missing_eval_split_and_skipped_rows_in_plan(tmp_path, tokenizer):
    bad = {"train": {"es": {"text": "", "label": "food", "language": "es"}}}
    _write(tmp_path, extra=bad)
    src = [SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")]
    pipe = DataPipeline(
        DataConfig(sources=src, on_bad_row="skip"),
        SamplingConfig(),
        tokenizer,
        task="sequence-classification",
        total_samples=100,
    )
    assert pipe.has_split("validation") and not pipe.has_split("test")
    with pytest.raises(MissingSplitError, match="no files match"):
        pipe.split("test")
    row = {r.language: r for r in pipe.plan.rows}["es"]
    assert row.skipped == 1 and row.examples == 30
    assert "skipped bad rows: 1 (empty text" in pipe.plan.table()
    assert pipe.plan.to_dict()["skipped_reasons"] == {"empty text in column 'text'": 1}


def test_one_call_iterators(tmp_path, tokenizer):
    _write(tmp_path)
    cfg = DataConfig(sources=[SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")])
    sc = SamplingConfig(strategy="temperature", alpha=0.5)
    it = train_batches(
        cfg,
        sc,
        tokenizer,
        task="sequence-classification",
        batch_size=4,
        seed=2,
        start_step=3,
        process_index=1,
        process_count=2,
    )
    pipe = DataPipeline(cfg, sc, tokenizer, task="sequence-classification", seed=2)
    want = pipe.batch_at(3, 4, process_index=1, process_count=2)
    got = next(it)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    ev = list(
        eval_batches(
            cfg,
            tokenizer,
            "validation",
            task="sequence-classification",
            batch_size=4,
            process_index=0,
            process_count=1,
        )
    )
    assert sum(int(b["example_mask"].sum()) for b in ev) == 51


def test_sequence_classification_packing_pipeline(tmp_path, tokenizer):
    _write(tmp_path)
    cfg = DataConfig(
        sources=[SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")],
        max_length=32,
        packing=True,
    )
    sc = SamplingConfig(strategy="uniform")
    kw = dict(task="sequence-classification", seed=1)
    pipe = DataPipeline(cfg, sc, tokenizer, **kw)
    m, s = pipe.examples_per_step(4), pipe.num_segments
    assert m > 4 and s == 16
    b = pipe.batch_at(2, 4, process_index=0, process_count=1)
    t = b["input_ids"].shape[1]
    assert b["segment_ids"].shape == b["token_type_ids"].shape == (4, t)
    assert b["labels"].shape == b["segment_starts"].shape == b["example_mask"].shape == (4, s)
    assert "position_ids" not in b  # encoders restart positions from the segment ids
    # every real segment slot points at its segment's first token ([CLS]), labels per segment
    cls = tokenizer.cls_token_id
    n_seg = b["segment_ids"].max(1)
    assert (b["example_mask"].sum(1) == n_seg).all()
    for r in range(4):
        for slot in range(n_seg[r]):
            start = b["segment_starts"][r, slot]
            assert b["input_ids"][r, start] == cls and b["segment_ids"][r, start] == slot + 1
    assert int(b["example_mask"].sum()) + pipe.packing_dropped(2, 4) == m
    # the plan counts the examples a packed step draws
    planned = DataPipeline(cfg, sc, tokenizer, total_samples=10 * 4, batch_size=4, **kw).plan
    assert planned.total_samples == 10 * m
    # per-process rows of one global batch
    parts = [pipe.batch_at(2, 4, process_index=p, process_count=2) for p in range(2)]
    for key in b:
        assert np.array_equal(np.concatenate([p[key] for p in parts]), b[key]), key
    # eval packs too, and holds every example exactly once
    ev = list(pipe.eval_batches("validation", 4, process_index=0, process_count=1))
    assert len(ev) == pipe.num_eval_batches("validation", 4) < -(-51 // 4)
    assert sum(int(e["example_mask"].sum()) for e in ev) == 51
    langs = np.concatenate([e["segment_language"][e["example_mask"] > 0] for e in ev])
    assert np.bincount(langs).tolist() == [int(n * 0.5) for _, n in sorted(SIZES.items())]
    # each packed segment names its example's place in the split's order (worst fit reorders)
    index = np.concatenate([e["segment_example"][e["example_mask"] > 0] for e in ev])
    assert sorted(index.tolist()) == list(range(51)) and index.tolist() != list(range(51))
    order = pipe.eval_order("validation")
    assert [pipe.all_languages[g] for g in langs] == [order[i][0] for i in index]
    assert (np.concatenate([e["segment_example"][e["example_mask"] == 0] for e in ev]) == -1).all()


def test_token_classification_packing_eval_holds_every_example(tmp_path, tokenizer):
    for split, n in (("train", 12), ("validation", 7)):
        (tmp_path / split).mkdir()
        rows = [
            {"tokens": ["John", "lives", "in", "Paris"][: 1 + i % 4],
             "tags": ["B-PER", "O", "O", "B-LOC"][: 1 + i % 4], "language": "en"}
            for i in range(n)
        ]  # fmt: skip
        (tmp_path / split / "en.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(
        sources=[SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")],
        max_length=16,
        packing=True,
    )
    pipe = DataPipeline(cfg, SamplingConfig(), tokenizer, task="token-classification")
    b = pipe.batch_at(0, 2, process_index=0, process_count=1)
    assert b["labels"].shape == b["segment_ids"].shape and b["segment_ids"].max() > 1
    assert b["segment_language"].shape == (2, 8) and "segment_starts" not in b
    plain = DataPipeline(
        DataConfig(sources=cfg.sources, max_length=16), SamplingConfig(), tokenizer,
        task="token-classification",
    )  # fmt: skip
    want = sorted(
        tuple(row[row != -100])
        for e in plain.eval_batches("validation", 2, process_index=0, process_count=1)
        for row, m in zip(e["labels"], e["example_mask"])
        if m
    )
    got, index = [], []
    for e in pipe.eval_batches("validation", 2, process_index=0, process_count=1):
        out = unpack_segments({**e, "predictions": e["labels"]}, "token-classification")
        got += [tuple(row[row != -100]) for row in out["labels"]]
        index += out["example_index"].tolist()
    assert sorted(got) == want and len(got) == 7
    # unpacked rows keep their place in the split's order: the unpacked pipeline's rows there
    assert sorted(index) == list(range(7))
    by_index = dict(zip(index, got))
    assert [by_index[i] for i in range(7)] == [
        tuple(row[row != -100])
        for e in plain.eval_batches("validation", 2, process_index=0, process_count=1)
        for row, m in zip(e["labels"], e["example_mask"])
        if m
    ]


def test_truncated_examples_are_a_plan_note_and_survive_the_cache(tmp_path, tokenizer, caplog):
    """Examples cut at data.max_length are counted per language in the plan's notes (train) and
    warned about when an eval split is read; the count comes back from the tokenized cache."""
    _write(tmp_path)
    cfg = DataConfig(
        sources=[SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")], max_length=6
    )
    kwargs = dict(task="sequence-classification", seed=0, total_samples=64)
    cache = tmp_path / "cache"
    pipe = DataPipeline(cfg, SamplingConfig(), tokenizer, cache_dir=cache, **kwargs)
    cut = {lang: s.truncated for lang, s in pipe.stores.items()}
    lengths = {
        lang: [len(tokenizer(ex["text"])["input_ids"]) for ex in pipe.train.examples[lang]]
        for lang in pipe.languages
    }
    assert cut == {lang: sum(n > 6 for n in ns) for lang, ns in lengths.items()}
    assert all(cut.values())
    (note,) = [n for n in pipe.plan.notes if "data.max_length=6" in n]
    total = sum(len(r) for r in pipe.train.examples.values())
    assert f"{sum(cut.values()):,} of {total:,} examples" in note
    assert all(f"{lang} {n:,}" in note for lang, n in cut.items())
    assert note in pipe.plan.table()
    with caplog.at_level("WARNING", logger="langtune_jax.data.pipeline"):
        pipe.split("validation")
    assert any(
        "split 'validation'" in r.message and "data.max_length=6" in r.message
        for r in caplog.records
    )
    # The same tokenizer object, after truncating calls, still has the cache's fingerprint.
    again = DataPipeline(cfg, SamplingConfig(), tokenizer, cache_dir=cache, **kwargs)
    assert type(again.train.examples["en"]).__name__ == "CachedRows"  # read from the cache
    assert {lang: s.truncated for lang, s in again.stores.items()} == cut
    assert note in again.plan.notes
    roomy = DataConfig(sources=cfg.sources, max_length=64)
    assert not any(
        "max_length" in n
        for n in DataPipeline(roomy, SamplingConfig(), tokenizer, **kwargs).plan.notes
    )


def test_eval_examples_that_are_training_inputs_are_warned_about(tmp_path, tokenizer, caplog):
    """An evaluation example whose input (not its label) equals a training input of its
    language is counted per language in a warning when the split is read; a text that only
    another language's training data has is not an overlap; no overlap, no warning."""

    def rows(lang, texts):
        return [{"text": t, "label": LABELS[i % 3], "language": lang} for i, t in enumerate(texts)]

    def write(split, lang, texts):
        (tmp_path / split).mkdir(exist_ok=True)
        path = tmp_path / split / f"{lang}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows(lang, texts)))

    write("train", "en", ["a dog ran", "the cat sat", "el gato"])
    write("train", "es", ["la casa es grande", "mvua inanyesha"])
    write("validation", "en", ["the cat sat", "a dog ran", "something new"])  # 2 (other labels)
    write("validation", "es", ["el gato", "la casa es grande"])  # 1: "el gato" is en's
    write("test", "en", ["fresh text"])
    cfg = DataConfig(sources=[SourceConfig(path=f"{tmp_path}/{{split}}/{{language}}.jsonl")])
    pipe = DataPipeline(cfg, SamplingConfig(), tokenizer, task="sequence-classification", seed=0)
    with caplog.at_level("WARNING", logger="langtune_jax.data.pipeline"):
        pipe.split("validation")
        pipe.split("test")
    (msg,) = [r.message for r in caplog.records if "not held out" in r.message]
    assert msg.startswith("split 'validation': 3 of 5 examples") and "(en 2, es 1)" in msg
