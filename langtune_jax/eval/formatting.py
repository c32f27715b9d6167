"""How scores are shown in tables and plots: fractions x 100, digits per metric, markdown tables.

What to show for a metric (x 100 or not, how many decimals) comes from the metric table,
:data:`langtune_jax.eval.metrics.METRICS`. Shared by :mod:`langtune_jax.eval.report`
(``report.md``), :mod:`langtune_jax.eval.compare` and :mod:`langtune_jax.eval.plots`.
"""

from __future__ import annotations

import math

from langtune_jax.eval.metrics import metric_info


def display_scale(metric: str) -> float:
    """The factor a score of ``metric`` is shown with: 100 for fractions, else 1."""
    return 100.0 if metric_info(metric).fraction else 1.0


def column_label(metric: str) -> str:
    """A table column or plot axis title: the metric name, with `` (x100)`` for fractions."""
    return metric + (" (x100)" if metric_info(metric).fraction else "")


def format_score(value: float | None, metric: str, signed: bool = False) -> str:
    """A raw score as a table shows it: scaled (:func:`display_scale`), the metric's digits.

    Args:
      value: the raw score (a fraction in [0, 1], nats, a perplexity); None, NaN and inf show
        as ``-``.
      metric: the metric's name in :data:`~langtune_jax.eval.metrics.METRICS`.
      signed: always print the sign (for deltas).
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    digits = metric_info(metric).digits
    return f"{value * display_scale(metric):{'+' if signed else ''}.{digits}f}"


def markdown_rows(rows: list[list[str]]) -> str:
    """A markdown pipe table with aligned columns; first column left, others right aligned.

    Args:
      rows: the header row, then the body rows, all of the same length.
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    cells = [
        [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        for r in rows
    ]
    rule = [("-" * w) if i == 0 else ("-" * (w - 1) + ":") for i, w in enumerate(widths)]
    return "\n".join("| " + " | ".join(r) + " |" for r in [cells[0], rule, *cells[1:]])
