"""Zero-shot evaluation end to end: an evaluation language absent from train is evaluated (through
the fallback adapter, or the shared one), marked in the report, and the transfer gap is reported;
a zero-shot language no adapter serves is refused before step 0."""

import json
from pathlib import Path

import pytest

from langtune_jax.config import RunConfig, from_dict
from langtune_jax.data import DataError
from langtune_jax.eval import compare_runs
from langtune_jax.train import train


def _config(assets: Path, name: str, peft: dict, **eval_cfg) -> RunConfig:
    data = assets / "data"
    return from_dict(
        RunConfig,
        {
            "run": {"name": name, "seed": 0},
            "model": {"name_or_path": str(assets / "model")},
            "peft": peft,
            "data": {
                "sources": [
                    # Train on en and es only; validation has sw too.
                    {"path": str(data / "train" / "en.jsonl"), "splits": ["train"]},
                    {"path": str(data / "train" / "es.jsonl"), "splits": ["train"]},
                    {"path": str(data / "{split}"), "splits": ["validation"]},
                ],
                "max_length": 16,
            },
            "sampling": {"strategy": "uniform"},
            "train": {"steps": 4, "batch_size": 8, "learning_rate": 1e-2, "log_every": 2},
            "eval": {"split": "validation", "final_splits": [], "batch_size": 16, **eval_cfg},
            "mesh": {"data": -1},
        },
    )


_LORA = {"method": "lora", "lora": {"r": 4, "lora_alpha": 8, "task_type": "SEQ_CLS"}}
_PER_LANGUAGE = {
    "method": "adapters",
    "adapters": {"adapter_size": 4, "languages": ["en", "es"], "fallback": {"sw": "es"}},
}


def make_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval/validation/report.json").read_text())


@pytest.mark.parametrize(
    "peft",
    [pytest.param(_LORA, marks=pytest.mark.slow), _PER_LANGUAGE],
    ids=["shared-lora", "fallback"],
)
def test_zero_shot_language_is_evaluated_and_marked(assets, tmp_path, peft):
    run = train(_config(assets, "zs", peft), run_dir=tmp_path / "zs")
    report = make_report(run)
    assert report["zero_shot"] == ["sw"]
    assert set(report["per_language"]) == {"en", "es", "sw"}
    assert report["empty_languages"] == []
    acc = {lang: r["accuracy"] for lang, r in report["per_language"].items()}
    g = report["gaps"]["accuracy"]
    # No source language: the source score is the mean of the seen languages (en, es).
    seen = (acc["en"] + acc["es"]) / 2
    assert g["seen_mean"] == pytest.approx(seen)
    assert g["zero_shot_mean"] == pytest.approx(acc["sw"])
    assert g["transfer_gap"] == pytest.approx(seen - acc["sw"])
    assert g["transfer_gaps"] == {"sw": pytest.approx(seen - acc["sw"])}
    assert g["gap"] == pytest.approx(max(acc.values()) - min(acc.values()))
    # Both kinds of adapter folder carry the class names (labels.json), in label-id order.
    from langtune_jax.peft import read_labels

    assert read_labels(run / "adapter") == report["label_names"]


@pytest.mark.slow  # heavy (>15 s on 2 cores): make test-slow, run by CI after make test
def test_source_language_and_compare_groups(assets, tmp_path):
    a = train(_config(assets, "a", _LORA, source_language="en"), run_dir=tmp_path / "a")
    b = train(_config(assets, "b", _PER_LANGUAGE, source_language="en"), run_dir=tmp_path / "b")
    report = make_report(a)
    acc = {lang: r["accuracy"] for lang, r in report["per_language"].items()}
    assert report["source_language"] == "en"
    assert report["gaps"]["accuracy"]["transfer_gap"] == pytest.approx(acc["en"] - acc["sw"])
    table, data = compare_runs([a, b], metric="accuracy", split="validation")
    assert data["languages"] == ["en", "es", "sw"] and data["zero_shot"] == ["sw"]
    assert data["transfer_gap"]["a"] == pytest.approx(acc["en"] - acc["sw"])
    for row in ("sw (zero-shot)", "seen mean", "zero-shot mean", "transfer gap"):
        assert f"| {row} " in table


def test_zero_shot_language_without_any_adapter_is_refused_before_step_0(assets, tmp_path):
    peft = {
        "method": "adapters",
        "adapters": {"adapter_size": 4, "languages": ["en", "es"], "shared_task_adapter": False},
    }
    with pytest.raises(DataError, match=r"'sw' are not in train and have no adapter.*fallback"):
        train(_config(assets, "bad", peft), run_dir=tmp_path / "bad")
    assert not (tmp_path / "bad" / "checkpoints").exists()
