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
run-folder checks :mod:`langtune_jax.train.run_folder`; reopening a finished run (eval, export) is
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
import dataclasses
import errno
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from langtune_jax import data as data_lib
from langtune_jax import eval as eval_lib
from langtune_jax import peft as peft_lib
from langtune_jax.config import ConfigError, RunConfig, TrainConfig, dump_config
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train import run_folder
from langtune_jax.train.checkpoint import Checkpointer
from langtune_jax.train.logging_utils import MetricsLogger, Progress
from langtune_jax.train.optim import make_optimizer, segmented_schedule
from langtune_jax.train.preflight import warn_unused_options
from langtune_jax.train.runs import export_adapter
from langtune_jax.train.session import (
    Session,
    build_session,
    evaluate,
    language_losses,
    maybe_initialize_distributed,
    resolve_run_dir,
    warn_frozen_fresh,
)
from langtune_jax.train.step import make_eval_step, make_train_step

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
    warn_unused_options(cfg)
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


def _claim_run_folder(run_dir: Path, restart: bool) -> run_folder.RunLock:
    """Process 0 moves an old run aside (``--restart``) and takes the folder's lock."""
    lock = run_folder.RunLock(run_dir)
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
    session = build_session(cfg, run_dir)
    with contextlib.closing(_checkpointer(run_dir, cfg.train)) as ckpt:
        restored = _restore(session, ckpt)
        tx, plan_dict, segments = _schedule_and_plan(
            run_dir, cfg, restored.step, session.dataset.plan, extend
        )
        if primary:
            labels = list(session.dataset.labels or [])
            _write_run_files(
                run_dir, cfg, plan_dict, restored.fingerprint, labels, segments, restored.step
            )
            _print_start(session)
        train_step, eval_step = _compile_steps(session, tx, restored.shardings)
        weights = _start_weights(session, eval_step, restored.record, primary)
        logger = MetricsLogger(
            run_dir,
            trackers=cfg.run.trackers,
            name=cfg.run.name,
            config=cfg.to_dict(),
            start_step=restored.step,
        )
        run = _Run(
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
        _final_reports(run)
    logger.close()
    return run_dir


def _checkpointer(run_dir: Path, tcfg: TrainConfig) -> Checkpointer:
    """The run folder's checkpoints, keeping the best one by ``train.best_metric`` if set."""
    best_metric = tcfg.best_metric
    lower_better = (
        best_metric is not None and not eval_lib.metric_info(best_metric).higher_is_better
    )
    ckpt = Checkpointer(
        run_dir / "checkpoints",
        keep=tcfg.keep_checkpoints,
        best_metric=best_metric,
        best_mode="min" if lower_better else "max",
    )
    return ckpt


class _Restored(NamedTuple):
    """Where a run starts: the newest checkpoint of its folder, or step 0."""

    opt_state: Any  # the optimizer state of the trainable leaves, on the mesh
    shardings: dict[str, Any]  # the session's state shardings plus "opt_state"
    fingerprint: dict[str, Any]  # run_folder.fingerprint of this run's inputs
    step: int  # the restored step; 0 for a new run
    history: list[dict[str, Any]]  # the eval history saved with that checkpoint
    record: dict[str, Any] | None  # that checkpoint's whole record; None for a new run


def _restore(session: Session, ckpt: Checkpointer) -> _Restored:
    """Initialise the optimizer state, then restore the newest checkpoint into the session's
    split; refused when the fingerprint differs (:func:`run_folder.restore_or_refuse`)."""
    split = session.split
    tx = make_optimizer(session.cfg.train)
    opt_state = tx.init(split.trainable)
    opt_shardings = mesh_lib.opt_state_shardings(
        tx, opt_state, session.shardings["trainable"], session.mesh
    )
    shardings = {**session.shardings, "opt_state": opt_shardings}
    opt_state = jax.device_put(opt_state, opt_shardings)
    fp = run_folder.fingerprint(session, opt_state)
    labels = list(session.dataset.labels or [])
    start, state, history, record = run_folder.restore_or_refuse(
        ckpt, session.run_dir, (split.trainable, opt_state, split.mutable), fp, labels
    )
    if state is not None:
        split.trainable, opt_state, split.mutable = state
        log.info("resumed from %s at step %d", ckpt.directory, start)
    return _Restored(opt_state, shardings, fp, start, history, record)


def _print_start(session: Session) -> None:
    """Print the sampling plan and the trainable parameters; warn about random frozen modules."""
    print(session.dataset.plan.table())
    print(peft_lib.trainable_summary(session.model, session.split.trainable_filter))
    warn_frozen_fresh(session.model, session.split.trainable_filter)


def _loss_languages(cfg: RunConfig, session: Session) -> int | None:
    """How many languages the step sums the loss for (``loss/<lang>``, dynamic weights); None
    where a loss has no one language (``RunConfig.losses_have_one_language``)."""
    return len(session.dataset.languages) if cfg.losses_have_one_language() else None


def _compile_steps(
    session: Session, tx: optax.GradientTransformation, shardings: dict[str, Any]
) -> tuple[Callable, Callable]:
    """The jitted train and eval steps of the session (compiled at their first call)."""
    cfg = session.cfg
    train_step = make_train_step(
        session.split,
        tx,
        task=cfg.model.task,
        mesh=session.mesh,
        param_shardings=shardings,
        grad_accum_steps=cfg.train.grad_accum_steps,
        routing=session.routing,
        num_languages=_loss_languages(cfg, session),
    )
    eval_step = make_eval_step(
        session.split,
        task=cfg.model.task,
        mesh=session.mesh,
        param_shardings=shardings,
        routing=session.routing,
    )
    return train_step, eval_step


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class _Run:
    """A run in progress: what the loop updates, and what each checkpoint records."""

    session: Session  # its split holds the trainable and mutable state the step updates
    ckpt: Checkpointer
    train_step: Callable  # make_train_step's jitted step
    eval_step: Callable  # make_eval_step's jitted step
    logger: MetricsLogger
    learning_rate: optax.Schedule  # over every --extend segment; logged with each train record
    fingerprint: dict[str, Any]  # saved with each checkpoint
    opt_state: Any
    step: int  # steps done
    history: list[dict[str, Any]]  # eval history entries, saved with each checkpoint
    weights: data_lib.WeightRecord | None  # dynamic language weights; None when static
    saved: int  # the newest checkpoint step on disk (-1: none); a step is saved once
    first_loss: float | None = None  # the first logged loss: the divergence guard's scale
    # False once a step's loss was NaN/inf; a device scalar, so checking it costs no sync per step.
    all_finite: jax.Array = dataclasses.field(default_factory=lambda: jnp.bool_(True))


class _Window:
    """The steps since the last train record: their losses, tokens and per-language loss sums."""

    def __init__(self):
        self.losses: list[jax.Array] = []
        self.tokens = 0
        self.languages: list[tuple[jax.Array, jax.Array]] = []
        self.start = time.perf_counter()


def _loop(run: _Run) -> None:
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
                    _update_weights(run, jax.process_index() == 0)
                    batches = dataset.train_batches(tcfg.batch_size, start_step=run.step)
                eval_metrics = _evaluate_on_cadence(run, progress)
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


def _one_step(run: _Run, local: dict[str, np.ndarray], window: _Window) -> dict[str, jax.Array]:
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
    if "language_loss_sum" in metrics:  # not for packed LM / token rows (_loss_languages)
        language_sums = (metrics["language_loss_sum"], metrics["language_count"])
        window.languages.append(language_sums)
        if run.weights is not None:
            run.weights.add_step(*language_sums)
    return metrics


def _log_window(run: _Run, window: _Window, metrics: dict[str, jax.Array], progress) -> None:
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


def _evaluate_on_cadence(run: _Run, progress) -> dict[str, float] | None:
    """Every ``train.eval_every`` steps (the last step has the final reports instead): the
    headline metrics of ``eval.split``, logged and kept in the history; else None."""
    cfg = run.session.cfg
    every, step = cfg.train.eval_every, run.step
    if not (every and step % every == 0 and step < cfg.train.steps):
        return None
    result = evaluate(run.session, cfg.eval.split, run.eval_step)
    eval_metrics = _headline(result)
    run.history.append(eval_lib.history_entry(result, step))
    run.logger.log_eval(step, cfg.eval.split, eval_metrics, result)
    progress.write(f"step {step}: " + _one_line(eval_metrics))
    return eval_metrics


def _save(run: _Run, metrics: dict[str, float] | None = None) -> None:
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
    if not window:  # packed LM / token rows: no per-language sums (_loss_languages)
        return {}
    sums = np.sum([np.asarray(jax.device_get(pair), np.float64) for pair in window], axis=0)
    return {f"loss/{lang}": float(s / c) for lang, s, c in zip(languages, *sums) if c > 0}


def _write_plan(run_dir: Path, plan, weights) -> None:
    """plan.json of the run folder; with dynamic weights it also holds their record and
    ``weight_segments`` (rewritten at every update point)."""
    if weights is not None:
        plan.dynamic = weights.to_dict()
    data = plan.to_dict()
    old = run_folder.read_json(run_dir / "plan.json") or {}
    if old.get("segments"):  # the --extend segments (run_folder.extend_segments) stay
        data["segments"] = old["segments"]
    (run_dir / "plan.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def _start_weights(session: Session, eval_step, resumed_record, primary: bool):
    """The dynamic-weight record at the start step: restored from the checkpoint, or new (with
    the base model's loss when the config needs it); None for static strategies."""
    weights = session.dataset.weights
    if weights is None:
        return None
    dyn = session.cfg.sampling.dynamic
    if dyn.signal == "eval" and not session.dataset.has_split(session.cfg.eval.split):
        raise ConfigError(
            f"sampling.dynamic.signal is 'eval' but the data has no {session.cfg.eval.split!r} "
            "split; add one to data.sources or use signal: train"
        )
    if resumed_record is not None and "dynamic" in resumed_record:
        weights.restore(resumed_record["dynamic"])
    elif dyn.needs_base_loss:
        probe = session.dataset.probe_batches(dyn.probe_examples, session.cfg.eval.batch_size)
        weights.set_base_loss(language_losses(session, probe, eval_step))
    session.dataset.set_weight_segments(weights.segments())
    if primary:
        _write_plan(session.run_dir, session.dataset.plan, weights)
        if weights.base_loss is not None:
            print("\n".join(data_lib.dynamic_lines(session.dataset.plan.dynamic)))
    return weights


def _update_weights(run: _Run, primary: bool) -> None:
    """An update point: record the per-language losses (train window or eval split), move the
    weights, hand the new segments to the data pipeline and the plan."""
    session, weights, step = run.session, run.weights, run.step
    cfg = session.cfg
    losses = weights.window_losses()
    if cfg.sampling.dynamic.signal == "eval":
        batches = session.dataset.eval_batches(cfg.eval.split, batch_size=cfg.eval.batch_size)
        losses = language_losses(session, batches, run.eval_step)
    new = weights.record(step, losses)
    session.dataset.set_weight_segments(weights.segments())
    # Tags sampling/weight/<language> and sampling/signal/<language> (the losses recorded).
    run.logger.log(step, "sampling", {"weight": new, "signal": dict(weights.updates[-1]["losses"])})
    if primary:
        _write_plan(session.run_dir, session.dataset.plan, weights)


def _schedule_and_plan(run_dir: Path, cfg: RunConfig, start: int, plan, extend: bool):
    """The optimizer (with the schedule of every ``--extend`` segment), ``plan.json`` and the
    segments of the run (``[{"start_step", "steps"}]``, one unless the run was extended)."""
    info = (run_folder.read_run_file(run_dir) or {}) if start > 0 else {}
    segments = list(info.get("segments") or [{"start_step": 0, "steps": cfg.train.steps}])
    plan_dict = plan.to_dict()
    old_plan = (run_folder.read_json(run_dir / "plan.json") or {}) if start > 0 else {}
    if old_plan.get("segments"):  # keep the earlier segments on a plain resume
        plan_dict["segments"] = old_plan["segments"]
    if extend and start > 0 and segments[-1]["steps"] != cfg.train.steps:
        segments, plan_dict = run_folder.extend_segments(
            run_dir, int(segments[-1]["steps"]), start, cfg.train.steps, plan
        )
    tx = make_optimizer(cfg.train, schedule=segmented_schedule(cfg.train, segments))
    return tx, plan_dict, segments


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
    if dropped:
        log.info("metrics.jsonl: dropped %d records written after step %d", dropped, start)


def _mesh_line(mesh) -> str:
    """``mesh data=8 fsdp=1 tensor=1 over 8 cpu devices (1 process)``: shown once at start."""
    axes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
    kinds = sorted({d.platform for d in mesh.devices.flat})
    return (
        f"mesh {axes} over {mesh.devices.size} {'/'.join(kinds)} device(s) "
        f"({jax.process_count()} process(es))"
    )


def _headline(result: dict[str, Any]) -> dict[str, float]:
    """Flat scalar metrics of an eval result for logs and best-checkpoint selection."""
    out = {}
    for key, value in result.get("overall", {}).items():
        if isinstance(value, (int, float)):
            out[key] = float(value)
    for metric, stats in result.get("gaps", {}).items():
        for key in ("mean", "gap", "worst"):
            value = stats.get(key) if isinstance(stats, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{metric}_{key}"] = float(value)
    return out


def _one_line(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if math.isfinite(v))


def _final_reports(run: _Run) -> None:
    """After the last step: reports of ``eval.split`` and ``eval.final_splits``, the weight plot
    of dynamic sampling, and the exported adapter."""
    session, step = run.session, run.step
    cfg, run_dir = session.cfg, session.run_dir
    splits = [cfg.eval.split] + [s for s in cfg.eval.final_splits if s != cfg.eval.split]
    for split_name in splits:
        if not session.dataset.has_split(split_name):
            log.warning("no %r split in the data: skipped in the final report", split_name)
            continue
        result = evaluate(session, split_name, run.eval_step)
        final = {run_folder.FINAL_FLAG: True, **_headline(result)}  # dropped on a rerun
        run.logger.log_eval(step, split_name, final, result)
        curve = None
        if split_name == cfg.eval.split:  # the curves end with this final evaluation
            curve = [*run.history, eval_lib.history_entry(result, step)]
        if jax.process_index() == 0:
            eval_lib.write_report(
                run_dir / "eval" / split_name,
                result,
                config_hash=cfg.hash(),
                step=step,
                plan=session.dataset.plan.to_dict(),
                history=curve,
                run_name=cfg.run.name,
                metric=cfg.eval.metric,
            )
            print(f"[{cfg.run.name}] {split_name}:\n{eval_lib.markdown_table(result)}")
    weights = session.dataset.weights
    if weights is not None and jax.process_index() == 0:
        segments = {"weight_segments": weights.to_dict()["weight_segments"], "steps": step}
        eval_lib.plot_weight_segments({cfg.run.name: segments}, run_dir / "eval" / "weights.png")
    if cfg.peft.method != "none":
        # Every process: the export gathers arrays sharded across hosts (a collective), then
        # process 0 writes.
        export_adapter(session, run_dir / "adapter")
