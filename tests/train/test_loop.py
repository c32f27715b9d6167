"""End to end on a tiny random BERT: a run folder with everything DESIGN.md lists, exact resume,
SIGTERM handling and the NaN guard."""

import json
import os
import signal
import typing
from pathlib import Path

import jax
import numpy as np
import pytest

from langtune_jax.config import TrainConfig
from langtune_jax.train import train
from langtune_jax.train.loop import TrainingDiverged
from langtune_jax.train.runs import load_run
from tests.train.conftest import (
    LANGS,
    RUN_FOLDER_FILES,
    kill_9_at_checkpoint,
    tiny_run_config,
    wait_for_checkpoint,
)


def _config(assets: Path, **train):
    train = {"steps": 6, "checkpoint_every": 3, **train}
    return tiny_run_config(assets, name="t", mesh={"data": 2, "fsdp": 2, "tensor": 2}, **train)


def _trainable(run_dir):
    _, session = load_run(run_dir)
    return [np.asarray(x) for x in jax.tree.leaves(session.split.trainable)]


def test_run_folder_and_exact_resume(assets, tmp_path):
    full = train(_config(assets), run_dir=tmp_path / "full")
    for name in RUN_FOLDER_FILES:
        assert (full / name).exists(), name
    report = json.loads((full / "eval/validation/report.json").read_text())
    assert set(report["per_language"]) == set(LANGS)
    # one prediction per validation example (8 simulated devices), agreeing with the report
    rows = [json.loads(line) for line in (full / "eval/validation/predictions.jsonl").open()]
    assert report["files"]["predictions"] == "predictions.jsonl"
    for lang, scores in report["per_language"].items():
        mine = [r for r in rows if r["language"] == lang]
        assert [r["index"] for r in mine] == list(range(scores["num_examples"]))
        assert {r["label"] for r in mine} <= {"neg", "pos"} and all(r["text"] for r in mine)
        accuracy = sum(r["correct"] for r in mine) / len(mine)
        assert accuracy == pytest.approx(scores["accuracy"])
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train")

    # Resume from the step-3 checkpoint of the same run: identical parameters at step 6.
    import shutil

    shutil.copytree(full, tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed/checkpoints/6")
    train(_config(assets), run_dir=tmp_path / "resumed")
    for a, b in zip(_trainable(full), _trainable(tmp_path / "resumed")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_resume_with_a_changed_config_is_refused(assets, tmp_path):
    train(_config(assets, steps=3), run_dir=tmp_path / "r")
    changed = _config(assets, steps=3, learning_rate=5e-3)
    with pytest.raises(ValueError, match="train.learning_rate"):
        train(changed, run_dir=tmp_path / "r")


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(assets, tmp_path):
    cfg = _config(assets, learning_rate=1e30, max_grad_norm=None, log_every=1, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="inf|nan|NaN"):
        train(cfg, run_dir=tmp_path / "n")
    steps = sorted(int(p.name) for p in (tmp_path / "n/checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] < 6
    # The newest checkpoint left behind restores and holds finite values.
    assert all(np.all(np.isfinite(x)) for x in _trainable(tmp_path / "n"))


@pytest.mark.slow  # heavy (>15 s on 2 cores): make test-slow, run by CI after make test
def test_kill_9_then_restart_equals_unbroken_run(assets, tmp_path):

    cfg = _config(assets, steps=12, checkpoint_every=2, log_every=2)
    unbroken = train(cfg, run_dir=tmp_path / "unbroken")

    kill_9_at_checkpoint(cfg, tmp_path / "cfg.yaml", tmp_path / "killed", 4)
    done = sorted(
        int(p.name) for p in (tmp_path / "killed/checkpoints").iterdir() if p.name.isdigit()
    )
    assert done and done[-1] < 12

    train(cfg, run_dir=tmp_path / "killed")  # the same run folder resumes by itself
    for a, b in zip(_trainable(unbroken), _trainable(tmp_path / "killed")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_sigterm_saves_and_returns_cleanly(assets, tmp_path):
    import threading

    cfg = _config(assets, steps=400, checkpoint_every=2, log_every=2)
    run_dir = tmp_path / "term"

    def preempt():
        wait_for_checkpoint(run_dir / "checkpoints", 4)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=preempt, daemon=True)
    thread.start()
    train(cfg, run_dir=run_dir)
    thread.join(timeout=5)
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert 4 <= steps[-1] < 400
    assert records[-1]["step"] <= steps[-1]
    assert not (run_dir / "eval").exists()  # stopped early: no final report


@pytest.mark.parametrize("impl", typing.get_args(typing.get_type_hints(TrainConfig)["rng_impl"]))
def test_rng_impl_sets_every_dropout_key(assets, tmp_path, impl):
    from langtune_jax.train.session import build_session

    cfg = tiny_run_config(assets, name="rng", mesh={"data": -1}, steps=1, rng_impl=impl)
    cfg.peft.lora.lora_dropout = 0.1
    session = build_session(cfg, tmp_path / "rng")
    leaves = jax.tree.leaves(session.split.mutable)
    keys = [x for x in leaves if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
    # 2 layers x 3 BERT dropouts + embeddings + head + LoRA on query/value per layer.
    assert len(keys) >= 10
    assert {str(jax.random.key_impl(k)) for k in keys} == {impl}
