"""The catalogue of user mistakes: each one ends ``langtune`` with exit 2, one line on stderr that
names the key / file:line / language and the fix, before the first training step, and changes
nothing that existed before the command.

Every case runs through the real entry point, ``cli.main([...])`` in-process (a few as
subprocesses). ``docs/errors.md`` is generated from :data:`CASES` (``python
tests/test_bad_inputs.py > docs/errors.md``); :func:`test_errors_doc_is_current` keeps it so.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "demo" / "tiny-mbert"
LANGS = ("en", "es", "sw")
ROWS = {"train": 16, "validation": 8, "test": 8}


# ----------------------------------------------------------------------------- the workspace


def _demo_rows(split: str, lang: str, n: int) -> list[dict]:
    lines = (ROOT / "demo" / "data" / split / f"{lang}.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory) -> Path:
    """A 1-layer, 16-wide BERT on the demo tokenizer: loads and trains in a moment."""
    from flax import nnx

    from langtune_jax.models.bert import from_hf_config
    from langtune_jax.models.hub_files import save_pretrained

    folder = tmp_path_factory.mktemp("micro") / "model"
    hf = json.loads((DEMO_MODEL / "config.json").read_text())
    hf.update(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    save_pretrained(from_hf_config(hf, "masked-lm", rngs=nnx.Rngs(0)), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_MODEL / name, folder / name)
    return folder


class World:
    """One case's folder: data, configs, runs; the tiny model is shared (read-only)."""

    def __init__(self, root: Path, model: Path):
        self.root, self.model = root, model
        self.data = root / "data"
        for split, n in ROWS.items():
            (self.data / split).mkdir(parents=True)
            for lang in LANGS:
                self.jsonl(f"data/{split}/{lang}.jsonl", _demo_rows(split, lang, n))
        self.base = {
            "run": {"name": "run", "output_dir": str(root / "runs")},
            "model": {"name_or_path": str(model)},
            "peft": {
                "method": "lora",
                "lora": {"r": 2, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
            },
            "data": {"sources": [{"path": str(self.data / "{split}")}], "max_length": 32},
            "sampling": {"strategy": "uniform"},
            "train": {"steps": 3, "batch_size": 8, "log_every": 1, "learning_rate": 1e-3},
            "eval": {"split": "validation", "final_splits": ["test"], "batch_size": 8},
        }

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / "run"

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write(self, rel: str, text: str | bytes) -> Path:
        p = self.path(rel)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def jsonl(self, rel: str, rows: list) -> Path:
        return self.write(rel, "".join(json.dumps(r) + "\n" for r in rows))

    def append(self, rel: str, line: str) -> None:
        with open(self.root / rel, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def config(self, changes: dict | None = None, drop: tuple[str, ...] = ()) -> str:
        """Writes the base config with dotted-key ``changes`` (and ``drop``ped keys)."""
        data = json.loads(json.dumps(self.base))
        for dotted, value in (changes or {}).items():
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        for dotted in drop:
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                node = node[part]
            del node[leaf]
        return str(self.write("config.yaml", yaml.safe_dump(data)))

    def model_copy(self, without: tuple[str, ...] = ()) -> Path:
        folder = self.root / "model"
        shutil.copytree(self.model, folder, ignore=shutil.ignore_patterns(*without))
        return folder

    def fake_run(self, changes: dict | None = None) -> Path:
        """A run folder as training leaves it, without training: config.yaml, checkpoints/,
        and a report per split."""
        from langtune_jax.config import dump_config, load_config

        cfg = load_config(self.config(changes))
        self.run_dir.mkdir(parents=True)
        dump_config(cfg, self.run_dir / "config.yaml")
        (self.run_dir / "checkpoints").mkdir()
        return self.run_dir


def _train(w: World, changes: dict | None = None, *extra: str) -> list[str]:
    return ["train", w.config(changes), *extra]


def _plan(w: World, changes: dict | None = None) -> list[str]:
    return ["plan", w.config(changes)]


# ----------------------------------------------------------------------------- the catalogue


@dataclasses.dataclass(frozen=True)
class Case:
    """One mistake: ``setup`` prepares the world and returns the argv; the one error line must
    contain every string of ``expect``.

    Attributes:
      name: short id (the pytest id).
      mistake: the mistake in words (docs/errors.md).
      section: catalogue section of the docs.
      setup: World -> argv (without ``langtune``).
      expect: substrings of the error line (key, file:line, language, the fix).
      subprocess: run as a real ``python -m langtune_jax.cli`` process.
      trains: the error comes after training steps (divergence, a full disk); the run folder may
        gain files, but nothing that existed before changes and no checkpoint is written.
      patch: (module attribute path, factory of a replacement) applied while the case runs.
      cwd: run from the world's folder (for mistakes about relative paths).
    """

    name: str
    mistake: str
    section: str
    setup: Callable[[World], list[str]]
    expect: tuple[str, ...]
    subprocess: bool = False
    trains: bool = False
    patch: tuple[str, Callable] | None = None
    cwd: bool = False


def _config_in_subfolder(w: World) -> list[str]:
    """configs/run.yaml naming the data as seen from the world's folder (``data/{split}``)."""
    data = json.loads(json.dumps(w.base))
    data["data"]["sources"] = [{"path": "data/{split}"}]
    return ["train", str(w.write("configs/run.yaml", yaml.safe_dump(data)))]


def _bad_train_row(line: str, rel: str = "data/train/es.jsonl"):
    def setup(w: World) -> list[str]:
        w.append(rel, line)
        return _train(w)

    return setup


def _row(text="na", label="sport", language="es") -> str:
    return json.dumps({"text": text, "label": label, "language": language})


def _raise(exc: BaseException):
    def replacement(*args, **kwargs):
        raise exc

    return lambda original: replacement


def _csv_world(w: World, text: str, delimiter: str | None = None) -> list[str]:
    w.write("csv/train/en.csv", text)
    src = {"path": str(w.root / "csv" / "{split}" / "{language}.csv")}
    if delimiter:
        src["delimiter"] = delimiter
    return _train(w, {"data.sources": [src], "eval.split": "train", "eval.final_splits": []})


def _mixed_label_types(w: World) -> list[str]:
    rows = _demo_rows("train", "es", 4)
    rows[2]["label"] = 3
    w.jsonl("data/train/es.jsonl", rows)
    return _train(w)


def _token_changes(w: World, more: dict | None = None) -> dict:
    return {
        "model.task": "token-classification",
        "data.sources": [{"path": str(w.root / "tok" / "{split}" / "{language}.jsonl")}],
        "eval.split": "train",
        "eval.final_splits": [],
        "peft.lora.task_type": "TOKEN_CLS",
        **(more or {}),
    }


def _token_world(w: World, rows: list[dict]) -> list[str]:
    w.jsonl("tok/train/en.jsonl", rows)
    return _train(w, _token_changes(w))


def _token_unknown_tag(w: World) -> list[str]:
    w.jsonl("tok/train/en.jsonl", [{"tokens": ["a", "b"], "tags": ["B-PER", "O"]}] * 2)
    w.jsonl("tok/validation/en.jsonl", [{"tokens": ["a"], "tags": ["B-XYZ"]}])
    return _train(w, _token_changes(w, {"eval.split": "validation"}))


def _causal_truncated(w: World) -> list[str]:
    long = " ".join(["plai"] * 40)
    rows = [{"prompt": long, "response": "yes", "language": "en"} for _ in range(4)]
    w.jsonl("lm/train/en.jsonl", rows)
    return _train(
        w,
        {
            "model.task": "causal-lm",
            "data.sources": [
                {
                    "path": str(w.root / "lm" / "{split}" / "{language}.jsonl"),
                    "prompt_column": "prompt",
                }
            ],
            "data.max_length": 8,
            "eval.split": "train",
            "eval.final_splits": [],
            "peft.lora.task_type": "CAUSAL_LM",
        },
    )


def _model_case(without=(), edit: Callable[[Path], None] | None = None):
    def setup(w: World) -> list[str]:
        folder = w.model_copy(without)
        if edit:
            edit(folder)
        return _train(w, {"model.name_or_path": str(folder)})

    return setup


def _truncate(name: str, keep: int):
    def edit(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:keep])

    return edit


def _json_edit(**changes):
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg))

    return edit


