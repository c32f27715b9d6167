"""The training loop: from a validated :class:`~langtune_jax.config.RunConfig` to a run folder.

``train(config)`` does, in order: join the other hosts (multi-host runs), build the mesh, read and
validate the data, print the sampling plan, load the pretrained model, wrap it with the PEFT method,
split it into trainable / frozen / mutable state placed on the mesh, restore the newest checkpoint
of the run folder if there is one (exact resume: the data position is the step number), then run the
jitted step with a progress bar, ``metrics.jsonl`` + TensorBoard logging, per-language evaluation on
cadence, checkpoints, a SIGTERM / SIGINT handler (save, then exit 0: preemptible Cloud TPU VMs,
Ctrl-C) and a divergence guard (a NaN/inf loss, or one past ``DIVERGENCE_FACTOR`` times the first
step's: stop with a clear message; the last good checkpoint stays). At the end it writes the
per-language reports and exports the adapter. Set-up is :mod:`langtune_jax.train.session`;
reopening a finished run (eval, export) is :mod:`langtune_jax.train.runs`.

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
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from langtune_jax import data as data_lib
from langtune_jax import eval as eval_lib
from langtune_jax import peft as peft_lib
from langtune_jax.config import ConfigError, RunConfig, dump_config
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train import run_folder
from langtune_jax.train.checkpoint import Checkpointer
from langtune_jax.train.logging_utils import MetricsLogger, Progress
from langtune_jax.train.optim import make_optimizer, segmented_schedule
from langtune_jax.train.runs import evaluate_run, export_adapter, export_run, load_run
from langtune_jax.train.session import (
    Session,
    apply_peft,
    build_session,
    evaluate,
    language_losses,
    maybe_initialize_distributed,
    resolve_run_dir,
    sampling_plan,
    warn_frozen_fresh,
)
from langtune_jax.train.step import make_eval_step, make_train_step

# Set-up and run-folder functions live in session.py / runs.py; importable from here as before.
__all__ = [
    "RunFolderError",
    "Session",
    "TrainingDiverged",
    "apply_peft",
    "build_session",
    "evaluate",
    "evaluate_run",
    "export_adapter",
    "export_run",
    "load_run",
    "maybe_initialize_distributed",
    "resolve_run_dir",
    "sampling_plan",
    "train",
]

log = logging.getLogger("langtune_jax")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or exploded; the last good checkpoint is left as it was."""


class RunFolderError(RuntimeError):
    """The run folder cannot be written (permissions, full disk); saved checkpoints are intact."""


