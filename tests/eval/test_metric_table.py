"""The metric table: one direction, fraction flag and digit count per metric, read everywhere."""

import pytest

from langtune_jax.eval import METRICS, SCALAR_METRICS, metric_info
from langtune_jax.eval.formatting import column_label, display_scale, format_score
from langtune_jax.eval.metrics import metric_names
from langtune_jax.tasks import TASKS


def test_every_reported_metric_has_a_table_entry():
    for task in TASKS:
        assert set(SCALAR_METRICS[task]) <= set(METRICS), task


@pytest.mark.parametrize("task", TASKS)
def test_direction_of_every_name_best_metric_may_take(task):
    # Smaller is better for losses and perplexities, and for every gap between languages.
    for name in metric_names(task, statistics=True):
        lower = name in ("loss", "perplexity") or name.startswith(("loss_", "perplexity_"))
        lower = lower or name.endswith("_gap")
        assert metric_info(name).higher_is_better is not lower, name


def test_statistics_keep_the_unit_of_their_metric():
    assert metric_info("macro_f1_gap").fraction and metric_info("macro_f1_gap").digits == 1
    assert metric_info("perplexity_worst") == metric_info("perplexity")
    assert metric_info("accuracy_mean") == metric_info("accuracy")


def test_display_follows_the_table():
    assert [format_score(0.12345, m) for m in ("accuracy", "loss", "perplexity")] == [
        "12.3",
        "0.123",
        "0.12",
    ]
    assert format_score(-0.05, "f1", signed=True) == "-5.0"
    assert format_score(0.5, "loss", signed=True) == "+0.500"
    assert format_score(None, "f1") == format_score(float("nan"), "loss") == "-"
    assert (display_scale("recall"), display_scale("perplexity")) == (100.0, 1.0)
    assert (column_label("token_accuracy"), column_label("loss")) == (
        "token_accuracy (x100)",
        "loss",
    )


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown metric 'bleu'.*macro_f1"):
        metric_info("bleu")
    with pytest.raises(ValueError, match="unknown metric"):
        metric_info("bleu_gap")