def _compare_truncated(w: World) -> list[str]:
    for name in ("a", "b"):
        w.write(f"runs/{name}/eval/test/report.json", '{"schema_version": 1, "task": "seq')
    return ["compare", str(w.root / "runs" / "a"), str(w.root / "runs" / "b")]


def _locked(w: World) -> list[str]:
    import socket

    w.fake_run()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}
    w.write("runs/run/train.lock", json.dumps(holder))
    return _train(w)


def _steps_changed(w: World) -> list[str]:
    w.fake_run()
    (w.run_dir / "checkpoints" / "3").mkdir()
    return _train(w, {"train.steps": 6})


def _resume_changed(w: World) -> list[str]:
    w.fake_run()
    return _train(w, {"train.learning_rate": 5e-3})


C = Case
# fmt: off
CASES: list[Case] = [
    # --- config file and --set
    C("config-missing", "the config file does not exist", "config",
      lambda w: ["train", str(w.root / "nope.yaml")], ("nope.yaml", "does not exist")),
    C("config-yaml", "the config is not valid YAML", "config",
      lambda w: ["train", str(w.write("c.yaml", "train: [1, 2\nrun: {"))], ("c.yaml", "invalid YAML"),
      subprocess=True),
    C("config-list", "the config's top level is a list", "config",
      lambda w: ["train", str(w.write("c.yaml", "- a\n- b\n"))], ("c.yaml", "mapping")),
    C("config-unknown-section", "a misspelt section (`trian:`)", "config",
      lambda w: _train(w, {"trian": {"steps": 3}}), ("'trian'", "valid keys")),
    C("config-unknown-key", "a misspelt key (`train.stpes`)", "config",
      lambda w: _train(w, {"train.stpes": 3}), ("'train.stpes'", "valid keys")),
    C("config-type", "a string where a number belongs", "config",
      lambda w: _train(w, {"train.steps": "ten"}), ("'train.steps'", "expected int")),
    C("config-steps-zero", "train.steps: 0", "config",
      lambda w: _train(w, {"train.steps": 0}), ("steps must be >= 1",)),
    C("config-lr-negative", "a negative learning rate", "config",
      lambda w: _train(w, {"train.learning_rate": -1.0}), ("learning_rate must be > 0",)),
    C("config-accum", "batch_size not divisible by grad_accum_steps", "config",
      lambda w: _train(w, {"train.grad_accum_steps": 3}), ("grad_accum_steps",)),
    C("config-strategy", "an unknown sampling strategy", "config",
      lambda w: _train(w, {"sampling.strategy": "balanced"}), ("'sampling.strategy'", "uniform")),
    C("config-task", "an unknown task", "config",
      lambda w: _train(w, {"model.task": "ner"}), ("'model.task'", "token-classification")),
    C("config-peft", "an unknown PEFT method", "config",
      lambda w: _train(w, {"peft.method": "qlora"}), ("'peft.method'", "lora")),
    C("config-no-model", "no model.name_or_path", "config",
      lambda w: _train(w, {"model": {}}), ("'model.name_or_path'", "missing")),
    C("config-run-name", "a run name with a slash", "config",
      lambda w: _train(w, {"run.name": "a/b"}), ("run", "without '/'")),
    C("config-mesh-two-rest", "two mesh axes set to -1", "config",
      lambda w: _train(w, {"mesh": {"data": -1, "fsdp": -1}}), ("mesh", "at most one -1")),
    C("config-mesh-devices", "a mesh that does not fit the 8 devices", "config",
      lambda w: _train(w, {"mesh": {"data": 3}}), ("mesh", "8 are available")),
    C("config-max-length-tiny", "data.max_length: 1", "config",
      lambda w: _train(w, {"data.max_length": 1}), ("data.max_length must be >= 2",)),
    C("config-buckets", "a length bucket above max_length", "config",
      lambda w: _train(w, {"data.length_buckets": [64]}), ("data.length_buckets", "64")),
    C("config-labels-dup", "data.labels with a duplicate", "config",
      lambda w: _train(w, {"data.labels": ["a", "a"]}), ("data.labels has duplicates",)),
    C("config-bad-row-policy", "an unknown data.on_bad_row", "config",
      lambda w: _train(w, {"data.on_bad_row": "ignore"}), ("'data.on_bad_row'", "skip")),
    C("config-packing-per-language", "data.packing with per-language LoRA adapters", "config",
      lambda w: _train(w, {"data.packing": True, "peft.lora_languages": ["en", "sw"]}),
      ("'data.packing'", "peft.lora_languages", "data.packing: false")),
    C("config-madx-library", "peft.adapters.language_adapters names a folder that is not there",
      "config",
      lambda w: _train(w, {"peft.method": "adapters", "peft.adapters.language_adapters": "nolib"}),
      ("peft.adapters.language_adapters", "nolib", "not a language adapter library")),
    C("config-delimiter", "a CSV delimiter of two characters", "config",
      lambda w: _train(w, {"data.sources": [{"path": "x/{split}", "delimiter": ";;"}]}),
      ("delimiter must be one character",)),
    C("config-language-twice", "a source with `{language}` in its path and a fixed `language`",
      "config",
      lambda w: _train(w, {"data.sources": [{"path": "x/{split}/{language}.jsonl", "language": "xx"}]}),
      ("data.sources[0]", "language", "drop language")),
    C("config-relative-path", "a relative data path written from the current directory, in a "
      "config that lies in a subfolder (paths in a config resolve against its folder)", "config",
      _config_in_subfolder,
      ("data.sources[0].path", "'data/{split}'", "config file's folder", "'../data/{split}'"),
      cwd=True),
    C("config-no-sources", "data.sources is empty", "config",
      lambda w: _train(w, {"data.sources": []}), ("data.sources is empty",)),
    C("weights-same-language", "sampling.weights names a language twice (`EN`, `en`)", "config",
      lambda w: _train(w, {"sampling": {"strategy": "manual", "weights": {"EN": 1, "en": 2}}}),
      ("'sampling.weights'", "same language twice")),
    C("set-no-equals", "`--set` without `=`", "config",
      lambda w: _train(w, None, "--set", "train.steps"), ("train.steps", "KEY=VALUE")),
    C("set-bad-yaml", "`--set` with a value that is not YAML", "config",
      lambda w: _train(w, None, "--set", "train.steps=[1"), ("train.steps=[1", "not valid YAML")),
    C("set-into-value", "`--set` below a value (`train.steps.x=1`)", "config",
      lambda w: _train(w, None, "--set", "train.steps.x=1"), ("'train.steps' is a value",)),
    C("cli-unknown-command", "an unknown subcommand", "config",
      lambda w: ["fit", "x.yaml"], ("invalid choice", "--help"), subprocess=True),
    C("cli-missing-argument", "`langtune train` without a config", "config",
      lambda w: ["train"], ("required: config",)),
    # --- metric names, checked against the task's report
    C("metric-misspelt", "eval.metric misspelt (`macro_f2`)", "metrics",
      lambda w: _train(w, {"eval.metric": "macro_f2"}), ("'eval.metric'", "macro_f1, accuracy")),
    C("metric-stat-form", "eval.metric with a statistic (`macro_f1_mean`)", "metrics",
      lambda w: _train(w, {"eval.metric": "macro_f1_mean"}), ("'eval.metric'", "macro_f1")),
    C("metric-wrong-task", "eval.metric of another task (`perplexity`)", "metrics",
      lambda w: _train(w, {"eval.metric": "perplexity"}), ("'eval.metric'", "sequence-classification")),
    C("best-metric-misspelt", "train.best_metric misspelt (`mean_f2`)", "metrics",
      lambda w: _train(w, {"train.best_metric": "mean_f2"}), ("'train.best_metric'", "macro_f1_mean")),
    C("best-metric-wrong-task", "train.best_metric of another task (`loss`)", "metrics",
      lambda w: _train(w, {"train.best_metric": "loss"}), ("'train.best_metric'", "accuracy_worst")),
    C("best-metric-no-eval", "train.best_metric without evaluations (eval_every: 0)", "metrics",
      lambda w: _train(w, {"train.best_metric": "accuracy"}), ("'train.best_metric'", "train.eval_every")),
    C("best-metric-plan", "`langtune plan` refuses a misspelt best_metric too", "metrics",
      lambda w: _plan(w, {"train.best_metric": "f1_avg"}), ("'train.best_metric'",)),
    # --- checks against the model and the mesh (before the model is loaded)
    C("max-length-positions", "data.max_length beyond the model's position table", "preflight",
      lambda w: _train(w, {"data.max_length": 128}), ("'data.max_length'", "128", "64 positions")),
    C("batch-devices", "train.batch_size that does not divide over 8 devices", "preflight",
      lambda w: _train(w, {"train.batch_size": 12}), ("'train.batch_size'", "8 data-parallel")),
    C("batch-accum-devices", "a micro-batch (batch / grad_accum) below the device count", "preflight",
      lambda w: _train(w, {"train.batch_size": 16, "train.grad_accum_steps": 4}),
      ("'train.batch_size'", "grad_accum_steps = 4", "8 data-parallel")),
    C("eval-batch-devices", "eval.batch_size that does not divide over 8 devices", "preflight",
      lambda w: _train(w, {"eval.batch_size": 12}), ("'eval.batch_size'", "8 data-parallel")),
    C("plan-batch-devices", "`langtune plan` checks the batch size too", "preflight",
      lambda w: _plan(w, {"train.batch_size": 4}), ("'train.batch_size'", "8 data-parallel")),
    C("lora-targets", "peft.lora.target_modules that match no module (Llama names on BERT)",
      "preflight",
      lambda w: _train(w, {"peft.lora.target_modules": ["q_proj", "v_proj"]}),
      ("'peft.lora'", "['q_proj', 'v_proj'] matched no module", "query")),
    C("plan-lora-targets", "`langtune plan` checks the PEFT targets too", "preflight",
      lambda w: _plan(w, {"peft.lora.target_modules": ["querry"]}),
      ("'peft.lora'", "['querry'] matched no module")),
    C("source-language", "eval.source_language not among the training languages", "preflight",
      lambda w: _train(w, {"eval.source_language": "fr"}), ("'eval.source_language'", "'fr'")),
    # --- evaluation splits, read and checked before step 0
    C("eval-split-missing", "eval.split names a split the data lacks", "eval splits",
      lambda w: _train(w, {"eval.split": "dev"}), ("'eval.split'", "'dev'", "data.sources")),
    C("final-split-missing", "eval.final_splits names a split the data lacks", "eval splits",
      lambda w: _train(w, {"eval.final_splits": ["test", "heldout"]}),
      ("'eval.final_splits'", "'heldout'", "remove")),
    C("plan-final-split-missing", "`langtune plan` checks the splits too", "eval splits",
      lambda w: _plan(w, {"eval.final_splits": ["dev"]}), ("'eval.final_splits'", "'dev'")),
    C("eval-unknown-label", "a validation label that train does not have", "eval splits",
      lambda w: (w.append("data/validation/sw.jsonl", _row(label="cooking", language="sw")),
                 _train(w))[1], ("validation/sw.jsonl:9", "unknown label 'cooking'")),
    C("test-unknown-label", "a test label that train does not have (read before training)",
      "eval splits",
      lambda w: (w.append("data/test/en.jsonl", _row(label="cooking", language="en")),
                 _train(w))[1], ("test/en.jsonl:9", "unknown label 'cooking'")),
    C("eval-new-language", "a test language that train does not have and no adapter serves "
      "(per-language adapters, no shared one, no fallback; with a fallback or a shared adapter it "
      "is evaluated zero-shot)", "eval splits",
      lambda w: (w.jsonl("data/test/fr.jsonl",
                         [dict(r, language="fr") for r in _demo_rows("test", "es", 2)]),
                 _train(w, {"peft.method": "adapters", "peft.adapters.languages": list(LANGS),
                            "peft.adapters.shared_task_adapter": False}))[1],
      ("'fr'", "not in train", "fallback")),
    C("eval-bad-json", "a malformed line in the test split", "eval splits",
      lambda w: (w.append("data/test/es.jsonl", '{"text": "x", '), _train(w))[1],
      ("test/es.jsonl:9", "malformed JSON")),
    # --- training data
    C("row-json", "a malformed JSON line", "data", _bad_train_row('{"text": "a",'),
      ("train/es.jsonl:17", "malformed JSON", "on_bad_row")),
    C("row-not-object", "a JSON line that is not an object", "data", _bad_train_row("[1, 2]"),
      ("train/es.jsonl:17", "expected a JSON object")),
    C("row-missing-text", "a row without the text column", "data",
      _bad_train_row(json.dumps({"body": "x", "label": "sport", "language": "es"})),
      ("train/es.jsonl:17", "missing column 'text'", "text_column")),
    C("row-empty-text", "a row with empty text", "data", _bad_train_row(_row(text="  ")),
      ("train/es.jsonl:17", "empty text")),
    C("row-empty-label", "a row with an empty label", "data", _bad_train_row(_row(label=" ")),
      ("train/es.jsonl:17", "empty label")),
    C("row-mixed-label-types", "a label `3` among text labels", "data", _mixed_label_types,
      ("train/es.jsonl:3", "label 3 is a number", "es.jsonl:1")),
    C("row-language-disagrees", "a row whose language differs from its file's", "data",
      lambda w: (w.append("data/train/es.jsonl", _row(language="sw")),
                 _train(w, {"data.sources": [
                     {"path": str(w.data / "{split}" / "{language}.jsonl")}]}))[1],
      ("train/es.jsonl:17", "row says language 'sw'", "'es'")),
    C("row-empty-language", "a row with an empty language", "data",
      _bad_train_row(_row(language="")), ("train/es.jsonl:17", "empty language")),
    C("row-utf8", "a line that is not UTF-8", "data",
      lambda w: (w.write("data/train/es.jsonl",
                         (w.data / "train" / "es.jsonl").read_bytes() + b'{"text": "\xff"}\n'),
                 _train(w))[1], ("train/es.jsonl:17", "invalid UTF-8")),
    C("language-all-skipped", "every row of a language is bad (on_bad_row: skip)", "data",
      lambda w: (w.write("data/train/sw.jsonl", "[1]\n[2]\n"),
                 _train(w, {"data.on_bad_row": "skip"}))[1], ("train/sw.jsonl", "no usable")),
    C("train-path", "the train path matches no file", "data",
      lambda w: _train(w, {"data.sources": [{"path": str(w.root / "nodata" / "{split}")}]}),
      ("data.sources[0]", "nodata/train", "check the path")),
    C("source-no-split", "a source path without `{split}` and without `splits`", "data",
      lambda w: _train(w, {"data.sources": [{"path": str(w.data / "train")}]}),
      ("data.sources[0]", "{split}", "splits")),
    C("source-extension", "a file whose format cannot be told", "data",
      lambda w: (w.write("odd/train/en.txt", "x\n"),
                 _train(w, {"data.sources": [{"path": str(w.root / "odd" / "{split}" / "*")}]}))[1],
      ("en.txt", "data.sources[].format")),
    C("csv-delimiter", "a CSV written with `;`", "data",
      lambda w: _csv_world(w, "text;label;language\nplai;sport;en\n"),
      ("en.csv:1", "does not split on ','", "delimiter: ';'")),
    C("csv-missing-column", "a CSV header without the text column (`sentence` instead)", "data",
      lambda w: _csv_world(w, "sentence,label\nplai,sport\nhola,sport\n"),
      ("en.csv:1", "the header has no column 'text'", "'sentence'", "text_column")),
    C("csv-extra-field", "a CSV row with more fields than the header", "data",
      lambda w: _csv_world(w, "text,label\nplai,sport\nplai,sport,extra\n"),
      ("en.csv:3", "more fields than the header")),
    C("token-tags-mismatch", "token classification: fewer tags than tokens", "data",
      lambda w: _token_world(w, [{"tokens": ["a", "b"], "tags": ["O"], "language": "en"}]),
      ("tok/train/en.jsonl:1", "2 tokens but 1 tags")),
    C("token-unknown-tag", "token classification: a validation tag train does not have", "data",
      _token_unknown_tag, ("tok/validation/en.jsonl:1", "unknown tag 'B-XYZ'")),
    C("causal-no-target", "truncation to data.max_length leaves no response token", "data",
      _causal_truncated, ("split 'train'", "language 'en'", "data.max_length=8")),
    # --- the model folder
    C("model-missing", "model.name_or_path is a folder that does not exist", "model",
      lambda w: _train(w, {"model.name_or_path": str(w.root / "no-model")}), ("no-model", "does not exist")),
    C("model-is-file", "model.name_or_path is a file", "model",
      lambda w: _train(w, {"model.name_or_path": str(w.write("m.bin", "x"))}), ("m.bin", "is a file")),
    C("model-no-tokenizer", "a model folder without its tokenizer", "model",
      _model_case(without=("tokenizer*",)), ("model", "has no tokenizer", "model.tokenizer")),
    C("model-config-json", "a corrupt config.json", "model",
      _model_case(edit=_truncate("config.json", 40)), ("config.json", "invalid JSON")),
    C("model-type", "a model_type langtune does not support", "model",
      _model_case(edit=_json_edit(model_type="gpt2")), ("config.json", "model_type='gpt2'", "supported")),
    C("model-no-weights", "a model folder without model.safetensors", "model",
      _model_case(without=("model.safetensors",)), ("model", "model.safetensors")),
    C("model-truncated", "a truncated model.safetensors", "model",
      _model_case(edit=_truncate("model.safetensors", 5000)), ("model.safetensors", "truncated")),
    # --- run folders and the other commands
    C("run-dir-file", "`--run-dir` is a file", "runs",
      lambda w: _train(w, None, "--run-dir", str(w.write("runfile", "x"))), ("--run-dir", "runfile", "is a file")),
    C("resume-other-config", "resuming a run folder with a different config", "runs",
      _resume_changed, ("different config", "train.learning_rate", "--run-dir")),
    C("run-dir-foreign", "`--run-dir` on a folder holding files that are no langtune run", "runs",
      lambda w: (w.write("mine/config.yaml", "my: own\n"), _train(w, None, "--run-dir", str(w.root / "mine")))[1],
      ("mine", "not a langtune run", "--run-dir")),
    C("run-dir-locked", "a second `langtune train` on a folder another process trains in", "runs",
      _locked, ("in use", "is training in it", "wait")),
    C("resume-steps-changed", "resuming with another `train.steps` without `--extend`", "runs",
      _steps_changed, ("train.steps=3", "train.steps=6", "--extend", "--restart")),
    C("export-merged-adapters", "`export --format merged` of a run with bottleneck adapters", "runs",
      lambda w: (w.fake_run({"peft.method": "adapters"}),
                 ["export", str(w.run_dir), "--format", "merged", "--out", str(w.root / "m")])[1],
      ("bottleneck adapters", "adapter", "load_adapters")),
    C("eval-not-run", "`langtune eval` on a folder that is no run", "runs",
      lambda w: ["eval", str(w.path("empty/x").parent)], ("not a run folder", "config.yaml")),
    C("eval-run-is-file", "`langtune eval` on a file", "runs",
      lambda w: ["eval", str(w.write("file", "x"))], ("file", "is a file")),
    C("eval-data-missing", "`langtune eval --data` with a file that does not exist", "runs",
      lambda w: (w.fake_run(), ["eval", str(w.run_dir), "--data", str(w.root / "new.csv")])[1],
      ("--data", "new.csv", "no file matches")),
    C("eval-data-own-split", "`langtune eval --data F --split test`: the name of one of the "
      "run's own splits", "runs",
      lambda w: (w.fake_run(), ["eval", str(w.run_dir), "--data", str(w.write("new.csv", "text\n")),
                                "--split", "test"])[1],
      ("--split 'test'", "eval/test/", "another --split")),
    C("eval-language-alone", "`langtune eval --language` without `--data`", "runs",
      lambda w: (w.fake_run(), ["eval", str(w.run_dir), "--language", "sw"])[1],
      ("--language needs --data",)),
    C("predict-out-exists", "`langtune predict --out` names a file that exists", "runs",
      lambda w: (w.fake_run(), ["predict", str(w.run_dir), "--data", str(w.write("new.csv", "text\n")),
                                "--out", str(w.write("preds.jsonl", "{}\n"))])[1],
      ("--out", "preds.jsonl", "exists", "--overwrite")),
    C("predict-causal-run", "`langtune predict` on a causal-LM run", "runs",
      lambda w: (w.fake_run({"model.task": "causal-lm"}),
                 ["predict", str(w.run_dir), "--data", str(w.write("new.csv", "text\n"))])[1],
      ("classification run", "causal-lm", "langtune generate")),
    C("predict-data-missing", "`langtune predict --data` with a file that does not exist", "runs",
      lambda w: (w.fake_run(), ["predict", str(w.run_dir), "--data", str(w.root / "new.csv")])[1],
      ("--data", "new.csv", "no file matches")),
    C("export-out-file", "`export --out` is a file", "runs",
      lambda w: (w.fake_run(), ["export", str(w.run_dir), "--out", str(w.write("out.txt", "x"))])[1],
      ("--out", "out.txt", "is a file")),
    C("export-not-run", "`langtune export` on a folder that is no run", "runs",
      lambda w: ["export", str(w.path("empty/x").parent), "--out", str(w.root / "out")],
      ("not a run folder", "config.yaml")),
    C("generate-not-run", "`langtune generate` on a folder that is no run", "runs",
      lambda w: ["generate", str(w.path("empty/x").parent), "--prompt", "hi"],
      ("not a run folder", "config.yaml")),
    C("compare-truncated", "`compare` on a truncated report.json", "runs",
      _compare_truncated, ("runs/a/eval/test/report.json", "truncated")),
    C("compare-no-report", "`compare` on a folder without reports", "runs",
      lambda w: ["compare", str(w.path("runs/a/x").parent)], ("runs/a",)),
    # --- faults while training: the last good checkpoint stays intact
    C("diverged", "a learning rate of 1e6: the loss explodes (stopped, nothing exported)",
      "training", lambda w: _train(w, {"train.learning_rate": 1.0e6, "train.steps": 6}),
      ("diverged", "train.learning_rate", "intact"), trains=True),
    C("disk-full", "the disk fills up while a checkpoint is written", "training",
      lambda w: _train(w, {"train.checkpoint_every": 1}),
      ("No space left on device", "checkpoints", "intact", "rerun"), trains=True,
      patch=("langtune_jax.train.checkpoint.Checkpointer.save",
             _raise(OSError(errno.ENOSPC, "No space left on device", "checkpoints/1")))),
    C("read-only", "the run folder cannot be written", "training",
      lambda w: _train(w),
      ("Permission denied", "config.yaml", "intact"), trains=True,
      patch=("langtune_jax.train.loop.dump_config",
             _raise(PermissionError(errno.EACCES, "Permission denied", "runs/run/config.yaml")))),
]
# fmt: on
del C


