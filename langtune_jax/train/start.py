"""A run's start in its claimed folder, up to the first step.

The run folder's checkpointer (keeping the best checkpoint by ``train.best_metric``); the newest
checkpoint restored into the session's split (exact resume: the data position is the step number)
or step 0, refused when the run's fingerprint changed; the optimizer with the schedule of every
``--extend`` segment, and the plan; the jitted train and eval steps; and :class:`Run`, the record of
the run in progress that the loop (:mod:`langtune_jax.train.loop`) then updates and every
checkpoint saves.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from langtune_jax import data as data_lib
from langtune_jax import eval as eval_lib
from langtune_jax import peft as peft_lib
from langtune_jax.config import RunConfig, TrainConfig
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train import run_folder
from langtune_jax.train.checkpoint import Checkpointer
from langtune_jax.train.logging_utils import MetricsLogger
from langtune_jax.train.optim import make_optimizer, segmented_schedule
from langtune_jax.train.session import Session, warn_frozen_fresh
from langtune_jax.train.step import make_eval_step, make_train_step

log = logging.getLogger("langtune_jax")


def checkpointer(run_dir: Path, tcfg: TrainConfig) -> Checkpointer:
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


class Restored(NamedTuple):
    """Where a run starts: the newest checkpoint of its folder, or step 0."""

    opt_state: Any  # the optimizer state of the trainable leaves, on the mesh
    shardings: dict[str, Any]  # the session's state shardings plus "opt_state"
    fingerprint: dict[str, Any]  # run_folder.fingerprint of this run's inputs
    step: int  # the restored step; 0 for a new run
    history: list[dict[str, Any]]  # the eval history saved with that checkpoint
    record: dict[str, Any] | None  # that checkpoint's whole record; None for a new run


def restore(session: Session, ckpt: Checkpointer) -> Restored:
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
        steps = session.cfg.train.steps
        if start >= steps:
            log.info(
                "the run in %s is already trained to step %d of %d: nothing to train; the final "
                "evaluation and the export run again (--extend with a larger train.steps trains "
                "on, --restart starts over)",
                session.run_dir,
                start,
                steps,
            )
        else:
            log.info("resumed from %s at step %d of %d", ckpt.directory, start, steps)
    return Restored(opt_state, shardings, fp, start, history, record)


def schedule_and_plan(run_dir: Path, cfg: RunConfig, start: int, plan, extend: bool):
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


def print_start(session: Session) -> None:
    """Print the sampling plan and the trainable parameters; warn about random frozen modules."""
    print(session.dataset.plan.table())
    print(peft_lib.trainable_summary(session.model, session.split.trainable_filter))
    warn_frozen_fresh(session.model, session.split.trainable_filter)


def _loss_languages(cfg: RunConfig, session: Session) -> int | None:
    """How many languages the step sums the loss for (``loss/<lang>``, dynamic weights); None
    where a loss has no one language (``RunConfig.losses_have_one_language``)."""
    return len(session.dataset.languages) if cfg.losses_have_one_language() else None


def compile_steps(
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


@dataclasses.dataclass
class Run:
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
