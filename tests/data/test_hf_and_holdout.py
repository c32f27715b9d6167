"""Hugging Face ``datasets`` inputs (ClassLabel names, in-memory objects), the held-out validation
split (``data.validation_fraction``) and the run folder's tokenized-split cache."""

import json

import datasets
import numpy as np
import pytest

from langtune_jax.data import DataConfig, DataError, DataPipeline, SamplingConfig, SourceConfig
from langtune_jax.data.holdout import held_out_rows
from langtune_jax.data.sources import load_split


def _classification_dict():
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["sports", "politics", "arts"]),
            "lang": datasets.ClassLabel(names=["en", "sw"]),
        }
    )
    rows = {"text": [], "label": [], "lang": []}
    for i in range(30):
        rows["text"].append(f"the cat sat {i}")
        rows["label"].append(i % 2)  # "arts" never occurs
        rows["lang"].append(int(i % 3 == 0))
    train = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(train=train, validation=train.select(range(6)))


def test_classlabel_names_are_kept_for_labels_and_languages(tokenizer):
    source = SourceConfig.from_dataset(_classification_dict(), language_column="lang")
    cfg = DataConfig(sources=[source])
    split = load_split(cfg, "train", task="sequence-classification")
    assert split.languages == ["en", "sw"]
    assert {ex["label"] for rows in split.examples.values() for ex in rows} == {
        "sports",
        "politics",
    }
    pipe = DataPipeline(cfg, SamplingConfig(), tokenizer, task="sequence-classification")
    # The vocabulary is the ClassLabel's, in its order (ids as in the dataset), unseen ones too.
    assert pipe.labels == ["sports", "politics", "arts"]
    assert pipe.split("validation")[0].counts() == {"en": 4, "sw": 2}


def test_token_classification_classlabel_tags_become_names(tokenizer, tmp_path):
    tags = ["O", "B-PER", "I-PER", "B-LOC"]
    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=tags)),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"tokens": [["John", "lives", "in", "Paris"]] * 4, "ner_tags": [[1, 0, 0, 3]] * 4},
        features=features,
    )
    datasets.DatasetDict(train=ds).save_to_disk(str(tmp_path / "ner"))
    src = SourceConfig(
        path=str(tmp_path / "ner"), format="hf", language="en", tags_column="ner_tags"
    )
    cfg = DataConfig(sources=[src], max_length=16)
    split = load_split(cfg, "train", task="token-classification")
    assert split.examples["en"][0]["tags"] == ["B-PER", "O", "O", "B-LOC"]
    pipe = DataPipeline(cfg, SamplingConfig(), tokenizer, task="token-classification")
    assert pipe.labels == tags


def test_a_single_dataset_needs_its_splits(tokenizer):
    ds = _classification_dict()["train"]
    cfg = DataConfig(sources=[ds])  # a datasets object in place of a SourceConfig
    with pytest.raises(DataError, match="has no splits"):
        load_split(cfg, "train", task="sequence-classification")
    ok = DataConfig(sources=[SourceConfig.from_dataset(ds, splits=["train"], language="en")])
    assert load_split(ok, "train", task="sequence-classification").counts() == {"en": 30}


def _jsonl(tmp_path, counts):
    for lang, n in counts.items():
        rows = [{"text": f"word {lang} {i}", "label": "ab"[i % 2]} for i in range(n)]
        (tmp_path / f"{lang}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return SourceConfig(path=str(tmp_path / "{language}.jsonl"), splits=["train"])


def test_validation_fraction_is_deterministic_and_disjoint(tmp_path, tokenizer):
    src = _jsonl(tmp_path, {"en": 50, "sw": 9, "yo": 1})
    cfg = DataConfig(sources=[src], validation_fraction=0.2)
    pipes = [
        DataPipeline(cfg, SamplingConfig(), tokenizer, task="sequence-classification", seed=s)
        for s in (0, 7)
    ]
    full = load_split(DataConfig(sources=[src]), "train", task="sequence-classification")
    for pipe in pipes:
        val = pipe.split("validation")[0]
        assert val.counts() == {"en": 10, "sw": 2}  # yo's single example stays in train
        assert pipe.train.counts() == {"en": 40, "sw": 7, "yo": 1}
        for lang in ("en", "sw"):
            held = {ex["where"] for ex in val.examples[lang]}
            kept = {ex["where"] for ex in pipe.train.examples[lang]}
            assert not held & kept  # disjoint
            assert held | kept == {ex["where"] for ex in full.examples[lang]}  # and complete
    # The same rows whatever the run seed, and from the pure function directly.
    assert [e["where"] for e in pipes[0].split("validation")[0].examples["en"]] == [
        e["where"] for e in pipes[1].split("validation")[0].examples["en"]
    ]
    np.testing.assert_array_equal(held_out_rows("en", 50, 0.2), held_out_rows("en", 50, 0.2))
    assert not np.array_equal(held_out_rows("en", 50, 0.2), held_out_rows("sw", 50, 0.2))


def test_validation_fraction_refuses_data_that_has_validation(tmp_path, tokenizer):
    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "en.jsonl").write_text('{"text": "a b", "label": "x"}\n' * 3)
    cfg = DataConfig(
        sources=[SourceConfig(path=str(tmp_path / "{split}" / "{language}.jsonl"))],
        validation_fraction=0.1,
    )
    with pytest.raises(DataError, match="validation_fraction is set but the data has"):
        DataPipeline(cfg, SamplingConfig(), tokenizer, task="sequence-classification")