# ----------------------------------------------------------------------------- the checks


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(case: Case, argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    from langtune_jax import cli

    if case.subprocess:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("LANGTUNE_DEBUG", None)
        proc = subprocess.run(
            [sys.executable, "-m", "langtune_jax.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        return proc.returncode, proc.stderr
    if case.patch:
        target, factory = case.patch
        module_path, attr = target.rsplit(".", 1)
        import importlib

        try:
            owner = importlib.import_module(module_path)
        except ModuleNotFoundError:
            mod, cls = module_path.rsplit(".", 1)
            owner = getattr(importlib.import_module(mod), cls)
        monkeypatch.setattr(owner, attr, factory(getattr(owner, attr)))
    monkeypatch.delenv("LANGTUNE_DEBUG", raising=False)
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path, micro_model, capsys, monkeypatch):
    w = World(tmp_path, micro_model)
    if case.cwd:
        monkeypatch.chdir(tmp_path)
    argv = case.setup(w)
    before = _snapshot(tmp_path)
    had_run_dir = w.run_dir.exists()
    start = time.perf_counter()
    code, err = _run(case, argv, capsys, monkeypatch)
    elapsed = time.perf_counter() - start
    # The progress bar of a run that trained a few steps is not an error line.
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.search(r"\d+%\|", ln)]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in case.expect:
        assert needle in lines[0], (needle, lines[0])
    after = _snapshot(tmp_path)
    if case.trains:
        # Files that existed are untouched; no checkpoint or adapter was written.
        assert {k: after[k] for k in before} == before
        assert not any("checkpoints/" in k or "adapter/" in k for k in after)
    else:
        assert after == before, sorted(set(after) ^ set(before))
        assert had_run_dir or not w.run_dir.exists()  # not even an empty run folder
        # Before the first step: no run folder content, and quickly (no model was trained).
        assert not (w.run_dir / "metrics.jsonl").exists()
        assert elapsed < 60, elapsed


def test_catalogue_is_large_and_unique():
    names = [c.name for c in CASES]
    assert len(names) >= 60 and len(set(names)) == len(names)


# ----------------------------------------------------------------------------- not errors


def _plan_text(argv, capsys) -> str:
    from langtune_jax import cli

    capsys.readouterr()
    assert cli.main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_language_codes_normalised_with_a_note(tmp_path, micro_model, capsys):
    """`EN` and `en` rows are one language (never two), and the plan says what was renamed;
    file names given by a `{language}` placeholder are normalised the same way."""
    w = World(tmp_path, micro_model)
    rows = _demo_rows("train", "en", 16)
    w.jsonl("data/train/en.jsonl", [dict(r, language="EN") for r in rows[:6]] + rows[6:])
    out = _plan_text(["plan", w.config()], capsys)
    table = [ln.split()[:2] for ln in out.splitlines()[3:6]]
    assert table == [["en", "16"], ["es", "16"], ["sw", "16"]], out
    assert "note: language codes normalised to BCP-47 case: 'EN' -> 'en'" in out
    for split in ROWS:
        os.rename(w.data / split / "sw.jsonl", w.data / split / "SW.jsonl")
    src = {"path": str(w.data / "{split}" / "{language}.jsonl")}
    out = _plan_text(["plan", w.config({"data.sources": [src]})], capsys)
    assert [ln.split()[0] for ln in out.splitlines()[3:6]] == ["en", "es", "sw"], out
    assert "'SW' -> 'sw'" in out


def test_normalize_language_bcp47_case():
    from langtune_jax.data.readers import normalize_language

    cases = {"EN": "en", "zh-hant": "zh-Hant", "pt-br": "pt-BR", "es-419": "es-419",
             "sr-latn-rs": "sr-Latn-RS", " yo ": "yo", "lang_a": "lang_a"}  # fmt: skip
    assert {k: normalize_language(k) for k in cases} == cases


def test_duplicates_counted_and_dropped(tmp_path, micro_model, capsys):
    w = World(tmp_path, micro_model)
    rows = _demo_rows("train", "es", 4)
    w.jsonl("data/train/es.jsonl", rows + rows[:3])
    out = _plan_text(["plan", w.config()], capsys)
    assert "exact duplicate rows: es 3; set data.dedupe: true" in out
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("es ")] == ["7"]
    out = _plan_text(["plan", w.config({"data.dedupe": True})], capsys)
    assert "dropped (data.dedupe): es 3" in out
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("es ")] == ["4"]


