"""Sources (JSONL, CSV, Parquet, folders, Hugging Face datasets) and bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from langtune_jax.data import DataConfig, DataError, SourceConfig, load_split

SC = "sequence-classification"


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _rows(lang, n, label="a"):
    return [{"text": f"{lang} text {i}", "label": label, "language": lang} for i in range(n)]


def _cfg(path, **kw):
    src = {k: kw.pop(k) for k in list(kw) if k in SourceConfig.__dataclass_fields__}
    return DataConfig(sources=[SourceConfig(path=str(path), **src)], **kw)


def test_demo_layout_split_and_language_placeholders(tmp_path):
    for split, n in (("train", 3), ("validation", 2)):
        _jsonl(tmp_path / split / "en.jsonl", _rows("en", n))
        _jsonl(tmp_path / split / "yo.jsonl", _rows("yo", n + 1))
    cfg = _cfg(tmp_path / "{split}" / "{language}.jsonl")
    train = load_split(cfg, "train", task=SC)
    assert train.counts() == {"en": 3, "yo": 4}
    assert train.examples["yo"][1] == {
        "text": "yo text 1",
        "text_pair": None,
        "label": "a",
        "where": f"{tmp_path}/train/yo.jsonl:2",
    }
    assert load_split(cfg, "validation", task=SC).counts() == {"en": 2, "yo": 3}
    # split_names maps a role to the folder name
    (tmp_path / "validation").rename(tmp_path / "dev")
    cfg = _cfg(tmp_path / "{split}" / "{language}.jsonl", split_names={"validation": "dev"})
    assert load_split(cfg, "validation", task=SC).counts() == {"en": 2, "yo": 3}


def test_folder_source_with_language_column(tmp_path):
    _jsonl(tmp_path / "train" / "a.jsonl", _rows("en", 2) + _rows("es", 1))
    _jsonl(tmp_path / "train" / "b.jsonl", _rows("es", 2))
    split = load_split(_cfg(tmp_path / "{split}"), "train", task=SC)
    assert split.counts() == {"en": 2, "es": 3}


def test_csv_parquet_file_languages_and_fixed_language(tmp_path):
    (tmp_path / "de.csv").write_text('text,label\n"hallo, welt",x\nguten tag,y\n', "utf-8")
    table = pa.table({"sentence": ["bonjour", "salut"], "cls": [1, 2]})
    pq.write_table(table, tmp_path / "fr.parquet")
    cfg = DataConfig(
        sources=[
            SourceConfig(
                path=str(tmp_path / "de.csv"), splits=["train"], file_languages={"de": "de"}
            ),
            SourceConfig(
                path=str(tmp_path / "fr.parquet"),
                splits=["train"],
                language="fr",
                text_column="sentence",
                label_column="cls",
            ),
        ]
    )
    split = load_split(cfg, "train", task=SC)
    assert split.counts() == {"de": 2, "fr": 2}
    assert split.examples["de"][0]["text"] == "hallo, welt"
    assert split.examples["de"][1]["where"].endswith("de.csv:3")
    assert [e["label"] for e in split.examples["fr"]] == ["1", "2"]


def test_hf_datasets_source_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {
                    "premise": ["a b", "c d", "e f"],
                    "hypothesis": ["x", "y", "z"],
                    "label": [0, 1, 0],
                    "lang": ["en", "sw", "sw"],
                }
            ),
            "test": datasets.Dataset.from_dict(
                {"premise": ["g"], "hypothesis": ["w"], "label": [1], "lang": ["en"]}
            ),
        }
    )
    dd.save_to_disk(str(tmp_path / "xnli"))
    cfg = _cfg(
        tmp_path / "xnli",
        format="hf",
        text_column="premise",
        text_pair_column="hypothesis",
        language_column="lang",
    )
    train = load_split(cfg, "train", task=SC)
    assert train.counts() == {"en": 1, "sw": 2}
    assert train.examples["sw"][0]["text_pair"] == "y"
    assert load_split(cfg, "test", task=SC).counts() == {"en": 1}


def test_token_classification_and_causal_columns(tmp_path):
    _jsonl(
        tmp_path / "t.jsonl",
        [{"tokens": ["John", "lives"], "tags": ["B-PER", "O"], "language": "en"}],
    )
    ex = load_split(
        _cfg(tmp_path / "t.jsonl", splits=["train"]), "train", task="token-classification"
    ).examples["en"][0]
    assert ex["tokens"] == ["John", "lives"] and ex["tags"] == ["B-PER", "O"]
    _jsonl(tmp_path / "c.jsonl", [{"q": "2+2?", "a": "4", "language": "en"}])
    ex = load_split(
        _cfg(tmp_path / "c.jsonl", splits=["train"], prompt_column="q", response_column="a"),
        "train",
        task="causal-lm",
    ).examples["en"][0]
    assert (ex["prompt"], ex["response"]) == ("2+2?", "4")


BAD_CASES = {
    "malformed_json": (
        b'{"text": "ok", "label": "a", "language": "en"}\n{"text": "x",\n',
        "malformed JSON",
    ),
    "invalid_utf8": (
        b'{"text": "ok", "label": "a", "language": "en"}\n'
        b'{"text": "caf\xe9", "label": "a", "language": "en"}\n',
        "invalid UTF-8",
    ),
    "missing_column": (
        b'{"text": "ok", "label": "a", "language": "en"}\n'
        b'{"txt": "x", "label": "a", "language": "en"}\n',
        "missing column 'text'",
    ),
    "empty_text": (
        b'{"text": "ok", "label": "a", "language": "en"}\n'
        b'{"text": "  ", "label": "a", "language": "en"}\n',
        "empty text",
    ),
    "unknown_label": (
        b'{"text": "ok", "label": "a", "language": "en"}\n'
        b'{"text": "x", "label": "zz", "language": "en"}\n',
        "unknown label 'zz'",
    ),
    "missing_language": (
        b'{"text": "ok", "label": "a", "language": "en"}\n{"text": "x", "label": "a"}\n',
        "missing column 'language'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_row_error_names_file_and_line(tmp_path, case):
    data, reason = BAD_CASES[case]
    (tmp_path / "d.jsonl").write_bytes(data)
    cfg = _cfg(tmp_path / "d.jsonl", splits=["train"])
    with pytest.raises(DataError) as e:
        load_split(cfg, "train", task=SC, labels=["a"])
    assert f"{tmp_path}/d.jsonl:2: " in str(e.value) and reason in str(e.value)
    assert "on_bad_row: skip" in str(e.value)
    # skip mode: skipped and counted, never silent
    cfg = _cfg(tmp_path / "d.jsonl", splits=["train"], on_bad_row="skip")
    split = load_split(cfg, "train", task=SC, labels=["a"])
    assert split.counts() == {"en": 1}
    assert sum(split.skipped.values()) == 1 and sum(split.reasons.values()) == 1
    assert split.first_errors[0].startswith(f"{tmp_path}/d.jsonl:2: ")


def test_invalid_utf8_in_csv_names_the_line(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"text,label,language\nok,a,en\ncaf\xe9,a,en\n")
    with pytest.raises(DataError, match=r"d\.csv:3: invalid UTF-8"):
        load_split(_cfg(tmp_path / "d.csv", splits=["train"]), "train", task=SC)


def test_language_with_zero_examples_is_an_error(tmp_path):
    _jsonl(tmp_path / "train" / "en.jsonl", _rows("en", 2))
    (tmp_path / "train" / "qu.jsonl").write_text("")
    with pytest.raises(DataError, match=r"qu\.jsonl \(language 'qu'\): no usable examples"):
        load_split(_cfg(tmp_path / "{split}" / "{language}.jsonl"), "train", task=SC)
    # all rows of a language bad + skip -> still an error naming the language
    (tmp_path / "train" / "qu.jsonl").write_text('{"text": "", "label": "a"}\n')
    cfg = _cfg(tmp_path / "{split}" / "{language}.jsonl", on_bad_row="skip")
    with pytest.raises(DataError, match="no usable examples"):
        load_split(cfg, "train", task=SC)


def test_config_errors(tmp_path):
    with pytest.raises(DataError, match="no '\\{split\\}' placeholder"):
        load_split(_cfg(tmp_path / "x.jsonl"), "train", task=SC)
    with pytest.raises(DataError, match="no files match"):
        load_split(_cfg(tmp_path / "{split}.jsonl"), "train", task=SC)
    with pytest.raises(ValueError, match="data.on_bad_row"):
        DataConfig(on_bad_row="ignore")
    with pytest.raises(ValueError, match="data.length_buckets"):
        DataConfig(max_length=64, length_buckets=[128])
    assert DataConfig(max_length=128).buckets() == [16, 32, 64, 128]
    assert DataConfig(max_length=32).buckets() == [8, 16, 32]
    assert DataConfig(max_length=64, length_buckets=[16]).buckets() == [16, 64]
    # nested dicts (as the YAML loader gives them) become SourceConfig
    assert isinstance(DataConfig(sources=[{"path": "a/{split}"}]).sources[0], SourceConfig)


def test_language_mismatch_between_file_and_row(tmp_path):
    _jsonl(tmp_path / "train" / "en.jsonl", _rows("en", 1) + _rows("es", 1))
    with pytest.raises(DataError, match=r"en\.jsonl:2: row says language 'es'"):
        load_split(_cfg(tmp_path / "{split}" / "{language}.jsonl"), "train", task=SC)


def test_data_errors_and_configs_have_one_home():
    from langtune_jax import data
    from langtune_jax.data import config, errors

    assert data.DataError is errors.DataError and data.MissingSplitError is errors.MissingSplitError
    assert data.SourceConfig is config.SourceConfig and data.DataConfig is config.DataConfig
    assert issubclass(errors.MissingSplitError, errors.DataError)


def test_read_rows_reads_by_format_and_refuses_hf_files(tmp_path):
    from langtune_jax.data.errors import BadRow
    from langtune_jax.data.readers import read_rows

    path = tmp_path / "en.jsonl"
    path.write_text('{"text": "a"}\nnot json\n', encoding="utf-8")
    rows = list(read_rows(SourceConfig(path=str(path)), str(path)))
    assert rows[0] == (f"{path}:1", {"text": "a"})
    assert isinstance(rows[1][1], BadRow) and "malformed JSON" in rows[1][1].reason
    with pytest.raises(DataError, match="format hf needs a folder"):
        read_rows(SourceConfig(path=str(path), format="hf"), str(path))


def test_integer_labels_get_their_own_value_as_id(tmp_path):
    """Labels 0..11 in JSON numbers or CSV text: id i is label i, not string order (10 < 2)."""
    from langtune_jax.data import infer_labels

    rows = [{"text": f"t{i}", "label": i % 12, "language": "en"} for i in range(24)]
    _jsonl(tmp_path / "train" / "en.jsonl", rows)
    split = load_split(_cfg(tmp_path / "{split}"), "train", task=SC)
    assert infer_labels(split, SC) == [str(i) for i in range(12)]
    lines = "text,label\n" + "".join(f"t{i},{lab}\n" for i, lab in enumerate(["10", "-1", "2"]))
    (tmp_path / "en.csv").write_text(lines, "utf-8")
    csv = DataConfig(
        sources=[SourceConfig(path=str(tmp_path / "en.csv"), splits=["train"], language="en")]
    )
    assert infer_labels(load_split(csv, "train", task=SC), SC) == ["-1", "2", "10"]
    _jsonl(tmp_path / "mixed" / "train" / "en.jsonl", _rows("en", 1, "10") + _rows("en", 1, "2b"))
    mixed = load_split(_cfg(tmp_path / "mixed" / "{split}"), "train", task=SC)
    assert infer_labels(mixed, SC) == ["10", "2b"]  # not all integers: text order


def test_a_json_array_file_reads_like_json_lines(tmp_path):
    """A .json file holding one array of objects (pandas' orient="records", pretty-printed or
    not, with a BOM) gives the rows its JSON Lines twin gives; a non-object item is a bad row
    named by its item number; a broken array is one error with its line; a pretty-printed single
    object gets the hint about the two layouts."""
    from langtune_jax.data.errors import BadRow
    from langtune_jax.data.readers import read_rows

    rows = _rows("en", 3) + _rows("sw", 2)
    _jsonl(tmp_path / "lines" / "train.jsonl", rows)
    (tmp_path / "array").mkdir()
    array = tmp_path / "array" / "train.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, indent=2).encode())
    lines = load_split(_cfg(tmp_path / "lines" / "{split}.jsonl"), "train", task=SC)
    got = load_split(_cfg(tmp_path / "array" / "{split}.json"), "train", task=SC)
    assert got.counts() == lines.counts() == {"en": 3, "sw": 2}
    strip = lambda exs: [{k: v for k, v in ex.items() if k != "where"} for ex in exs]  # noqa: E731
    for lang in ("en", "sw"):
        assert strip(got.examples[lang]) == strip(lines.examples[lang])
    assert got.examples["sw"][1]["where"] == f"{array}:item 5"

    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([rows[0], ["not", "an", "object"]]), encoding="utf-8")
    out = list(read_rows(SourceConfig(path=str(mixed)), str(mixed)))
    assert out[0] == (f"{mixed}:item 1", rows[0])
    assert isinstance(out[1][1], BadRow) and out[1][0] == f"{mixed}:item 2"
    assert "expected a JSON object, got list" in out[1][1].reason

    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"text": "a"},\n  {"text": }\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.json:3: malformed JSON .*one JSON array"):
        list(read_rows(SourceConfig(path=str(broken)), str(broken)))

    pretty = tmp_path / "one.json"
    pretty.write_text(json.dumps(rows[0], indent=2), encoding="utf-8")
    (first,) = [r for _, r in read_rows(SourceConfig(path=str(pretty)), str(pretty))][:1]
    assert isinstance(first, BadRow) and "one array of objects" in first.reason
