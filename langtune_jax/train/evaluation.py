"""A run's evaluations: on cadence during training, and the final reports of a finished run.

Every ``train.eval_every`` steps the headline metrics of ``eval.split`` are logged and kept in
the eval history (saved with each checkpoint; with ``train.best_metric`` they pick the best
checkpoint). After the last step: the reports of ``eval.split`` and ``eval.final_splits``
(``eval/<split>/``, with ``predictions.jsonl`` for classification tasks), the weight plot of
dynamic sampling, and the exported adapter.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax

from langtune_jax import eval as eval_lib
from langtune_jax.train import run_folder
from langtune_jax.train.runs import export_adapter
from langtune_jax.train.scoring import evaluate
from langtune_jax.train.start import Run

log = logging.getLogger("langtune_jax")


def evaluate_on_cadence(run: Run, progress) -> dict[str, float] | None:
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


def final_reports(run: Run) -> None:
    """After the last step: reports of ``eval.split`` and ``eval.final_splits``, the weight plot
    of dynamic sampling, and the exported adapter."""
    session, step = run.session, run.step
    cfg, run_dir = session.cfg, session.run_dir
    splits = [cfg.eval.split] + [s for s in cfg.eval.final_splits if s != cfg.eval.split]
    for split_name in splits:
        if not session.dataset.has_split(split_name):
            log.warning("no %r split in the data: skipped in the final report", split_name)
            continue
        predictions = eval_lib.prediction_log(session.cfg.model.task, session.label_names)
        result = evaluate(session, split_name, run.eval_step, predictions=predictions)
        final = {run_folder.FINAL_FLAG: True, **_headline(result)}  # dropped on a rerun
        run.logger.log_eval(step, split_name, final, result)
        curve = None
        if split_name == cfg.eval.split:  # the curves end with this final evaluation
            curve = [*run.history, eval_lib.history_entry(result, step)]
        if jax.process_index() == 0:
            out = run_dir / "eval" / split_name
            files = {}
            if predictions is not None:
                files["predictions"] = eval_lib.save_predictions(
                    out, predictions, session.dataset, split_name, session.tokenizer
                )
            eval_lib.write_report(
                out,
                result,
                config_hash=cfg.hash(),
                step=step,
                plan=session.dataset.plan.to_dict(),
                history=curve,
                run_name=cfg.run.name,
                metric=cfg.eval.metric,
                files=files,
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
