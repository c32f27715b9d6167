"""Tracking: per-language scalars with the split in the tag, in metrics.jsonl and TensorBoard
(read back from the event files), and the optional wandb / mlflow trackers in offline mode."""

import json
import struct
import time
from pathlib import Path

import pytest

from langtune_jax.train import train
from langtune_jax.train.logging_utils import MetricsLogger, scalar_tags
from tests.train.conftest import LANGS, tiny_run_config


def read_tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` from the TFRecord event files of a folder (tensorboardX's proto),
    as TensorBoard shows them: a ``SessionLog.START`` event at step s (a resumed writer's
    ``purge_step``) hides the values of steps >= s read before it."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(
        folder.glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime_ns, p.name)
    )
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            record = data[pos + 12 : pos + 12 + length]  # skip the length's crc
            pos += 12 + length + 4  # and the data's crc
            event = event_pb2.Event.FromString(record)
            if event.session_log.status == event_pb2.SessionLog.START:
                out = {t: [(k, v) for k, v in vals if k < event.step] for t, vals in out.items()}
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


RESULT = {
    "per_language": {
        "en": {"macro_f1": 0.9, "accuracy": 0.95, "num_examples": 10},
        "qu": {"macro_f1": 0.5, "accuracy": 0.6, "num_examples": 4},
    }
}


def test_tags_put_the_split_before_the_metric_and_the_language_last():
    tags = scalar_tags("eval", {"split": "test", "macro_f1": 0.8, **RESULT})
    assert tags["eval/test/macro_f1"] == 0.8
    assert tags["eval/test/macro_f1/qu"] == 0.5 and tags["eval/test/accuracy/en"] == 0.95
    assert "eval/test/split" not in tags
    train_tags = scalar_tags("train", {"loss": 1.5, "loss/qu": 2.0, "learning_rate": 1e-3})
    assert train_tags == {"train/loss": 1.5, "train/loss/qu": 2.0, "train/learning_rate": 1e-3}
    assert scalar_tags("sampling", {"weight": {"en": 0.7, "qu": 0.3}}) == {
        "sampling/weight/en": 0.7,
        "sampling/weight/qu": 0.3,
    }


@pytest.mark.slow
def test_logger_writes_every_tracker_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = MetricsLogger(
        tmp_path,
        trackers=["tensorboard", "wandb", "mlflow"],
        name="tiny",
        config={"run": {"name": "tiny"}, "train": {"steps": 2}},
        enabled=True,
    )
    logger.log(1, "train", {"loss": 1.25, "loss/qu": 2.5})
    logger.log_eval(2, "validation", {"macro_f1": 0.7}, RESULT)
    logger.log_eval(2, "test", {"macro_f1": 0.6}, RESULT)
    logger.close()

    tb = read_tensorboard(tmp_path / "tensorboard")
    assert tb["train/loss/qu"] == [(1, 2.5)]
    for split in ("validation", "test"):
        assert tb[f"eval/{split}/macro_f1/qu"] == [(2, 0.5)]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (
        records[1]["split"] == "validation" and records[1]["per_language"]["qu"]["macro_f1"] == 0.5
    )

    # wandb offline: a run folder with its .wandb log holding the tag.
    (run_file,) = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert b"eval/test/macro_f1/qu" in run_file.read_bytes()
    # mlflow's SQLite store in the run folder: the per-language history reads back.
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("langtune").experiment_id])
    history = client.get_metric_history(run.info.run_id, "eval/validation/macro_f1/qu")
    assert [(m.step, m.value) for m in history] == [(2, 0.5)]
    assert run.data.params["train.steps"] == "2"


def test_a_resumed_logger_hides_the_lost_steps_in_tensorboard(tmp_path):
    """A process killed after step 5 whose newest checkpoint is step 3: the rerun logs 4 and 5
    again, and TensorBoard shows each step once, with the rerun's values."""
    first = MetricsLogger(tmp_path, trackers=["tensorboard"], enabled=True)
    for step in range(1, 6):
        first.log(step, "train", {"loss": float(step)})
    first.close()
    time.sleep(0.01)  # the second event file is newer
    resumed = MetricsLogger(tmp_path, trackers=["tensorboard"], enabled=True, start_step=3)
    for step in (4, 5):
        resumed.log(step, "train", {"loss": 10.0 * step})
    resumed.close()
    shown = read_tensorboard(tmp_path / "tensorboard")["train/loss"]
    assert shown == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]


def test_unknown_or_missing_tracker_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tracker 'neptune'"):
        MetricsLogger(tmp_path, trackers=["neptune"], enabled=True)


@pytest.mark.slow
def test_training_run_logs_per_language_curves(assets, tmp_path, capsys):
    cfg = tiny_run_config(
        assets, name="tb", mesh={"data": 8, "fsdp": 1, "tensor": 1}, steps=4, eval_every=2
    )
    run = train(cfg, run_dir=tmp_path / "run")
    tb = read_tensorboard(run / "tensorboard")
    for lang in LANGS:
        assert [s for s, _ in tb[f"eval/validation/macro_f1/{lang}"]] == [2, 4]
        assert tb[f"sampling/weight/{lang}"][0][1] == pytest.approx(1 / len(LANGS), abs=1e-3)
    for tag in ("train/loss", "train/learning_rate", "train/tokens_per_s"):
        assert [s for s, _ in tb[tag]] == [2, 4], tag
    assert "mesh data=8 fsdp=1 tensor=1 over 8 cpu device(s)" in capsys.readouterr().out
    # The eval curves end with the final evaluation (step 4), not the last cadence one.
    report = json.loads((run / "eval/validation/report.json").read_text())
    assert [h["step"] for h in report["history"]] == [2, 4]


def test_a_resumed_run_continues_its_wandb_and_mlflow_runs(tmp_path, monkeypatch):
    """A resume (start_step > 0) reopens the tracker runs of trackers.json; MLflow does not log
    the steps the interrupted process already logged twice; a fresh start opens new runs."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def process(start_step, steps):
        logger = MetricsLogger(
            tmp_path,
            trackers=["wandb", "mlflow"],
            name="tiny",
            config={"train": {"steps": 6}},
            enabled=True,
            start_step=start_step,
        )
        for step in steps:
            logger.log(step, "train", {"loss": float(step)})
        logger.close()
        return json.loads((tmp_path / "trackers.json").read_text())

    first = process(0, [1, 2, 3, 4])  # killed after step 4, last checkpoint at step 2
    resumed = process(2, [3, 4, 5, 6])
    assert resumed == first
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("langtune").experiment_id])
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(1, 7)]
    wandb_runs = list((tmp_path / "wandb").glob(f"offline-run-*-{first['wandb']}"))
    assert len(wandb_runs) == 2  # both processes wrote to the same W&B run id
    fresh = process(0, [1])  # a new run in the same folder (not a resume): new tracker runs
    assert fresh["wandb"] != first["wandb"] and fresh["mlflow"] != first["mlflow"]
