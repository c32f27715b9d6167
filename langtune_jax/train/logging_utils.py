"""Run-time reporting of the training loop: a progress bar, ``metrics.jsonl`` and the trackers.

``metrics.jsonl`` always gets one JSON object per record. Scalars also go to the trackers named in
``run.trackers``: ``tensorboard`` (tensorboardX event files in ``RUN_DIR/tensorboard``, the
default), ``wandb`` (Weights & Biases; ``WANDB_MODE=offline`` writes ``RUN_DIR/wandb`` only) and
``mlflow`` (``MLFLOW_TRACKING_URI``, or a SQLite store ``RUN_DIR/mlflow.db``). A tracker's package is
imported only when it is named.

Tags put the split before the metric and the language last, so every tracker groups them:

    train/loss, train/loss/<language>, train/learning_rate, train/tokens_per_s, train/grad_norm
    sampling/weight/<language>              per-draw probability of each language
    eval/<split>/<metric>                   all languages pooled, and gap statistics (macro_f1_gap)
    eval/<split>/<metric>/<language>        one curve per language

Only process 0 writes; other processes get a silent logger, so multi-host runs write one log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax

TRACKERS = ("tensorboard", "wandb", "mlflow")


class _TensorBoard:
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any], start_step: int = 0):
        from tensorboardX import SummaryWriter

        # A resumed run: TensorBoard hides the events the lost process wrote after the restored
        # checkpoint (purge_step marks the new file), as metrics.jsonl drops those records.
        # The suffix keeps a rerun within the same second from reusing (truncating) the previous
        # process's file: tensorboardX names files by the second and the host only.
        purge = start_step + 1 if start_step > 0 else None
        suffix = f".{os.getpid()}.{time.time_ns()}"
        self._writer = SummaryWriter(
            str(run_dir / "tensorboard"), purge_step=purge, filename_suffix=suffix
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


#: The run folder's record of each tracker's run id, so a resumed run continues the same run.
TRACKER_IDS_FILE = "trackers.json"


def _saved_tracker_id(run_dir: Path, tracker: str, start_step: int) -> str | None:
    """The tracker's run id recorded by an earlier process of this run (a resume only)."""
    path = run_dir / TRACKER_IDS_FILE
    if start_step <= 0 or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get(tracker)


def _record_tracker_id(run_dir: Path, tracker: str, run_id: str) -> None:
    path = run_dir / TRACKER_IDS_FILE
    ids = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(json.dumps({**ids, tracker: run_id}, indent=2) + "\n", encoding="utf-8")


class _Wandb:
    """A W&B run; a resumed training run continues the same W&B run (``resume="allow"``).

    Steps the interrupted process logged after the restored checkpoint are logged again with the
    same values (resume is exact); W&B keeps the first copy and drops the repeats.
    """

    def __init__(self, run_dir: Path, name: str, config: dict[str, Any], start_step: int = 0):
        import wandb

        saved = _saved_tracker_id(run_dir, "wandb", start_step)
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "langtune"),
            name=name,
            dir=str(run_dir),
            config=config,
            reinit="create_new",
            **({"id": saved, "resume": "allow"} if saved else {}),
        )
        _record_tracker_id(run_dir, "wandb", self._run.id)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()


