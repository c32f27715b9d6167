"""The training loop: from a validated :class:`~langtune_jax.config.RunConfig` to a run folder.

``train(config)`` does, in order: join the other hosts (multi-host runs), build the mesh, read and
validate the data, print the sampling plan, load the pretrained model, wrap it with the PEFT method,
split it into trainable / frozen / mutable state placed on the mesh, restore the newest checkpoint
of the run folder if there is one (exact resume: the data position is the step number), then run the
jitted step with a progress bar, ``metrics.jsonl`` + TensorBoard logging, per-language evaluation on
cadence, checkpoints, a SIGTERM / SIGINT handler (save, then exit 0: preemptible Cloud TPU VMs,
Ctrl-C) and a divergence guard (a NaN/inf loss, or one past ``DIVERGENCE_FACTOR`` times the first
step's: stop with a clear message; the last good checkpoint stays). At the end it writes the
per-language reports and exports the adapter. Set-up is :mod:`langtune_jax.train.session`, the
run-folder checks :mod:`langtune_jax.train.run_folder`, the restore, the schedule and the compiled
steps :mod:`langtune_jax.train.start`, the dynamic-weight updates
:mod:`langtune_jax.train.dynamic_weights`, the evaluations on cadence and the final reports
:mod:`langtune_jax.train.evaluation`; reopening a finished run (eval, export) is
:mod:`langtune_jax.train.runs`.

Run folder::

    config.yaml   resolved config          plan.json      sampling plan (+ --extend segments)
    run.json      fingerprint, segments    train.lock     pid and host while training
    metrics.jsonl train/eval records       tensorboard/   event files
    checkpoints/  Orbax steps              eval/<split>/  report.json, report.md, *.png
    adapter/      PEFT-format LoRA adapter (or adapter-only weights for bottleneck adapters)
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from langtune_jax.config import RunConfig, dump_config
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train import run_folder
from langtune_jax.train.dynamic_weights import start_weights, update_weights
from langtune_jax.train.evaluation import evaluate_on_cadence, final_reports
from langtune_jax.train.logging_utils import MetricsLogger, Progress
from langtune_jax.train.optim import segmented_schedule
from langtune_jax.train.preflight import warn_config
from langtune_jax.train.run_lock import RunLock
from langtune_jax.train.session import build_session, maybe_initialize_distributed, resolve_run_dir
from langtune_jax.train.start import (
    Run,
    checkpointer,
    compile_steps,
    print_start,
    restore,
    schedule_and_plan,
)

__all__ = ["DIVERGENCE_FACTOR", "RunFolderError", "TrainingDiverged", "train"]

log = logging.getLogger("langtune_jax")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or exploded; the last good checkpoint is left as it was."""


class RunFolderError(RuntimeError):
    """The run folder cannot be written (permissions, full disk); saved checkpoints are intact."""


# ----------------------------------------------------------------------------- training


class _Preemption:
    """Turns SIGTERM (preemptible VMs) and SIGINT (Ctrl-C) into a flag the loop checks between
    steps: the run saves a checkpoint and ends cleanly. A second Ctrl-C interrupts at once."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in self._SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # the next Ctrl-C is a plain KeyboardInterrupt
            signal.signal(
                signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler)
            )
        self.requested = name
        log.warning("%s received: saving a checkpoint after this step, then exiting", name)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)


#: A logged loss past this multiple of the run's first step loss (floored at 1) is divergence.
DIVERGENCE_FACTOR = 100.0
# OS errors that mean "cannot write here" (permissions, read-only, full disk, quota).
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _diverged(what: str, ckpt_dir: Path) -> TrainingDiverged:
    return TrainingDiverged(
        f"{what}; lower train.learning_rate or set train.max_grad_norm. The last good checkpoint "
        f"in {ckpt_dir} is intact"
    )


def _check_divergence(losses: np.ndarray, step: int, first: float, ckpt_dir: Path) -> None:
    """The NaN guard, and its twin for a loss that explodes while staying finite."""
    if not np.all(np.isfinite(losses)):
        raise _diverged(
            f"loss is {losses[~np.isfinite(losses)][0]} at or before step {step}", ckpt_dir
        )
    mean = float(losses.mean())
    if mean > DIVERGENCE_FACTOR * max(first, 1.0):
        raise _diverged(
            f"loss is {mean:.3g} at step {step}, more than {DIVERGENCE_FACTOR:g}x its first "
            f"value {first:.3g}: training diverged",
            ckpt_dir,
        )


def train(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    *,
    restart: bool = False,
    extend: bool = False,
) -> Path:
    """Train (or resume) the run that ``cfg`` describes; returns the run folder.

    Args:
      cfg: the validated run config.
      run_dir: the run folder (default ``<run.output_dir>/<run.name>``).
      restart: move an existing run in ``run_dir`` aside (``RUN_DIR.old-<timestamp>``) and start
        over (``--restart``).
      extend: allow a resume with a larger/smaller ``train.steps``: it continues from the last
        step with the schedule and plan recomputed from there (``--extend``).

    Raises:
      ConfigError: the run folder holds foreign files, is locked by a live process, or holds a
        run with a different config or fingerprint (:mod:`langtune_jax.train.run_folder`).
      TrainingDiverged: the loss became NaN/inf or exploded (the last good checkpoint is kept).
      RunFolderError: the run folder cannot be written (the last good checkpoint is kept).
    """
    run_dir = resolve_run_dir(cfg, run_dir)
    try:
        return _claimed(cfg, run_dir, restart, extend)
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise RunFolderError(
            f"cannot write {err.filename or run_dir}: {err.strerror or err}; checkpoints already "
            f"in {run_dir / 'checkpoints'} are intact: free space or fix the permissions, then "
            "rerun the same command to resume"
        ) from err


def _claimed(cfg: RunConfig, run_dir: Path, restart: bool, extend: bool) -> Path:
    """The run folder's checks and lock around :func:`_train`."""
    warn_config(cfg)
    run_folder.check_run_folder(run_dir)
    if not restart:
        run_folder.check_resume_config(run_dir, cfg, extend)
    # Before any JAX call: jax.process_index() would start the backend, and
    # jax.distributed.initialize refuses to run after that.
    maybe_initialize_distributed(cfg.mesh)
    created = restart or not run_dir.exists()
    lock = _claim_run_folder(run_dir, restart)
    try:
        return _train(cfg, run_dir, extend)
    finally:
        lock.release()
        if created and jax.process_index() == 0 and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run refused before it wrote anything leaves no empty folder