def test_bom_and_csv_delimiter_accepted(tmp_path, micro_model, capsys):
    w = World(tmp_path, micro_model)
    w.write("data/train/es.jsonl", b"\xef\xbb\xbf" + (w.data / "train" / "es.jsonl").read_bytes())
    assert "es " in _plan_text(["plan", w.config()], capsys)
    argv = _csv_world(w, "\ufefftext;label\nplai soobe;sport\nplai nit;money\n", delimiter=";")
    out = _plan_text(["plan", argv[1]], capsys)
    assert out.splitlines()[3].startswith("en ")


def test_metric_short_forms_are_mapped(tmp_path, micro_model):
    from langtune_jax.config import load_config

    w = World(tmp_path, micro_model)
    every = {"train.eval_every": 2, "train.checkpoint_every": 2}
    cfg = load_config(w.config({"train.best_metric": "mean_f1", "eval.metric": "f1", **every}))
    assert (cfg.train.best_metric, cfg.eval.metric) == ("macro_f1_mean", "macro_f1")
    cfg = load_config(
        w.config({"train.best_metric": "macro_f1_mean", "eval.metric": "acc", **every})
    )
    assert (cfg.train.best_metric, cfg.eval.metric) == ("macro_f1_mean", "accuracy")


def test_debug_shows_the_traceback(tmp_path, micro_model, monkeypatch):
    """``--debug`` after the subcommand re-raises in-process; ``LANGTUNE_DEBUG=1`` prints the
    traceback of a real process."""
    from langtune_jax import cli
    from langtune_jax.config import ConfigError

    w = World(tmp_path, micro_model)
    cfg = w.config({"eval.metric": "macro_f2"})
    monkeypatch.delenv("LANGTUNE_DEBUG", raising=False)
    with pytest.raises(ConfigError, match="eval.metric"):
        cli.main(["train", cfg, "--debug"])
    with pytest.raises(ConfigError, match="eval.metric"):
        cli.main(["--debug", "plan", cfg])
    env = dict(os.environ, PYTHONPATH=str(ROOT), LANGTUNE_DEBUG="1")
    proc = subprocess.run(
        [sys.executable, "-m", "langtune_jax.cli", "train", cfg],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_corrupt_newest_checkpoint_falls_back_quietly(tmp_path, caplog):
    """The fallback to the previous checkpoint says so once; Orbax/absl log nothing."""
    import logging

    import jax.numpy as jnp

    from langtune_jax.train.checkpoint import Checkpointer

    state = {"a": jnp.ones(3)}
    ckpt = Checkpointer(tmp_path)
    for step in (1, 2):
        ckpt.save(step, state, {"step": step})
    ckpt.close()
    for p in (tmp_path / "2").rglob("*"):
        if p.is_file():
            p.write_bytes(b"garbage")
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        ckpt = Checkpointer(tmp_path)
        assert ckpt.restore_latest(state)[0] == 1
        ckpt.close()
    noisy = [r for r in caplog.records if r.name.split(".")[0] in ("absl", "orbax")]
    ours = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert not noisy and len(ours) == 1


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, micro_model, capsys, monkeypatch):
    """SIGINT between steps: a checkpoint is saved, exit 0 as for SIGTERM, a line says how to
    resume."""
    from langtune_jax import cli
    from langtune_jax.train import logging_utils

    w = World(tmp_path, micro_model)
    original = logging_utils.MetricsLogger.log

    def log_then_interrupt(self, step, kind, record):
        original(self, step, kind, record)
        if step == 1 and kind == "train":
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(logging_utils.MetricsLogger, "log", log_then_interrupt)
    capsys.readouterr()
    before = signal.getsignal(signal.SIGINT)  # an xdist worker starts with SIG_IGN
    assert cli.main(_train(w, {"train.steps": 50})) == 0
    out = capsys.readouterr()
    assert "stopped by SIGINT: saved step 1" in out.out + out.err
    assert "rerun the same command to resume" in out.out + out.err
    assert (w.run_dir / "checkpoints" / "1").is_dir()
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is restored