class _Mlflow:
    """An MLflow run; a resumed training run continues the same MLflow run.

    The steps the interrupted process already logged (up to the largest step in the run) are not
    logged twice: resume is exact, so they would repeat the same values.
    """

    def __init__(self, run_dir: Path, name: str, config: dict[str, Any], start_step: int = 0):
        import mlflow

        self._mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # MLflow's local default: a SQLite store
            mlflow.set_tracking_uri(f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "langtune"))
        saved = _saved_tracker_id(run_dir, "mlflow", start_step)
        self._logged_until = -1
        if saved and self._exists(saved):
            self._run = mlflow.start_run(run_id=saved)
            self._logged_until = self._last_step(saved)
        else:
            self._run = mlflow.start_run(run_name=name)
            flat = {k: str(v)[:500] for k, v in _flatten(config, sep=".").items()}
            mlflow.log_params(flat)
        self.run_id = self._run.info.run_id
        _record_tracker_id(run_dir, "mlflow", self.run_id)

    def _exists(self, run_id: str) -> bool:
        try:
            self._mlflow.tracking.MlflowClient().get_run(run_id)
        except Exception:  # another store, or a deleted run: start a new one
            return False
        return True

    def _last_step(self, run_id: str) -> int:
        client = self._mlflow.tracking.MlflowClient()
        keys = client.get_run(run_id).data.metrics
        steps = [m.step for key in keys for m in client.get_metric_history(run_id, key)]
        return max(steps, default=-1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if step <= self._logged_until:
            return
        self._mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self._mlflow.end_run()


_TRACKER_CLASSES = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl`` and sends scalars to trackers.

    Args:
      run_dir: the run folder.
      trackers: tracker names (``TRACKERS``); default ``["tensorboard"]``.
      name: the run's name (wandb / mlflow run name).
      config: the resolved config, recorded by wandb (config) and mlflow (params).
      enabled: write anything at all (``jax.process_index() == 0`` by default).
      start_step: the step a resumed run restarts from (0: a fresh run); TensorBoard then hides
        the events of later steps that the interrupted process had written, and W&B and MLflow
        continue the run recorded in ``RUN_DIR/trackers.json`` instead of starting a new one.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        trackers: list[str] | None = None,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        enabled: bool | None = None,
        start_step: int = 0,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._file = None
        self._trackers: list[Any] = []
        if not self.enabled:
            return
        run_dir = Path(run_dir)
        self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        for tracker in trackers if trackers is not None else ["tensorboard"]:
            if tracker not in _TRACKER_CLASSES:
                raise ValueError(f"unknown tracker {tracker!r}; choose from {', '.join(TRACKERS)}")
            try:
                cls = _TRACKER_CLASSES[tracker]
                self._trackers.append(cls(run_dir, name or run_dir.name, config or {}, start_step))
            except ImportError as err:
                raise ValueError(
                    f"run.trackers names {tracker!r} but it is not installed ({err}); "
                    f"pip install {tracker} or remove it from run.trackers"
                ) from None

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """Write ``values`` for ``step`` under ``kind`` (``train``, ``eval``, ``sampling``).

        Scalars become tags ``kind/[split/]key`` (nested dicts join with ``/``); a ``split``
        value goes into the tag, and ``per_language: {language: {metric: value}}`` gives
        ``kind/[split/]metric/language``.
        """
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()
        if self._trackers:
            tags = scalar_tags(kind, values)
            for tracker in self._trackers:
                tracker.scalars(step, tags)

    def log_eval(self, step: int, split: str, headline: dict[str, float], result: dict) -> None:
        """An evaluation: the pooled and gap scalars, and each language's scalar metrics."""
        per_language = {
            lang: {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
            for lang, metrics in result.get("per_language", {}).items()
        }
        self.log(step, "eval", {"split": split, **headline, "per_language": per_language})

    def close(self) -> None:
        """Flush and close the files and trackers."""
        if self._file is not None:
            self._file.close()
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scalar_tags(kind: str, values: dict[str, Any]) -> dict[str, float]:
    """The tracker tags of one record (see the module docstring)."""
    prefix = f"{kind}/{values['split']}/" if isinstance(values.get("split"), str) else f"{kind}/"
    out: dict[str, float] = {}
    for key, value in _flatten({k: v for k, v in values.items() if k != "per_language"}).items():
        if _is_scalar(value):
            out[prefix + key] = float(value)
    for lang, metrics in (values.get("per_language") or {}).items():
        for metric, value in metrics.items():
            if _is_scalar(value):
                out[f"{prefix}{metric}/{lang}"] = float(value)
    return out


def _flatten(values: dict[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}{sep}", sep))
        else:
            out[name] = value
    return out


class Progress:
    """A tqdm bar over optimizer steps showing loss, tokens/s and the ETA (process 0 only)."""

    def __init__(self, start: int, total: int, *, enabled: bool | None = None):
        from tqdm.auto import tqdm

        self._enabled = jax.process_index() == 0 if enabled is None else enabled
        enabled = self._enabled
        self._bar = tqdm(
            total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True
        )

    def update(self, n: int, **postfix: Any) -> None:
        """Advance by ``n`` steps and show ``postfix`` values."""
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(n)

    def write(self, line: str) -> None:
        """Print a line without breaking the bar (process 0 only: tqdm.write ignores disable)."""
        if self._enabled:
            self._bar.write(line)

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()
