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

    config.yaml   resolved config          plan.json      sampling plan
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

from langtune_jax import eval as eval_lib
from langtune_jax import peft as peft_lib
from langtune_jax.config import ConfigError, RunConfig, dump_config
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train.checkpoint import Checkpointer
from langtune_jax.train.logging_utils import MetricsLogger, Progress
from langtune_jax.train.optim import make_optimizer
from langtune_jax.train.runs import evaluate_run, export_adapter, export_run, load_run
from langtune_jax.train.session import (
    Session,
    apply_peft,
    build_session,
    evaluate,
    maybe_initialize_distributed,
    resolve_run_dir,
    sampling_plan,
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


def _check_resume_config(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to resume a run folder with a config that changes what is trained."""
    saved = run_dir / "config.yaml"
    if not saved.exists() or not (run_dir / "checkpoints").exists():
        return
    import yaml

    old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    new = cfg.to_dict()
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
            "use another --run-dir or restore the original settings"
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


def train(cfg: RunConfig, run_dir: str | Path | None = None) -> Path:
    """Train (or resume) the run that ``cfg`` describes; returns the run folder.

    Raises:
      ConfigError: the run folder holds a run with a different config.
      TrainingDiverged: the loss became NaN/inf or exploded (the last good checkpoint is kept).
      RunFolderError: the run folder cannot be written (the last good checkpoint is kept).
    """
    run_dir = resolve_run_dir(cfg, run_dir)
    try:
        return _train(cfg, run_dir)
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise RunFolderError(
            f"cannot write {err.filename or run_dir}: {err.strerror or err}; checkpoints already "
            f"in {run_dir / 'checkpoints'} are intact: free space or fix the permissions, then "
            "rerun the same command to resume"
        ) from err


def _train(cfg: RunConfig, run_dir: Path) -> Path:
    _check_resume_config(run_dir, cfg)
    # Before any JAX call: jax.process_index() would start the backend, and
    # jax.distributed.initialize refuses to run after that.
    maybe_initialize_distributed(cfg.mesh)
    primary = jax.process_index() == 0
    session = build_session(cfg, run_dir)
    tcfg = cfg.train
    plan = session.dataset.plan
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        (run_dir / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2), encoding="utf-8")
        print(plan.table())
        print(peft_lib.trainable_summary(session.model, session.split.trainable_filter))

    tx = make_optimizer(tcfg)
    split = session.split
    opt_state = tx.init(split.trainable)
    session.shardings["opt_state"] = mesh_lib.opt_state_shardings(
        tx, opt_state, session.shardings["trainable"], session.mesh
    )
    opt_state = jax.device_put(opt_state, session.shardings["opt_state"])

    best_metric = tcfg.best_metric
    lower_better = best_metric is not None and any(
        k in best_metric for k in ("loss", "perplexity", "gap")
    )
    ckpt = Checkpointer(
        run_dir / "checkpoints",
        keep=tcfg.keep_checkpoints,
        best_metric=best_metric,
        best_mode="min" if lower_better else "max",
    )
    start = 0
    restored = ckpt.restore_latest((split.trainable, opt_state, split.mutable))
    if restored is not None:
        start, (split.trainable, opt_state, split.mutable), _ = restored
        log.info("resumed from %s at step %d", ckpt.directory, start)

    train_step = make_train_step(
        split,
        tx,
        task=cfg.model.task,
        mesh=session.mesh,
        param_shardings=session.shardings,
        grad_accum_steps=tcfg.grad_accum_steps,
        routing=session.routing,
    )
    eval_step = make_eval_step(
        split,
        task=cfg.model.task,
        mesh=session.mesh,
        param_shardings=session.shardings,
        routing=session.routing,
    )
    logger = MetricsLogger(
        run_dir, trackers=cfg.run.trackers, name=cfg.run.name, config=cfg.to_dict()
    )
    history: list[dict[str, Any]] = []
    batches = session.dataset.train_batches(tcfg.batch_size, start_step=start)
    progress = Progress(start, tcfg.steps)
    progress.write(_mesh_line(session.mesh))
    logger.log(start, "sampling", {"weight": dict(session.dataset.probabilities)})
    step = start
    all_finite = jnp.bool_(True)
    window_loss, window_tokens, window_start = [], 0, time.perf_counter()
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
        record = {"step": step_now, "config_hash": cfg.hash(), "data_position": step_now}
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
                if step % tcfg.log_every == 0 or step == tcfg.steps:
                    losses = np.asarray(jax.device_get(window_loss))
                    if first_loss is None:
                        first_loss = float(losses[0])
                    _check_divergence(losses, step, first_loss, ckpt.directory)
                    elapsed = time.perf_counter() - window_start
                    rec = {
                        "loss": float(losses.mean()),
                        "grad_norm": float(metrics["grad_norm"]),
                        "learning_rate": float(_lr(tcfg, step)),
                        "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                    }
                    logger.log(step, "train", rec)
                    progress.update(
                        len(losses), loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}"
                    )
                    window_loss, window_tokens, window_start = [], 0, time.perf_counter()
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


def _lr(tcfg, step: int) -> float:
    from langtune_jax.train.optim import make_schedule

    return float(make_schedule(tcfg)(step))


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
        logger.log_eval(step, split_name, _headline(result), result)
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
    if cfg.peft.method != "none":
        # Every process: the export gathers arrays sharded across hosts (a collective), then
        # process 0 writes.
        export_adapter(session, run_dir / "adapter")