def _check_resume_config(run_dir: Path, cfg: RunConfig, extend: bool = False) -> None:
    """Refuse to resume a run folder with a config that changes what is trained.

    ``train.steps`` may change only with ``extend`` (``--extend``).
    """
    saved = run_dir / "config.yaml"
    if not saved.exists() or not (run_dir / "checkpoints").exists():
        return
    import yaml

    old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    new = cfg.to_dict()
    old_steps = old.get("train", {}).get("steps")
    if old_steps is not None and any((run_dir / "checkpoints").iterdir()):
        run_folder.check_steps_change(run_dir, old_steps, cfg.train.steps, extend)
    # Cadence, step count and evaluation may change on resume; the rest may not.
    free = {("train", k) for k in ("steps", "log_every", "eval_every", "checkpoint_every")}
    free |= {("eval", k) for k in new["eval"]}
    free |= {("run", k) for k in ("output_dir", "name", "trackers")}
    # How processes meet is per launch (config.yaml holds process 0's process_id and port).
    free |= {
        ("mesh", k) for k in ("distributed", "coordinator_address", "num_processes", "process_id")
    }
    diffs = [
        f"{section}.{key}: {old.get(section, {}).get(key)!r} -> {value!r}"
        for section, values in new.items()
        for key, value in values.items()
        if (section, key) not in free and old.get(section, {}).get(key) != value
    ]
    if diffs:
        raise ConfigError(
            f"{run_dir} holds checkpoints of a run with a different config ({'; '.join(diffs)}); "
            "use another --run-dir, restore the original settings, or --restart to move the old "
            "run aside and start over"
        )


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
    run_folder.check_run_folder(run_dir)
    if not restart:
        _check_resume_config(run_dir, cfg, extend)
    # Before any JAX call: jax.process_index() would start the backend, and
    # jax.distributed.initialize refuses to run after that.
    maybe_initialize_distributed(cfg.mesh)
    lock = _claim_run_folder(run_dir, restart)
    try:
        return _train(cfg, run_dir, extend)
    finally:
        lock.release()


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
    primary = jax.process_index() == 0
    session = build_session(cfg, run_dir)
    tcfg = cfg.train
    plan = session.dataset.plan

    tx = make_optimizer(tcfg)
    split = session.split
    opt_state = tx.init(split.trainable)
    session.shardings["opt_state"] = mesh_lib.opt_state_shardings(
        tx, opt_state, session.shardings["trainable"], session.mesh
    )
    opt_state = jax.device_put(opt_state, session.shardings["opt_state"])

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
    fp = run_folder.fingerprint(session, opt_state)
    labels = list(session.dataset.labels or [])
    try:
        start, state, history, resumed_record = run_folder.restore_or_refuse(
            ckpt, run_dir, (split.trainable, opt_state, split.mutable), fp, labels
        )
    except Exception:
        ckpt.close()
        raise
    if state is not None:
        split.trainable, opt_state, split.mutable = state
        log.info("resumed from %s at step %d", ckpt.directory, start)
    tx, plan_dict, segments = _schedule_and_plan(run_dir, cfg, start, plan, extend)
    if primary:
        _write_run_files(run_dir, cfg, plan_dict, fp, labels, segments, start)
        print(plan.table())
        print(peft_lib.trainable_summary(session.model, session.split.trainable_filter))
        warn_frozen_fresh(session.model, session.split.trainable_filter)

    train_step = make_train_step(
        split,
        tx,
        task=cfg.model.task,
        mesh=session.mesh,
        param_shardings=session.shardings,
        grad_accum_steps=tcfg.grad_accum_steps,
        routing=session.routing,
        num_languages=len(session.dataset.languages),
    )
    eval_step = make_eval_step(
        split,
        task=cfg.model.task,
        mesh=session.mesh,
        param_shardings=session.shardings,
        routing=session.routing,
    )
    weights = _start_weights(session, eval_step, resumed_record, primary)
    logger = MetricsLogger(
        run_dir, trackers=cfg.run.trackers, name=cfg.run.name, config=cfg.to_dict()
    )
    batches = session.dataset.train_batches(tcfg.batch_size, start_step=start)
    progress = Progress(start, tcfg.steps)
    progress.write(_mesh_line(session.mesh))
    if start == 0:  # a resumed run's log has it already
        logger.log(start, "sampling", {"weight": session.dataset.weights_at(start)})
    step = start
    all_finite = jnp.bool_(True)
    window_loss, window_tokens, window_start = [], 0, time.perf_counter()
    window_languages: list[tuple[Any, Any]] = []
    first_loss: float | None = None

    saved = [ckpt.all_steps()[-1] if ckpt.all_steps() else -1]

    def save(step_now: int, metrics: dict[str, float] | None = None) -> None:
        if saved[0] == step_now:
            return
        if not bool(all_finite):
            raise TrainingDiverged(
                f"loss became NaN/inf before step {step_now}; not saving. Lower "
                "train.learning_rate or set train.max_grad_norm; the last good checkpoint in "
                f"{ckpt.directory} is intact"
            )
        record = {
            "step": step_now,
            "config_hash": cfg.hash(),
            "data_position": step_now,
            "fingerprint": fp,
            "history": list(history),
            "metrics": metrics,
        }
        if weights is not None:
            record["dynamic"] = weights.state()
        ckpt.save(step_now, (split.trainable, opt_state, split.mutable), record, metrics)
        saved[0] = step_now

    try:
        with _Preemption() as preemption:
            while step < tcfg.steps:
                local = next(batches)
                window_tokens += int(np.sum(local["attention_mask"])) * jax.process_count()
                batch = mesh_lib.put_batch(local, session.mesh)
                split.trainable, opt_state, split.mutable, metrics = train_step(
                    split.trainable, opt_state, split.mutable, split.frozen, batch
                )
                step += 1
                all_finite = all_finite & jnp.isfinite(metrics["loss"])
                window_loss.append(metrics["loss"])
                language_sums = (metrics["language_loss_sum"], metrics["language_count"])
                window_languages.append(language_sums)
                if weights is not None:
                    weights.add_step(*language_sums)
                if step % tcfg.log_every == 0 or step == tcfg.steps:
                    losses = np.asarray(jax.device_get(window_loss))
                    if first_loss is None:
                        first_loss = float(losses[0])
                    _check_divergence(losses, step, first_loss, ckpt.directory)
                    elapsed = time.perf_counter() - window_start
                    rec = {
                        "loss": float(losses.mean()),
                        "grad_norm": float(metrics["grad_norm"]),
                        "learning_rate": float(_lr(tcfg, step, segments)),
                        "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                        **_language_means(session.dataset.languages, window_languages),
                    }
                    logger.log(step, "train", rec)
                    progress.update(
                        len(losses), loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}"
                    )
                    window_loss, window_tokens, window_start = [], 0, time.perf_counter()
                    window_languages = []
                if weights is not None and weights.due(step) and step < tcfg.steps:
                    _update_weights(session, weights, step, eval_step, logger, primary)
                    batches = session.dataset.train_batches(tcfg.batch_size, start_step=step)
                eval_metrics = None
                if tcfg.eval_every and step % tcfg.eval_every == 0 and step < tcfg.steps:
                    result = evaluate(session, cfg.eval.split, eval_step)
                    eval_metrics = _headline(result)
                    history.append(eval_lib.history_entry(result, step))
                    logger.log_eval(step, cfg.eval.split, eval_metrics, result)
                    progress.write(f"step {step}: " + _one_line(eval_metrics))
                if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0:
                    save(step, eval_metrics)
                if preemption.requested:
                    save(step, eval_metrics)
                    ckpt.wait()
                    progress.write(
                        f"stopped by {preemption.requested}: saved step {step} to "
                        f"{ckpt.directory}; rerun the same command to resume"
                    )
                    break
            else:
                save(step)
    finally:
        progress.close()
        ckpt.close()

    if step >= tcfg.steps:
        _final_reports(session, cfg, run_dir, eval_step, plan, history, logger, step)
    logger.close()
    return run_dir


