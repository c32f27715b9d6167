"""Dynamic language weights in a run: the record at the start step and each update point.

At the start the weight record is restored from the checkpoint, or made new (with the base
model's per-language loss on the probe batches when ``sampling.dynamic`` needs it). At each
update point the per-language losses (of the train window, or of ``eval.split``) move the
weights; the data pipeline then reads the new weight segments from that step on, and
``plan.json`` is rewritten with them.
"""

from __future__ import annotations

import json
from pathlib import Path

from langtune_jax import data as data_lib
from langtune_jax.config import ConfigError
from langtune_jax.train import run_folder
from langtune_jax.train.scoring import language_losses
from langtune_jax.train.session import Session
from langtune_jax.train.start import Run


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


def start_weights(session: Session, eval_step, resumed_record, primary: bool):
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


def update_weights(run: Run, primary: bool) -> None:
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
