"""How scores are shown in tables and plots: fractions x 100, digits per metric, markdown tables.

Shared by :mod:`langtune_jax.eval.report` (``report.md``), :mod:`langtune_jax.eval.compare` and
:mod:`langtune_jax.eval.plots`.
"""

from __future__ import annotations

import math

# Scores outside [0, 1] are shown as they are; fractions are shown x 100 (percentage points).
_NOT_FRACTIONS = frozenset({"loss", "perplexity"})


def _scale(metric: str) -> float:
    return 1.0 if metric in _NOT_FRACTIONS else 100.0


def _fmt(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    digits = 3 if metric == "loss" else (2 if metric == "perplexity" else 1)
    return f"{value * _scale(metric):{'+' if signed else ''}.{digits}f}"


def _md(rows: list[list[str]]) -> str:
    """A markdown pipe table with aligned columns; first column left, others right aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    cells = [
        [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        for r in rows
    ]
    rule = [("-" * w) if i == 0 else ("-" * (w - 1) + ":") for i, w in enumerate(widths)]
    return "\n".join("| " + " | ".join(r) + " |" for r in [cells[0], rule, *cells[1:]])