# ----------------------------------------------------------------------------- docs/errors.md


def errors_doc() -> str:
    """docs/errors.md: the catalogue, one table per section, with the message each case gives
    (the messages are the strings the tests require in the error line)."""
    out = [
        "# What langtune says when something is wrong",
        "",
        "Generated from `tests/test_bad_inputs.py` (`python tests/test_bad_inputs.py > "
        "docs/errors.md`); do not edit by hand. Every case below ends `langtune` with exit "
        "status 2 and one line on stderr, before the first training step unless the section "
        "says otherwise, and changes no file that existed before the command. The last column "
        "lists what the line is tested to contain. `--debug` (or `LANGTUNE_DEBUG=1`) shows the "
        "traceback instead.",
        "",
    ]
    titles = {
        "config": "Config file, keys and `--set`",
        "metrics": "Metric names (checked against the task's report)",
        "preflight": "Against the model and the device mesh",
        "eval splits": "Evaluation splits (read and checked before step 0)",
        "data": "Data files and rows",
        "model": "The model folder",
        "runs": "Run folders and the other commands",
        "training": "Faults during training (the last good checkpoint stays intact)",
    }
    for section, title in titles.items():
        out += [
            f"## {title}",
            "",
            "| case | mistake | the error line contains |",
            "| --- | --- | --- |",
        ]
        for c in CASES:
            if c.section == section:
                said = "; ".join(f"`{e}`" for e in c.expect).replace("|", "\\|")
                out.append(f"| `{c.name}` | {c.mistake} | {said} |")
        out.append("")
    out.append(f"{len(CASES)} cases.")
    return "\n".join(out) + "\n"


def test_errors_doc_is_current():
    assert (ROOT / "docs" / "errors.md").read_text(encoding="utf-8") == errors_doc()


if __name__ == "__main__":
    sys.stdout.write(errors_doc())
