"""docs/data.md cannot drift: each of its configs runs (plan, or a two-step train) on tiny data laid
out as the guide says, its Python example runs, and each error it lists is one the code gives."""

import json
import re
from pathlib import Path

import pytest
import yaml

from langtune_jax.cli import main

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(yaml|python)\n(.*?)```", GUIDE, flags=re.S)
YAML = {
    re.match(r"# layout: (\S+)", text).group(1): text for kind, text in BLOCKS if kind == "yaml"
}
LANGS = ("en", "sw", "qu")
SPLITS = ("train", "validation", "test")
ENCODER = ROOT / "demo" / "tiny-mbert"
DECODER = ROOT / "demo" / "causal" / "tiny-llama"
TRAINED = {"bio", "chat"}  # a two-step train; the others a plan (reads and tokenizes train)


def _rows(lang, split, n=None):
    n = n or (12 if split == "train" else 4)
    return [
        {"text": f"{lang} words number {i}", "label": ["sports", "arts"][i % 2]} for i in range(n)
    ]


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _build(layout: str, root: Path, monkeypatch) -> None:
    data = root / "data"
    if layout == "language-column":
        for split in SPLITS:
            _jsonl(data / f"{split}.jsonl", [{**r, "language": lang} for lang in LANGS
                                             for r in _rows(lang, split)])  # fmt: skip
    elif layout == "file-per-language":
        for split in SPLITS:
            for lang in LANGS:
                _jsonl(data / split / f"{lang}.jsonl", _rows(lang, split))
    elif layout == "csv":
        data.mkdir()
        for split in SPLITS:
            lines = ["sentence,category,lang"] + [
                f"{r['text']},{r['label']},{lang}" for lang in LANGS for r in _rows(lang, split)
            ]
            (data / f"{split}.csv").write_text("\n".join(lines) + "\n")
    elif layout == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        data.mkdir()
        rows = [{**r, "language": lang} for lang in LANGS for r in _rows(lang, "train")]
        pq.write_table(pa.Table.from_pylist(rows), data / "train.parquet")
    elif layout == "save-to-disk":
        import datasets

        features = datasets.Features(
            {
                "text": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["sports", "arts"]),
                "lang": datasets.ClassLabel(names=list(LANGS)),
            }
        )
        splits = {}
        for split in SPLITS:
            rows = [(r["text"], i % 2, li) for li, lang in enumerate(LANGS)
                    for i, r in enumerate(_rows(lang, split))]  # fmt: skip
            cols = dict(zip(("text", "label", "lang"), map(list, zip(*rows))))
            splits[split] = datasets.Dataset.from_dict(cols, features=features)
        datasets.DatasetDict(splits).save_to_disk(str(data / "my_dataset"))
    elif layout == "hub":
        import datasets

        configs = {"swa": "sw", "que": "qu"}

        def load_dataset(path, name=None, split=None, **kwargs):  # the Hub, offline
            assert path == "some-org/news-topics" and name in configs, (path, name)
            if split not in SPLITS:
                raise ValueError(f"Unknown split {split!r}")
            return datasets.Dataset.from_list(_rows(configs[name], split))

        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    elif layout == "bio":
        for split in SPLITS:
            for lang in LANGS:
                rows = [{"tokens": ["Amina", "lives", "in", f"Nairobi{i}"],
                         "ner_tags": ["B-PER", "O", "O", "B-LOC"]} for i in range(8)]  # fmt: skip
                _jsonl(data / split / f"{lang}.jsonl", rows)
    elif layout == "chat":
        rows = [
            {"messages": [{"role": "user", "content": f"put {i} in the past"},
                          {"role": "assistant", "content": f"it was {i}"}], "language": lang}
            for lang in LANGS for i in range(8)
        ]  # fmt: skip
        for split in SPLITS:
            _jsonl(data / f"{split}.jsonl", rows)
    elif layout == "prompt-response":
        for split in SPLITS:
            for lang in LANGS:
                rows = [{"instruction": f"say {i}", "output": f"{lang} {i}"} for i in range(8)]
                _jsonl(data / split / f"{lang}.jsonl", rows)
    else:
        raise AssertionError(f"docs/data.md has a layout the test does not know: {layout}")


def test_the_guide_shows_every_layout_the_issue_asks_for():
    assert set(YAML) == {
        "language-column",
        "file-per-language",
        "csv",
        "parquet",
        "save-to-disk",
        "hub",
        "bio",
        "chat",
        "prompt-response",
    }
    assert "docs/data.md" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("layout", sorted(YAML))
def test_each_config_of_the_guide_runs(layout, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    _build(layout, folder, monkeypatch)
    config = folder / "config.yaml"
    config.write_text(YAML[layout], encoding="utf-8")
    task = yaml.safe_load(YAML[layout])["model"].get("task", "sequence-classification")
    model = DECODER if task == "causal-lm" else ENCODER
    monkeypatch.chdir(tmp_path)  # not the config's folder: its relative paths must still work
    overrides = [f"model.name_or_path={model}"]
    if layout in TRAINED:
        overrides += [
            "train.steps=2",
            "train.batch_size=8",
            "train.log_every=1",
            "eval.batch_size=8",
            "eval.final_splits=[]",
            f"run.output_dir={tmp_path / 'runs'}",
        ]
        rc = main(["train", str(config), "--set", *overrides])
    else:
        rc = main(["plan", str(config), "--set", *overrides])
    out, err = capsys.readouterr()
    assert rc == 0, err
    expected = ("sw", "qu") if layout == "hub" else LANGS
    for lang in expected:
        assert re.search(rf"^\s*{lang}\s", out, flags=re.M), out
    if layout in TRAINED:
        (report,) = (tmp_path / "runs").glob("*/eval/validation/report.json")
        assert set(json.loads(report.read_text())["per_language"]) == set(LANGS)
    if layout == "bio":  # the trained tagger labels words without tags: `langtune predict`
        _predict_untagged_words(report.parent, folder, tmp_path, capsys)


def _predict_untagged_words(eval_dir, folder, tmp_path, capsys):
    """Validation rows without their tags get one tag (and score) per word, the tags that the
    validation report's predictions.jsonl holds for the same rows."""
    run_dir = eval_dir.parents[1]
    rows = [
        {"tokens": json.loads(line)["tokens"]}
        for line in (folder / "data" / "validation" / f"{LANGS[0]}.jsonl").open()
    ]
    _jsonl(tmp_path / f"words_{LANGS[0]}.jsonl", rows)
    data = str(tmp_path / "words_{language}.jsonl")
    assert main(["predict", str(run_dir), "--data", data]) == 0, capsys.readouterr().err
    got = [json.loads(x) for x in (run_dir / "predictions" / "words_.jsonl").open()]
    want = [json.loads(x) for x in (eval_dir / "predictions.jsonl").open()]
    want = [w for w in want if w["language"] == LANGS[0]]
    assert len(got) == len(want) == len(rows)
    for g, w, row in zip(got, want, rows):
        assert len(g["predictions"]) == len(g["scores"]) == len(row["tokens"])
        assert g["predictions"] == w["predictions"] and "labels" not in g


def test_the_python_example_runs(monkeypatch, capsys):
    (code,) = [text for kind, text in BLOCKS if kind == "python"]
    monkeypatch.chdir(ROOT)
    exec(compile(code, "docs/data.md", "exec"), {})
    out = capsys.readouterr().out
    for lang in ("en", "qu", "sw"):
        assert re.search(rf"^\s*{lang}\s", out, flags=re.M), out


def test_each_listed_error_is_one_the_code_gives():
    table = GUIDE.split("## Errors", 1)[1]
    fragments = re.findall(r"^\| `([^`]+)`", table, flags=re.M)
    fragments += re.findall(r"^\| `[^`]+` / `([^`]+)`", table, flags=re.M)
    assert len(fragments) >= 12
    code = "\n".join(p.read_text() for p in (ROOT / "langtune_jax").rglob("*.py"))
    missing = [f for f in fragments if f not in code]
    assert not missing, missing