def _claim_run_folder(run_dir: Path, restart: bool) -> RunLock:
    """Process 0 moves an old run aside (``--restart``) and takes the folder's lock."""
    lock = RunLock(run_dir)
    if jax.process_index() == 0:
        if restart:
            run_folder.move_aside(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("langtune run folder claimed")
    return lock


def _train(cfg: RunConfig, run_dir: Path, extend: bool) -> Path:
    """A run in a claimed folder: set up, restore, write the run files, loop, final reports."""
    primary = jax.process_index() == 0
    session = build_session(cfg, run_dir, resuming=run_folder.has_checkpoint(run_dir))
    with contextlib.closing(checkpointer(run_dir, cfg.train)) as ckpt:
        restored = restore(session, ckpt)
        tx, plan_dict, segments = schedule_and_plan(
            run_dir, cfg, restored.step, session.dataset.plan, extend
        )
        if primary:
            labels = list(session.dataset.labels or [])
            _write_run_files(
                run_dir, cfg, plan_dict, restored.fingerprint, labels, segments, restored.step
            )
            print_start(session)
        train_step, eval_step = compile_steps(session, tx, restored.shardings)
        weights = start_weights(session, eval_step, restored.record, primary)
        logger = MetricsLogger(
            run_dir,
            trackers=cfg.run.trackers,
            name=cfg.run.name,
            config=cfg.to_dict(),
            start_step=restored.step,
        )
        run = Run(
            session=session,
            ckpt=ckpt,
            train_step=train_step,
            eval_step=eval_step,
            logger=logger,
            learning_rate=segmented_schedule(cfg.train, segments),
            fingerprint=restored.fingerprint,
            opt_state=restored.opt_state,
            step=restored.step,
            history=restored.history,
            weights=weights,
            saved=ckpt.all_steps()[-1] if ckpt.all_steps() else -1,
        )
        _loop(run)
    if run.step >= cfg.train.steps:
        final_reports(run)
    logger.close()
    return run_dir


# ----------------------------------------------------------------------------- the loop


class _Window:
    """The steps since the last train record: their losses, tokens and per-language loss sums."""

    def __init__(self):
        self.losses: list[jax.Array] = []
        self.tokens = 0
        self.languages: list[tuple[jax.Array, jax.Array]] = []
        self.start = time.perf_counter()


def _loop(run: Run) -> None:
    """Step to ``train.steps`` (or a SIGTERM / SIGINT), with logs, dynamic-weight updates, evals
    and checkpoints on their cadences; the last step is always saved."""
    tcfg, dataset = run.session.cfg.train, run.session.dataset
    batches = dataset.train_batches(tcfg.batch_size, start_step=run.step)
    progress = Progress(run.step, tcfg.steps)
    progress.write(_mesh_line(run.session.mesh))
    if run.step == 0:  # a resumed run's log has it already
        run.logger.log(run.step, "sampling", {"weight": dataset.weights_at(run.step)})
    window = _Window()
    try:
        with _Preemption() as preemption:
            while run.step < tcfg.steps:
                metrics = _one_step(run, next(batches), window)
                if run.step % tcfg.log_every == 0 or run.step == tcfg.steps:
                    _log_window(run, window, metrics, progress)
                    window = _Window()
                if run.weights is not None and run.weights.due(run.step) and run.step < tcfg.steps:
                    update_weights(run, jax.process_index() == 0)
                    batches = dataset.train_batches(tcfg.batch_size, start_step=run.step)
                eval_metrics = evaluate_on_cadence(run, progress)
                if tcfg.checkpoint_every and run.step % tcfg.checkpoint_every == 0:
                    _save(run, eval_metrics)
                if preemption.requested:
                    _save(run, eval_metrics)
                    run.ckpt.wait()
                    progress.write(
                        f"stopped by {preemption.requested}: saved step {run.step} to "
                        f"{run.ckpt.directory}; rerun the same command to resume"
                    )
                    break
            else:
                _save(run)
    finally:
        progress.close()


def _one_step(run: Run, local: dict[str, np.ndarray], window: _Window) -> dict[str, jax.Array]:
    """One optimizer step on this host's part of the batch; its metrics stay on the device."""
    split = run.session.split
    window.tokens += int(np.sum(local["attention_mask"])) * jax.process_count()
    batch = mesh_lib.put_batch(local, run.session.mesh)
    split.trainable, run.opt_state, split.mutable, metrics = run.train_step(
        split.trainable, run.opt_state, split.mutable, split.frozen, batch
    )
    run.step += 1
    run.all_finite = run.all_finite & jnp.isfinite(metrics["loss"])
    window.losses.append(metrics["loss"])
    if "language_loss_sum" in metrics:  # not for packed LM / token rows (start._loss_languages)
        language_sums = (metrics["language_loss_sum"], metrics["language_count"])
        window.languages.append(language_sums)
        if run.weights is not None:
            run.weights.add_step(*language_sums)
    return metrics


def _log_window(run: Run, window: _Window, metrics: dict[str, jax.Array], progress) -> None:
    """The train record of the window (losses come to the host here, so the divergence guard
    runs here too)."""
    losses = np.asarray(jax.device_get(window.losses))
    if run.first_loss is None:
        run.first_loss = float(losses[0])
    _check_divergence(losses, run.step, run.first_loss, run.ckpt.directory)
    elapsed = time.perf_counter() - window.start
    rec = {
        "loss": float(losses.mean()),
        "grad_norm": float(metrics["grad_norm"]),
        "learning_rate": float(run.learning_rate(run.step)),
        "tokens_per_s": window.tokens / max(elapsed, 1e-9),
        **_language_means(run.session.dataset.languages, window.languages),
    }
    run.logger.log(run.step, "train", rec)
    progress.update(len(losses), loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")


def _save(run: Run, metrics: dict[str, float] | None = None) -> None:
    """Checkpoint the state at ``run.step`` (once), with the record an exact resume needs."""
    if run.saved == run.step:
        return
    if not bool(run.all_finite):
        raise TrainingDiverged(
            f"loss became NaN/inf before step {run.step}; not saving. Lower "
            "train.learning_rate or set train.max_grad_norm; the last good checkpoint in "
            f"{run.ckpt.directory} is intact"
        )
    record = {
        "step": run.step,
        "config_hash": run.session.cfg.hash(),
        "data_position": run.step,
        "fingerprint": run.fingerprint,
        "history": list(run.history),
        "metrics": metrics,
    }
    if run.weights is not None:
        record["dynamic"] = run.weights.state()
    split = run.session.split
    run.ckpt.save(run.step, (split.trainable, run.opt_state, split.mutable), record, metrics)
    run.saved = run.step


def _language_means(languages: list[str], window: list[tuple[Any, Any]]) -> dict[str, float]:
    """``loss/<language>``: mean train loss per language over the steps of a log window."""
    if not window:  # packed LM / token rows: no per-language sums (start._loss_languages)
        return {}
    sums = np.sum([np.asarray(jax.device_get(pair), np.float64) for pair in window], axis=0)
    return {f"loss/{lang}": float(s / c) for lang, s, c in zip(languages, *sums) if c > 0}


def _write_run_files(run_dir, cfg, plan_dict, fp, labels, segments, start) -> None:
    """``config.yaml``, ``plan.json``, ``run.json``; and ``metrics.jsonl`` cut to ``start``."""
    dump_config(cfg, run_dir / "config.yaml")
    (run_dir / "plan.json").write_text(json.dumps(plan_dict, indent=2), encoding="utf-8")
    run_folder.write_run_file(
        run_dir,
        {
            "format": 1,
            "name": cfg.run.name,
            "model": cfg.model.name_or_path,
            "task": cfg.model.task,
            "labels": labels,
            "fingerprint": fp,
            "segments": segments,
        },
    )
    dropped = run_folder.truncate_metrics(run_dir, start)
    if dropped and start == 0:
        log.info(
            "metrics.jsonl: an earlier attempt saved no checkpoint; training starts over from "
            "step 0 (its %d records are dropped and written again)",
            dropped,
        )
    elif dropped:
        log.info(
            "metrics.jsonl: dropped %d records written after the checkpoint of step %d (or by "
            "the final reports); they are written again",
            dropped,
            start,
        )


def _mesh_line(mesh) -> str:
    """``mesh data=8 fsdp=1 tensor=1 over 8 cpu devices (1 process)``: shown once at start."""
    axes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
    kinds = sorted({d.platform for d in mesh.devices.flat})
    return (
        f"mesh {axes} over {mesh.devices.size} {'/'.join(kinds)} device(s) "
        f"({jax.process_count()} process(es))"
    )
