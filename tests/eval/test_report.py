"""report.json round trip and schema, markdown tables, PNG plots, and the comparison of runs."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from langtune_jax.eval import (
    SCHEMA_VERSION,
    compare_runs,
    load_report,
    markdown_table,
    per_language_report,
    plot_comparison,
    plot_weight_segments,
    write_report,
)

LANGS = ["en", "de", "sw"]
SCHEMA_KEYS = {
    "schema_version", "task", "primary_metric", "metrics", "higher_is_better", "languages",
    "empty_languages", "zero_shot", "source_language", "label_names", "per_language", "overall", "gaps",
    "run_name", "config_hash", "step", "plan", "history", "files",
}  # fmt: skip


def make_report(accuracy_by_lang, n=20, source_language=None):
    """A classification report whose per-language accuracy is exactly the given fraction."""
    y, p, lang = [], [], []
    for name, a in accuracy_by_lang.items():
        right = round(a * n)
        y += [i % 3 for i in range(n)]
        p += [i % 3 if i < right else (i + 1) % 3 for i in range(n)]
        lang += [name] * n
    return per_language_report(
        np.array(p), np.array(y), lang, "sequence-classification",
        label_names=["neg", "neu", "pos"], source_language=source_language,
    )  # fmt: skip


def _plan():
    # The layout of SamplingPlan.to_dict() (plan.json).
    return {
        "strategy": "temperature",
        "unit": "examples",
        "languages": [
            {"language": "en", "examples": 700, "share": 0.7, "probability": 0.45},
            {"language": "de", "examples": 200, "share": 0.2, "probability": 0.30},
            {"language": "sw", "examples": 100, "share": 0.1, "probability": 0.25},
        ],
    }


def _check_png(path):
    assert path.is_file() and path.stat().st_size > 2000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
        im.verify()


def test_write_report_round_trip_and_plots(tmp_path):
    report = make_report({"en": 0.9, "de": 0.7, "sw": 0.4}, source_language="en")
    history = [
        {"step": s, "per_language": {"en": 0.5 + s / 400, "de": 0.4 + s / 500, "sw": 0.3}}
        for s in (0, 50, 100)
    ]
    paths = write_report(
        tmp_path / "eval", report, config_hash="abc123", step=100, plan=_plan(), history=history
    )
    assert set(paths) == {"report", "table", "bars", "sampling", "curves"}
    data = json.loads(paths["report"].read_text())
    assert set(data) == SCHEMA_KEYS
    assert data["schema_version"] == SCHEMA_VERSION
    assert (data["config_hash"], data["step"]) == ("abc123", 100)
    assert data["plan"] == _plan() and data["history"] == history
    assert data["files"] == {k: p.name for k, p in paths.items() if k != "report"}
    # Everything that came in comes back (report.json is strict JSON: no NaN).
    for key in report:
        assert data[key] == report[key], key
    assert load_report(tmp_path) == data == load_report(tmp_path / "eval" / "report.json")
    assert data["per_language"]["sw"]["accuracy"] == pytest.approx(0.4)
    assert data["gaps"]["accuracy"]["gap"] == pytest.approx(0.5)
    assert data["gaps"]["accuracy"]["transfer_gap"] == pytest.approx(0.9 - (0.7 + 0.4) / 2)
    for key in ("bars", "sampling", "curves"):
        _check_png(paths[key])
    table = paths["table"].read_text()
    assert "| en (source) " in table and "| transfer gap " in table


def test_nan_is_written_as_null_and_old_schema_refused(tmp_path):
    report = per_language_report(
        np.array([0]), np.array([0]), ["en"], "sequence-classification",
        label_names=["a", "b"], zero_division=math.nan,
    )  # fmt: skip
    assert math.isnan(report["per_language"]["en"]["per_class_f1"]["b"])
    write_report(tmp_path, report, config_hash=None, step=None)
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["per_language"]["en"]["per_class_f1"]["b"] is None
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 0}))
    with pytest.raises(ValueError, match="schema_version 0"):
        load_report(tmp_path)


def test_markdown_table_content():
    table = markdown_table(make_report({"en": 0.9, "de": 0.75, "sw": 0.5}))
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "language"
    assert "accuracy (x100)" in lines[0] and "macro_f1 (x100)" in lines[0]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines[2:6]}
    acc_col = lines[0].split("|")[2:-1].index(" accuracy (x100) ")
    assert [rows[x][acc_col] for x in ("en", "de", "sw")] == ["90.0", "75.0", "50.0"]
    assert "| mean" in table and "| gap (max-min)" in table
    assert "best en" in table and "worst sw" in table


def test_markdown_table_names_a_language_without_data():
    """A language the split lacks (trained, expected) gets a row of '-' and a note: the mean,
    worst and gap leave it out, and the table says so."""
    report = make_report({"en": 0.9, "de": 0.75})
    report["empty_languages"] = ["uk"]
    table = markdown_table(report)
    (row,) = [ln for ln in table.splitlines() if ln.startswith("| uk")]
    assert [c.strip() for c in row.split("|")[1:-1]][:3] == ["uk (no data)", "0", "-"]
    assert "no data for uk (left out of the mean, worst and gap)" in table
    assert "no data" not in markdown_table(make_report({"en": 0.9, "de": 0.75}))


def test_an_eval_split_without_a_training_language_is_warned_about(caplog):
    from langtune_jax.data.pipeline import check_eval_languages

    with caplog.at_level("WARNING"):
        assert check_eval_languages("validation", ["en", "sw"], ["en", "uk", "sw"]) == []
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "split 'validation' has no rows of the training language(s) 'uk'" in warning
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert check_eval_languages("test", ["en", "qu"], ["en"]) == ["qu"]  # zero-shot: info
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def _fake_run(root, name, scores):
    """A run folder as training leaves it: a report per split in eval/<split>/."""
    write_report(root / name / "eval" / "test", make_report(scores), config_hash=name, step=10)
    other = {lang: 1.0 for lang in scores}  # validation differs: the test split must be read
    write_report(root / name / "eval" / "validation", make_report(other), config_hash=name, step=10)
    return root / name


def test_compare_runs_two_runs(tmp_path):
    natural = _fake_run(tmp_path, "natural", {"en": 0.9, "de": 0.8, "sw": 0.35})
    balanced = _fake_run(tmp_path, "balanced", {"en": 0.85, "de": 0.8, "sw": 0.6})
    table, data = compare_runs([natural, balanced], metric="accuracy")
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header == ["accuracy (x100)", "natural", "balanced", "delta"]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines[2:]}
    assert list(rows) == ["en", "de", "sw", "mean", "gap"]
    assert rows["en"] == ["90.0", "85.0", "-5.0"]
    assert rows["sw"] == ["35.0", "60.0", "+25.0"]
    assert rows["mean"] == ["68.3", "75.0", "+6.7"]
    assert rows["gap"] == ["55.0", "25.0", "-30.0"]
    assert data["runs"] == ["natural", "balanced"] and data["languages"] == LANGS
    assert data["gap"]["balanced"] == pytest.approx(0.25)
    assert data["delta"]["balanced"]["gap"] == pytest.approx(-0.30)
    _check_png(plot_comparison(data, tmp_path / "compare.png"))
    # Default metric: the primary one (macro_f1 for classification).
    assert compare_runs([natural, balanced])[1]["metric"] == "macro_f1"
    # Another split on request; the reports' run_name wins over folder names.
    _, data = compare_runs([natural, balanced], metric="accuracy", split="validation")
    assert data["values"]["natural"] == {"en": 1.0, "de": 1.0, "sw": 1.0}
    write_report(tmp_path / "x" / "eval", make_report({"en": 0.5}), config_hash=None, step=1,
                 run_name="first")  # fmt: skip
    write_report(
        tmp_path / "y", make_report({"en": 0.7}), config_hash=None, step=1, run_name="second"
    )
    _, data = compare_runs([tmp_path / "x", tmp_path / "y" / "report.json"], metric="accuracy")
    assert data["runs"] == ["first", "second"]
    assert data["delta"]["second"]["en"] == pytest.approx(0.2)


def test_compare_runs_three_runs_and_missing_language(tmp_path):
    a = _fake_run(tmp_path, "a", {"en": 0.9, "de": 0.5})
    b = _fake_run(tmp_path, "b", {"en": 0.8, "de": 0.6, "sw": 0.4})
    c = _fake_run(tmp_path, "c", {"en": 0.7, "de": 0.7, "sw": 0.7})
    table, data = compare_runs(
        [a, b / "eval", c / "eval" / "test" / "report.json"], metric="accuracy"
    )
    header = [x.strip() for x in table.splitlines()[0].split("|")[1:-1]]
    assert header[1:] == ["a", "b", "c", "delta b", "delta c"]
    assert data["values"]["a"]["sw"] is None and data["delta"]["c"]["sw"] is None
    assert data["delta"]["c"]["de"] == pytest.approx(0.2)
    assert "| sw " in table and " - " in table  # the missing score shows as '-'
    _check_png(plot_comparison(data, tmp_path / "three.png"))


def test_compare_runs_errors(tmp_path):
    run = _fake_run(tmp_path, "run", {"en": 0.9})
    with pytest.raises(FileNotFoundError, match="langtune eval"):
        compare_runs([run, tmp_path / "nope"])
    with pytest.raises(ValueError, match="no metric 'perplexity'"):
        compare_runs([run], metric="perplexity")
    write_report(run / "eval" / "dev", make_report({"en": 0.1}), config_hash=None, step=1)
    (run / "eval" / "test" / "report.json").unlink()
    with pytest.raises(FileNotFoundError, match="several splits"):
        compare_runs([run])


def test_flat_plan_layout(tmp_path):
    from langtune_jax.eval import plot_sampling_vs_data

    plan = {
        "en": {"data_share": 0.8, "probability": 0.5},
        "sw": {"data_share": 0.2, "probability": 0.5},
    }
    _check_png(plot_sampling_vs_data(plan, tmp_path / "plan.png"))
    with pytest.raises(ValueError, match="data_share"):
        plot_sampling_vs_data({"en": {"probability": 1.0}}, tmp_path / "bad.png")


def test_import_is_light():
    code = "import sys, langtune_jax.eval; print('matplotlib' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_history_entries_from_reports_and_zero_scores(tmp_path):
    from langtune_jax.eval import history_entry

    reports = [make_report({"en": a, "sw": 0.0}) for a in (0.3, 0.6)]
    history = [history_entry(r, step) for r, step in zip(reports, (10, 20))]
    assert history[1] == {
        "step": 20,
        "per_language": {
            "en": {m: reports[1]["per_language"]["en"][m] for m in ("macro_f1", "accuracy")},
            "sw": {"macro_f1": 0.0, "accuracy": 0.0},
        },
    }
    paths = write_report(
        tmp_path, reports[1], config_hash="h", step=20, history=history, metric="accuracy"
    )
    _check_png(paths["curves"])
    table = paths["table"].read_text()
    assert table.splitlines()[0].split("|")[3].strip() == "accuracy (x100)"
    assert "metric_by_language" not in table and ": accuracy best en 60.0" in table
    with pytest.raises(ValueError, match="'perplexity' is not in"):
        write_report(tmp_path, reports[1], config_hash=None, step=1, metric="perplexity")
    _check_png(paths["bars"])  # a 0.0 score is drawn as a zero bar labelled 0.0
    assert load_report(tmp_path)["history"] == history


def test_compare_runs_reads_and_plots_weight_segments(tmp_path):
    static = _fake_run(tmp_path, "static", {"en": 0.9, "de": 0.8, "sw": 0.35})
    dynamic = _fake_run(tmp_path, "dynamic", {"en": 0.85, "de": 0.8, "sw": 0.6})
    segments = [
        {"start_step": 0, "weights": {"en": 0.5, "de": 0.3, "sw": 0.2}},
        {"start_step": 40, "weights": {"en": 0.4, "de": 0.3, "sw": 0.3}},
    ]
    plan = {"weight_segments": segments, "dynamic": {"steps": 100}}
    (dynamic / "plan.json").write_text(json.dumps(plan))
    (static / "plan.json").write_text(json.dumps({"strategy": "natural"}))
    _, data = compare_runs([static, dynamic])
    assert data["weights"] == {"dynamic": {"weight_segments": segments, "steps": 100}}
    _check_png(plot_weight_segments(data["weights"], tmp_path / "weights.png"))
