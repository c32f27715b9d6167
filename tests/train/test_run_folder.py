"""The run folder is the run's alone, through the ``langtune`` CLI: fingerprint refusals and
``--restart``, ``train.steps`` changes and ``--extend``, foreign folders, the lock, history kept
across kill -9 and reruns, and the classification head that trains by default."""

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from langtune_jax import cli
from langtune_jax.config import dump_config
from langtune_jax.train import train
from langtune_jax.train.runs import load_run
from langtune_jax.train.session import build_session
from tests.train.conftest import tiny_run_config, wait_for_checkpoint

MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def _config(assets: Path, data: Path | None = None, **train):
    cfg = tiny_run_config(assets, name="rf", mesh=MESH, **{"steps": 4, "checkpoint_every": 2,
                                                           **train})  # fmt: skip
    if data is not None:
        cfg.data.sources[0].path = str(data / "{split}")
    return cfg


def _langtune(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _copy_data(assets: Path, tmp_path: Path) -> Path:
    shutil.copytree(assets / "data", tmp_path / "data")
    return tmp_path / "data"


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ fingerprint, --restart


@pytest.mark.slow
def test_rerun_after_a_label_change_is_refused_and_restart_keeps_the_old_run(
    assets, tmp_path, capsys
):
    data = _copy_data(assets, tmp_path)
    path, run = tmp_path / "cfg.yaml", tmp_path / "run"
    dump_config(_config(assets, data), path)
    assert _langtune(capsys, "train", path, "--run-dir", run)[0] == 0
    before = {name: _digest(run / name) for name in ("checkpoints", "adapter")}
    assert json.loads((run / "run.json").read_text())["fingerprint"]["labels"]["count"] == 2

    # The data gains a label: the head's shape changes, no checkpoint can resume this run.
    with open(data / "train" / "en.jsonl", "a") as f:
        f.write(json.dumps({"text": "good bad", "label": "mixed", "language": "en"}) + "\n")
    rc, err = _langtune(capsys, "train", path, "--run-dir", run)
    assert rc == 2
    line = err.strip()
    assert "\n" not in line
    assert "labels ['neg', 'pos'] → ['mixed', 'neg', 'pos']" in line
    assert "--restart" in line and "restore" in line
    assert {name: _digest(run / name) for name in ("checkpoints", "adapter")} == before

    assert _langtune(capsys, "train", path, "--run-dir", run, "--restart")[0] == 0
    (old,) = tmp_path.glob("run.old-*")
    assert {name: _digest(old / name) for name in ("checkpoints", "adapter")} == before
    assert json.loads((run / "run.json").read_text())["labels"] == ["mixed", "neg", "pos"]


@pytest.mark.slow
def test_all_checkpoints_unreadable_is_refused(assets, tmp_path, capsys):
    path, run = tmp_path / "cfg.yaml", tmp_path / "run"
    dump_config(_config(assets), path)
    assert _langtune(capsys, "train", path, "--run-dir", run)[0] == 0
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file() and "state" in f.parts:
            f.write_bytes(b"garbage")
    before = _digest(run)
    rc, err = _langtune(capsys, "train", path, "--run-dir", run)
    assert rc == 2
    assert "none of the checkpoints" in err and "--restart" in err
    assert _digest(run) == before


# ------------------------------------------------------------------ train.steps, --extend


@pytest.mark.slow
def test_changed_steps_is_refused_unless_extend(assets, tmp_path, capsys, caplog):
    path, run = tmp_path / "cfg.yaml", tmp_path / "run"
    dump_config(_config(assets), path)
    assert _langtune(capsys, "train", path, "--run-dir", run)[0] == 0
    plan_before = json.loads((run / "plan.json").read_text())
    before = _digest(run / "checkpoints")

    rc, err = _langtune(capsys, "train", path, "--run-dir", run, "--set", "train.steps=8")
    assert rc == 2
    assert "train.steps=4" in err and "train.steps=8" in err and "--extend" in err
    assert _digest(run / "checkpoints") == before

    extend = ("train", path, "--run-dir", run, "--set", "train.steps=8", "--extend")
    assert _langtune(capsys, *extend)[0] == 0
    assert (run / "checkpoints" / "8").is_dir()
    plan = json.loads((run / "plan.json").read_text())
    first, second = plan["segments"]
    assert first == {"start_step": 0, "steps": 4, "plan": plan_before}
    assert (second["start_step"], second["steps"]) == (4, 8)
    assert json.loads((run / "run.json").read_text())["segments"] == [
        {"start_step": 0, "steps": 4},
        {"start_step": 4, "steps": 8},
    ]
    train_steps = [r["step"] for r in _records(run) if r["kind"] == "train"]
    assert train_steps == [2, 4, 6, 8]
    # Rerunning the finished run says so: nothing to train, the final reports run again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="langtune_jax"):
        assert _langtune(capsys, *extend)[0] == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "already trained to step 8 of 8: nothing to train" in said
    # The heads come from the run's checkpoint: no "newly initialised" note from the loader.
    assert "newly initialised" not in said
    assert [r["step"] for r in _records(run) if r["kind"] == "train"] == [2, 4, 6, 8]
    # The second segment's linear decay starts again at the peak: lr(6) = 1e-2 * (1 - 2/4).
    lr6 = next(r["learning_rate"] for r in _records(run) if r["step"] == 6)
    assert lr6 == pytest.approx(5e-3)


# ------------------------------------------------------------------ ownership and lock


def test_a_folder_with_foreign_files_is_refused(assets, tmp_path, capsys):
    path, mine = tmp_path / "cfg.yaml", tmp_path / "mine"
    dump_config(_config(assets), path)
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own\n")
    (mine / "metrics.jsonl").write_text('{"mine": 1}\n')
    rc, err = _langtune(capsys, "train", path, "--run-dir", mine)
    assert rc == 2 and "not a langtune run" in err
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "metrics.jsonl"]
    assert (mine / "config.yaml").read_text() == "my: own\n"