def _language_means(languages: list[str], window: list[tuple[Any, Any]]) -> dict[str, float]:
    """``loss/<language>``: mean train loss per language over the steps of a log window."""
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


def _update_weights(session: Session, weights, step: int, eval_step, logger, primary) -> None:
    """An update point: record the per-language losses (train window or eval split), move the
    weights, hand the new segments to the data pipeline and the plan."""
    cfg = session.cfg
    losses = weights.window_losses()
    if cfg.sampling.dynamic.signal == "eval":
        batches = session.dataset.eval_batches(cfg.eval.split, batch_size=cfg.eval.batch_size)
        losses = language_losses(session, batches, eval_step)
    new = weights.record(step, losses)
    session.dataset.set_weight_segments(weights.segments())
    # Tags sampling/weight/<language> and sampling/signal/<language> (the losses recorded).
    logger.log(step, "sampling", {"weight": new, "signal": dict(weights.updates[-1]["losses"])})
    if primary:
        _write_plan(session.run_dir, session.dataset.plan, weights)


def _lr(tcfg, step: int, segments) -> float:
    return float(segmented_schedule(tcfg, segments)(step))


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


def _final_reports(session, cfg, run_dir, eval_step, plan, history, logger, step) -> None:
    splits = [cfg.eval.split] + [s for s in cfg.eval.final_splits if s != cfg.eval.split]
    for split_name in splits:
        if not session.dataset.has_split(split_name):
            log.warning("no %r split in the data: skipped in the final report", split_name)
            continue
        result = evaluate(session, split_name, eval_step)
        final = {run_folder.FINAL_FLAG: True, **_headline(result)}  # dropped on a rerun
        logger.log_eval(step, split_name, final, result)
        curve = None
        if split_name == cfg.eval.split:  # the curves end with this final evaluation
            curve = [*history, eval_lib.history_entry(result, step)]
        if jax.process_index() == 0:
            out = run_dir / "eval" / split_name
            eval_lib.write_report(
                out,
                result,
                config_hash=cfg.hash(),
                step=step,
                plan=plan.to_dict(),
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
