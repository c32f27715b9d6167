"""``langtune export`` and ``langtune compare`` through the CLI: merged checkpoints that carry their
label names and predict like ``langtune eval`` in transformers (PyTorch), PEFT folders with labels,
checkpoint choice (``--step`` / ``--best``), refusals, and comparisons over common languages."""

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from langtune_jax import cli
from langtune_jax.config import dump_config
from langtune_jax.eval import write_report
from tests.eval.test_report import make_report
from tests.train.conftest import LANGS, tiny_run_config


def _langtune(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):
    """A finished LoRA run (default task head) with checkpoints at steps 3 and 6."""
    root = tmp_path_factory.mktemp("export")
    cfg = tiny_run_config(assets, name="exp", mesh={"data": -1}, steps=6, checkpoint_every=3)
    cfg.peft.lora.task_type = None
    path = root / "cfg.yaml"
    dump_config(cfg, path)
    assert cli.main(["train", str(path), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def _world_readable(folder: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IROTH for p in folder.rglob("*") if p.is_file())


def test_merged_export_has_labels_and_predicts_like_langtune_eval(
    assets, trained, tmp_path, capsys
):
    import torch
    import transformers

    assert _langtune(capsys, "eval", trained, "--split", "validation")[0] == 0
    report = json.loads((trained / "eval/validation/report.json").read_text())
    out = tmp_path / "merged"
    assert _langtune(capsys, "export", trained, "--format", "merged", "--out", out)[0] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert config["label2id"] == {"neg": 0, "pos": 1}
    assert _world_readable(out)

    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    for lang in LANGS:
        rows = [json.loads(x) for x in (assets / f"data/validation/{lang}.jsonl").open()]
        enc = tok([r["text"] for r in rows], truncation=True, max_length=16, padding=True,
                  return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            pred = model(**enc).logits.argmax(-1).numpy()
        gold = np.array([model.config.label2id[r["label"]] for r in rows])
        assert float(np.mean(pred == gold)) == pytest.approx(
            report["per_language"][lang]["accuracy"], abs=1e-9
        ), lang


def test_peft_export_carries_labels_and_absolute_base_path(assets, trained, tmp_path, capsys):
    from langtune_jax.models import from_pretrained
    from langtune_jax.peft import import_peft

    out = tmp_path / "peft"
    assert _langtune(capsys, "export", trained, "--format", "peft", "--out", out)[0] == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((assets / "model").resolve())
    assert json.loads((out / "labels.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert _world_readable(out) and _world_readable(trained / "adapter")
    model = from_pretrained(assets / "model", task="sequence-classification", num_labels=2)
    import_peft(model, out)
    assert model.label_names == ("neg", "pos")


@pytest.mark.slow
def test_export_step_and_best(trained, tmp_path, capsys):
    from safetensors.numpy import load_file

    for name, flags in (("latest", []), ("step3", ["--step", "3"]), ("step6", ["--step", "6"])):
        argv = ["export", trained, "--format", "peft", "--out", tmp_path / name, *flags]
        assert _langtune(capsys, *argv)[0] == 0
    latest, s3, s6 = (load_file(str(tmp_path / n / "adapter_model.safetensors"))
                      for n in ("latest", "step3", "step6"))  # fmt: skip
    assert all(np.array_equal(latest[k], s6[k]) for k in latest)
    assert not all(np.array_equal(s3[k], s6[k]) for k in s3)

    rc, _, err = _langtune(capsys, "export", trained, "--out", tmp_path / "x", "--step", "4")
    assert rc == 2 and "saved steps: [3, 6]" in err
    rc, _, err = _langtune(capsys, "export", trained, "--out", tmp_path / "x", "--best")
    assert rc == 2 and "train.best_metric" in err


@pytest.mark.slow
def test_best_checkpoint_is_exported(assets, tmp_path, capsys):
    from safetensors.numpy import load_file

    cfg = tiny_run_config(assets, name="best", mesh={"data": -1}, steps=6, checkpoint_every=2,
                          eval_every=2, keep_checkpoints=1, best_metric="accuracy")  # fmt: skip
    path, run = tmp_path / "cfg.yaml", tmp_path / "run"
    dump_config(cfg, path)
    assert _langtune(capsys, "train", path, "--run-dir", run)[0] == 0
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [
        (r["accuracy"], r["step"]) for r in evals if r["kind"] == "eval" and not r.get("final")
    ]
    best = max(scored)[1]  # ties: the later step
    rc, _, err = _langtune(capsys, "export", run, "--out", tmp_path / "b", "--best")
    assert rc == 0, err
    assert _langtune(capsys, "export", run, "--out", tmp_path / "s", "--step", best)[0] == 0
    a, b = (load_file(str(tmp_path / n / "adapter_model.safetensors")) for n in ("b", "s"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_merged_export_of_bottleneck_adapters_is_refused(assets, tmp_path, capsys):
    cfg = tiny_run_config(assets, name="ad", mesh={"data": -1}, steps=2)
    cfg.peft.method = "adapters"
    (tmp_path / "run").mkdir()
    dump_config(cfg, tmp_path / "run" / "config.yaml")
    rc, _, err = _langtune(capsys, "export", tmp_path / "run", "--format", "merged", "--out",
                           tmp_path / "m")  # fmt: skip
    assert rc == 2 and err.count("\n") == 1
    assert "bottleneck adapters" in err and str(tmp_path / "run" / "adapter") in err
    assert not (tmp_path / "m").exists()


def test_compare_over_different_language_sets_uses_common_languages(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_report(a / "eval" / "test", make_report({"en": 0.9, "de": 0.5}), config_hash=None, step=1)
    write_report(b / "eval" / "test", make_report({"en": 0.8, "de": 0.6, "sw": 0.1}),
                 config_hash=None, step=1)  # fmt: skip
    rc, out, _ = _langtune(capsys, "compare", a, b, "--metric", "accuracy")
    assert rc == 0
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in out.splitlines() if ln.startswith("|")}  # fmt: skip
    assert rows["mean"] == ["70.0", "70.0", "+0.0"]  # over en and de only
    assert rows["gap"] == ["40.0", "20.0", "-20.0"]
    assert "over the 2 they all have (en, de)" in out and "not in every run: sw" in out


def test_compare_out_writes_the_table_and_the_plot(tmp_path, capsys):
    from langtune_jax.train.runs import compare_run_folders

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "cmp"
    write_report(a / "eval" / "test", make_report({"en": 0.9, "de": 0.5}), config_hash=None, step=1)
    write_report(b / "eval" / "test", make_report({"en": 0.8, "de": 0.6}), config_hash=None, step=1)
    rc, printed, _ = _langtune(capsys, "compare", a, b, "--metric", "accuracy", "--out", out)
    assert rc == 0
    table = (out / "comparison.md").read_text()
    assert table.strip() in printed and (out / "comparison.png").stat().st_size > 0
    assert f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}" in printed
    assert not (out / "weights.png").exists()  # no run with dynamic weights
    # The library call behind the command returns the same table.
    assert compare_run_folders([a, b], metric="accuracy").strip() == table.strip()


@pytest.mark.slow  # trains its own run (~1 min on 2 cores): make test-slow, run by CI
def test_adapterhub_export_of_an_adapter_run_carries_labels_and_reloads_exactly(
    assets, tmp_path, capsys
):
    from langtune_jax.models import from_pretrained
    from langtune_jax.peft.adapters import import_adapterhub
    from langtune_jax.train.runs import load_run

    cfg = tiny_run_config(assets, name="hub.run", mesh={"data": -1}, steps=3)
    cfg.peft.method = "adapters"
    path = tmp_path / "cfg.yaml"
    dump_config(cfg, path)
    assert cli.main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    rc, out, _ = _langtune(capsys, "export", tmp_path / "run", "--format", "adapterhub", "--out",
                           tmp_path / "hub")  # fmt: skip
    assert rc == 0 and "adapterhub" in out
    meta = json.loads((tmp_path / "hub" / "adapter_config.json").read_text())
    assert meta["name"] == "hub_run"  # the run name, made a valid adapter name
    _, session = load_run(tmp_path / "run")
    head = json.loads((tmp_path / "hub" / "head_config.json").read_text())
    assert list(head["label2id"]) == session.label_names == ["neg", "pos"]
    assert head["num_labels"] == 2
    fresh = from_pretrained(
        assets / "model", "sequence-classification", num_labels=len(head["label2id"])
    )
    reloaded = import_adapterhub(fresh, tmp_path / "hub")
    trained_model = session.split.merge()
    ids = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    for m in (reloaded, trained_model):
        m.eval()
    want = trained_model(ids, attention_mask=mask).logits
    np.testing.assert_allclose(reloaded(ids, attention_mask=mask).logits, want, atol=1e-6)
    assert _world_readable(tmp_path / "hub")


def test_adapterhub_export_of_a_lora_run_is_refused(trained, tmp_path, capsys):
    rc, _, err = _langtune(capsys, "export", trained, "--format", "adapterhub", "--out",
                           tmp_path / "hub")  # fmt: skip
    assert rc == 2 and err.count("\n") == 1
    assert "peft.method=lora" in err and "--format peft" in err
    assert not (tmp_path / "hub").exists()


def test_eval_data_scores_another_file_like_the_same_rows_in_a_split(trained, tmp_path, capsys):
    """``langtune eval --data FILE``: the run's validation rows written as one CSV score exactly
    as the validation split does, per language; ``--language`` names a file's one language;
    the run's own split names are refused (their reports would be overwritten); the file is
    not cached in the run folder."""
    import csv

    import yaml

    assert _langtune(capsys, "eval", trained, "--split", "validation")[0] == 0
    want = json.loads((trained / "eval/validation/report.json").read_text())["per_language"]
    saved = yaml.safe_load((trained / "config.yaml").read_text())  # the run's data folder
    folder = Path(saved["data"]["sources"][0]["path"]).parent
    rows = [json.loads(x) for lang in LANGS for x in (folder / f"validation/{lang}.jsonl").open()]
    other = tmp_path / "other.csv"
    with other.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "language"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("text", "label", "language")} for r in rows)
    rc, out, err = _langtune(capsys, "eval", trained, "--data", other)
    assert rc == 0, err
    got = json.loads((trained / "eval/other/report.json").read_text())["per_language"]
    for lang in LANGS:
        assert got[lang] == want[lang], lang
    first = next(iter(LANGS))
    one = tmp_path / "one_language.csv"
    with one.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(
            {"text": r["text"], "label": r["label"]} for r in rows if r["language"] == first
        )
    rc, _, err = _langtune(capsys, "eval", trained, "--data", one)
    assert rc == 2 and "--language" in err and "'language'" in err
    rc, _, err = _langtune(
        capsys, "eval", trained, "--data", one, "--language", first, "--split", "one"
    )
    assert rc == 0, err
    got = json.loads((trained / "eval/one/report.json").read_text())["per_language"]
    assert got[first]["accuracy"] == want[first]["accuracy"]
    rc, _, err = _langtune(capsys, "eval", trained, "--data", other, "--split", "validation")
    assert rc == 2 and "eval/validation/" in err and "another --split" in err
    assert (
        _langtune(capsys, "eval", trained, "--data", tmp_path / "nope.csv")[2].count("no file") == 1
    )
    assert not list((trained / "data_cache").rglob("other*")) and not list(
        (trained / "data_cache").rglob("one*")
    )


def test_predict_on_unlabelled_rows_gives_eval_predictions(trained, tmp_path, capsys):
    """``langtune predict``: the validation rows without their labels get the predictions and
    scores that ``langtune eval`` wrote for them (predictions.jsonl); an existing --out is
    refused without --overwrite; a causal-LM run is refused before its model loads."""
    import yaml

    assert _langtune(capsys, "eval", trained, "--split", "validation")[0] == 0
    lines = (trained / "eval/validation/predictions.jsonl").read_text().splitlines()
    evaluated = [json.loads(line) for line in lines]
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    folder = Path(saved["data"]["sources"][0]["path"]).parent
    rows = [json.loads(x) for lang in LANGS for x in (folder / f"validation/{lang}.jsonl").open()]
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"text": r["text"], "language": r["language"]}) + "\n"
                           for r in rows))  # fmt: skip
    rc, out, err = _langtune(capsys, "predict", trained, "--data", new)
    assert rc == 0, err
    path = trained / "predictions" / "new.jsonl"
    assert f"wrote {len(rows)} predictions" in out and str(path) in out
    got = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(got) == len(evaluated) == len(rows)
    for g, e in zip(got, evaluated):
        assert "label" not in g and "correct" not in g
        assert (g["language"], g["index"], g["text"], g["prediction"]) == (
            e["language"], e["index"], e["text"], e["prediction"]
        )  # fmt: skip
        assert g["score"] == pytest.approx(e["score"], abs=1e-4) and 0.5 <= g["score"] <= 1
    rc, _, err = _langtune(capsys, "predict", trained, "--data", new)
    assert rc == 2 and "--overwrite" in err and err.count("\n") == 1
    assert _langtune(capsys, "predict", trained, "--data", new, "--overwrite")[0] == 0
    custom = tmp_path / "out" / "p.jsonl"
    assert _langtune(capsys, "predict", trained, "--data", new, "--out", custom)[0] == 0
    assert custom.read_text() == path.read_text()

    causal = tmp_path / "causal_run"
    causal.mkdir()
    saved["model"]["task"] = "causal-lm"
    (causal / "config.yaml").write_text(yaml.safe_dump(saved))
    rc, _, err = _langtune(capsys, "predict", causal, "--data", new)
    assert rc == 2 and "classification run" in err and "langtune generate" in err