def test_tokenized_splits_are_cached_and_keyed_by_the_data(tmp_path, tokenizer, monkeypatch):
    import langtune_jax.data.pipeline as pipeline_mod

    data = tmp_path / "data"
    data.mkdir()
    src = _jsonl(data, {"en": 12, "sw": 5})
    cfg = DataConfig(sources=[src], validation_fraction=0.25)
    cache = tmp_path / "run" / "data_cache"
    first = DataPipeline(cfg, SamplingConfig(), tokenizer, task="sequence-classification",
                         cache_dir=cache)  # fmt: skip

    def refuse(*args, **kwargs):
        raise AssertionError("a cached split was read or tokenized again")

    # A reopened run neither reads nor tokenizes the data.
    with monkeypatch.context() as m:
        m.setattr(pipeline_mod, "load_split", refuse)
        m.setattr(pipeline_mod, "tokenize", refuse)
        again = DataPipeline(cfg, SamplingConfig(), tokenizer, task="sequence-classification",
                             cache_dir=cache)  # fmt: skip
        assert again.split("validation")[0].counts() == first.split("validation")[0].counts()
    assert again.train.counts() == first.train.counts() and again.labels == first.labels
    for lang in first.languages:
        np.testing.assert_array_equal(again.stores[lang].input_ids, first.stores[lang].input_ids)
    np.testing.assert_array_equal(
        again.batch_at(3, 4, process_index=0, process_count=1)["input_ids"],
        first.batch_at(3, 4, process_index=0, process_count=1)["input_ids"],
    )
    # Changed data: a new fingerprint, the old cache is dropped, the new rows are read.
    (data / "sw.jsonl").write_text('{"text": "new row", "label": "a"}\n' * 3)
    changed = DataPipeline(cfg, SamplingConfig(), tokenizer, task="sequence-classification",
                           cache_dir=cache)  # fmt: skip
    assert changed.train.counts()["sw"] == 2 and len(list(cache.iterdir())) == 1


def test_an_in_memory_dataset_run_reopens_from_its_cache(tmp_path, tokenizer):
    from langtune_jax.config import RunConfig, from_dict

    source = SourceConfig.from_dataset(_classification_dict(), language_column="lang")
    cfg = from_dict(RunConfig, {"model": {"name_or_path": "m"}})
    cfg.data = DataConfig(sources=[source])
    cache = tmp_path / "data_cache"
    first = DataPipeline(cfg.data, SamplingConfig(), tokenizer, task="sequence-classification",
                         cache_dir=cache)  # fmt: skip
    first.split("validation")
    # What `langtune eval` sees: the config as written to config.yaml, without the object.
    saved = from_dict(RunConfig, cfg.to_dict())
    assert saved.data.sources[0].path.startswith("<datasets.DatasetDict ")
    assert saved.data.sources[0].dataset is None
    again = DataPipeline(saved.data, SamplingConfig(), tokenizer, task="sequence-classification",
                         cache_dir=cache)  # fmt: skip
    assert again.labels == ["sports", "politics", "arts"]
    assert again.split("validation")[0].counts() == {"en": 4, "sw": 2}
    # Without the cache the message says what to do.
    with pytest.raises(DataError, match="pass it again from Python"):
        DataPipeline(saved.data, SamplingConfig(), tokenizer, task="sequence-classification")
