"""Per-language evaluation: metrics accumulated over batches, gap statistics, reports and plots.

Typical use (the training loop does this on its eval cadence)::

    from langtune_jax.eval import PerLanguageAccumulator, history_entry, write_report

    acc = PerLanguageAccumulator("sequence-classification", languages, label_names)
    for batch, predictions in eval_batches:
        acc.update(predictions, batch["labels"], batch["language_id"], batch["example_mask"])
    report = acc.compute()
    history.append(history_entry(report, step))  # for the per-language eval curves
    write_report(run_dir / "eval" / split, report, config_hash=h, step=step,
                 plan=plan.to_dict(), history=history, run_name=name)

or, for predictions already in memory, ``per_language_report(predictions, labels, languages,
task)``. ``compare_runs([run_a, run_b])`` and ``plot_comparison`` put runs side by side.
"""

from langtune_jax.eval.accumulator import PerLanguageAccumulator, per_language_report
from langtune_jax.eval.compare import compare_runs
from langtune_jax.eval.metrics import (
    METRICS,
    PRIMARY_METRIC,
    SCALAR_METRICS,
    SCHEMA_VERSION,
    EntityScheme,
    MetricInfo,
    classification_metrics,
    entity_scores,
    f1_per_class,
    gap_statistics,
    lm_metrics,
    lm_token_stats,
    metric_info,
)
from langtune_jax.eval.plots import (
    plot_comparison,
    plot_eval_curves,
    plot_metric_by_language,
    plot_sampling_vs_data,
    plot_weight_segments,
)
from langtune_jax.eval.predictions import (
    PREDICTION_TASKS,
    PREDICTIONS_FILE,
    PredictionLog,
    one_class_note,
    prediction_log,
    save_predictions,
    split_rows,
    write_predictions,
)
from langtune_jax.eval.report import (
    find_report,
    history_entry,
    load_report,
    markdown_table,
    write_report,
)

__all__ = [
    "PREDICTIONS_FILE",
    "PREDICTION_TASKS",
    "PredictionLog",
    "one_class_note",
    "prediction_log",
    "save_predictions",
    "split_rows",
    "write_predictions",
    "METRICS",
    "PRIMARY_METRIC",
    "SCALAR_METRICS",
    "SCHEMA_VERSION",
    "EntityScheme",
    "MetricInfo",
    "PerLanguageAccumulator",
    "classification_metrics",
    "compare_runs",
    "entity_scores",
    "f1_per_class",
    "find_report",
    "gap_statistics",
    "history_entry",
    "lm_metrics",
    "lm_token_stats",
    "load_report",
    "markdown_table",
    "metric_info",
    "per_language_report",
    "plot_comparison",
    "plot_weight_segments",
    "plot_eval_curves",
    "plot_metric_by_language",
    "plot_sampling_vs_data",
    "write_report",
]