@pytest.mark.slow
def test_stale_lock_of_a_dead_process_is_taken_over(assets, tmp_path, capsys, caplog):
    path, run = tmp_path / "cfg.yaml", tmp_path / "run"
    dump_config(_config(assets, steps=2), path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.mkdir()
    lock = {"pid": dead.pid, "host": os.uname().nodename, "since": "earlier"}
    (run / "train.lock").write_text(json.dumps(lock))
    (run / "run.json").write_text("{}")  # a run killed before its first checkpoint
    with caplog.at_level(logging.WARNING, logger="langtune_jax"):
        assert _langtune(capsys, "train", path, "--run-dir", run)[0] == 0
    assert any("stale lock" in r.message and str(dead.pid) in r.message for r in caplog.records)
    assert not (run / "train.lock").exists()


def _cli_process(path: Path, run: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "langtune_jax.cli", "train", str(path), "--run-dir", str(run)]
    return subprocess.Popen(
        cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow  # heavy (>15 s on 2 cores): make test-slow, run by CI after make test
def test_lock_and_history_after_kill_9_equal_an_unbroken_run(assets, tmp_path, capsys):
    cfg = _config(assets, steps=12, checkpoint_every=2, log_every=2, eval_every=3)
    unbroken = train(cfg, run_dir=tmp_path / "unbroken")
    path, run = tmp_path / "cfg.yaml", tmp_path / "killed"
    dump_config(cfg, path)

    proc = _cli_process(path, run)
    wait_for_checkpoint(run / "checkpoints", 4, proc)
    # A second `langtune train` on the folder stops at once, naming the holder.
    rc, err = _langtune(capsys, "train", path, "--run-dir", run)
    assert rc == 2 and "in use" in err and str(proc.pid) in err
    wait_for_checkpoint(run / "checkpoints", 6, proc)  # eval at 6 done; the next is at 9
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _langtune(capsys, "train", path, "--run-dir", run)[0] == 0

    def history(run_dir):
        return json.loads((run_dir / "eval/validation/report.json").read_text())["history"]

    def log(run_dir):
        return [(r["step"], r["kind"], r.get("loss"), r.get("accuracy")) for r in _records(run_dir)]

    assert [h["step"] for h in history(run)] == [3, 6, 9, 12]  # the last: the final eval
    assert _approx_equal(history(run), history(unbroken))
    assert [x[:2] for x in log(run)] == [x[:2] for x in log(unbroken)]
    assert _approx_equal([x[2:] for x in log(run)], [x[2:] for x in log(unbroken)])
    assert (run / "eval/validation/eval_curves.png").stat().st_size > 0

    # Rerunning the finished run appends nothing twice and keeps the history.
    assert _langtune(capsys, "train", path, "--run-dir", run)[0] == 0
    assert [x[:2] for x in log(run)] == [x[:2] for x in log(unbroken)]
    assert _approx_equal(history(run), history(unbroken))


def _approx_equal(a, b, tol=1e-5) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_approx_equal(a[k], b[k], tol) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_approx_equal(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


# ------------------------------------------------------------------ honest defaults


def _params(split) -> dict[str, np.ndarray]:
    """Every trainable and frozen array of a split model, by dotted path."""
    from flax import nnx

    out = {}
    for state in (split.trainable, split.frozen):
        for path, var in nnx.to_flat_state(state):
            out[".".join(map(str, path))] = np.asarray(var.get_value())
    return out


def test_classification_head_and_fresh_pooler_train_by_default(assets, tmp_path, capsys):
    cfg = _config(assets, steps=4)
    cfg.peft.lora.task_type = None  # what a user writes who does not know PEFT's task types
    path, run = tmp_path / "cfg.yaml", tmp_path / "run"
    dump_config(cfg, path)
    assert _langtune(capsys, "train", path, "--run-dir", run)[0] == 0
    before = _params(build_session(cfg, tmp_path / "initial").split)
    after = _params(load_run(run)[1].split)
    for name in ("classifier.kernel", "bert.pooler.dense.kernel"):
        assert not np.allclose(before[name], after[name]), name
    assert np.array_equal(before["bert.embeddings.word_embeddings.embedding"],
                          after["bert.embeddings.word_embeddings.embedding"])  # fmt: skip
    adapter = json.loads((run / "adapter/adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS"
    assert set(adapter["modules_to_save"]) == {"classifier", "bert.pooler"}


def test_a_frozen_fresh_weight_warns_once(assets, tmp_path, caplog):
    from langtune_jax.train.session import warn_frozen_fresh

    cfg = _config(assets, steps=1)  # task_type SEQ_CLS: PEFT trains the classifier only
    session = build_session(cfg, tmp_path / "w")
    with caplog.at_level(logging.WARNING, logger="langtune_jax"):
        warn_frozen_fresh(session.model, session.split.trainable_filter)
    lines = [r.message for r in caplog.records if "freshly initialised" in r.message]
    assert len(lines) == 1 and lines[0].startswith("bert.pooler ")


def test_apply_lora_trains_the_head_and_fresh_pooler_of_a_classifier_by_default(assets):
    from flax import nnx

    from langtune_jax.models import from_pretrained
    from langtune_jax.peft import LoraConfig, apply_lora, trainable_filter

    model = from_pretrained(assets / "model", task="sequence-classification", num_labels=2)
    assert model.fresh_modules == ("classifier", "bert.pooler")
    apply_lora(model, LoraConfig(r=2))
    paths = {
        ".".join(map(str, p))
        for p, _ in nnx.to_flat_state(nnx.state(model, trainable_filter(model)))
    }
    assert {"classifier.kernel", "bert.pooler.dense.kernel"} <= paths
    assert not any("word_embeddings" in p for p in paths)
    # An explicit PEFT config is PEFT's: SEQ_CLS trains the classifier, not the pooler.
    model = from_pretrained(assets / "model", task="sequence-classification", num_labels=2)
    apply_lora(model, LoraConfig(r=2, task_type="SEQ_CLS"))
    paths = {
        ".".join(map(str, p))
        for p, _ in nnx.to_flat_state(nnx.state(model, trainable_filter(model)))
    }
    assert "classifier.kernel" in paths and "bert.pooler.dense.kernel" not in paths