def test_packed_eval_predictions_are_the_unpacked_ones(trained):
    """Packing reorders examples across rows (worst fit); predictions.jsonl must not: the same
    run's validation predictions with eval packing on equal those without it."""
    import dataclasses

    from langtune_jax import eval as eval_lib
    from langtune_jax.train.runs import load_run
    from langtune_jax.train.scoring import evaluate

    _, session = load_run(trained)
    dataset = session.dataset

    def rows():
        log = eval_lib.prediction_log("sequence-classification", session.label_names)
        result = evaluate(session, "validation", predictions=log)
        return result, eval_lib.split_rows(log, dataset, "validation", session.tokenizer)

    plain_result, plain = rows()
    dataset.data_cfg = dataclasses.replace(dataset.data_cfg, packing=True)
    assert "segment_example" in next(iter(dataset.eval_batches("validation", batch_size=16)))
    packed_result, packed = rows()
    assert packed_result["per_language"] == plain_result["per_language"]
    assert [(r["language"], r["index"], r["text"]) for r in packed] == [
        (r["language"], r["index"], r["text"]) for r in plain
    ]
    for p, u in zip(packed, plain):
        assert p["score"] == pytest.approx(u["score"], abs=1e-4)
        if abs(u["score"] - 0.5) > 1e-3:
            assert p["prediction"] == u["prediction"]
