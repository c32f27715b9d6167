"""PNG plots of evaluation reports: metric per language, sampling vs data, curves, run comparison.

Plots use matplotlib's object-oriented API with the Agg canvas (``matplotlib.figure.Figure``,
no ``pyplot``): no global backend switch, no GUI, safe in threads. matplotlib is imported inside
the plotting functions so that importing ``langtune_jax.eval`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langtune_jax.eval.formatting import column_label, display_scale, format_score


def _figure(n_groups: int, height: float = 4.2) -> Any:
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    fig = Figure(figsize=(max(7.0, 1.1 * n_groups + 3.0), height), dpi=120, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")  # Figure without pyplot renders with the Agg canvas
    return path


def plot_metric_by_language(
    report: Mapping[str, Any], path: str | Path, *, metric: str | None = None
) -> Path:
    """Bar per language of ``metric`` (default primary), values on bars, mean as a dashed line."""
    metric = metric or report["primary_metric"]
    langs = report["languages"]
    scale = display_scale(metric)
    raw = [report["per_language"][lang].get(metric) for lang in langs]
    vals = [math.nan if v is None else v * scale for v in raw]
    g = report["gaps"][metric]
    fig, ax = _figure(len(langs))
    colors = [
        "tab:green"
        if lang == g["best_language"]
        else "tab:red"
        if lang == g["worst_language"]
        else "tab:blue"
        for lang in langs
    ]
    bars = ax.bar(langs, vals, color=colors)
    ax.bar_label(bars, labels=[format_score(v / scale, metric) for v in vals], padding=2)
    ax.axhline(
        g["mean"] * scale,
        color="gray",
        ls="--",
        lw=1,
        label=f"mean {format_score(g['mean'], metric)}",
    )
    ax.set_xlabel("language")
    ax.set_ylabel(column_label(metric))
    if scale == 100.0:
        ax.set_ylim(0, 110)
    else:
        ax.set_ylim(
            0,
            max(v for v in vals if math.isfinite(v)) * 1.15 if any(map(math.isfinite, vals)) else 1,
        )
    ax.set_title(
        f"{metric} per language ({report['task']})\ngap {format_score(g['gap'], metric)} "
        f"(best {g['best_language']}, worst {g['worst_language']})"
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plan_shares(plan: Any) -> dict[str, tuple[float, float]]:
    """Each language's data share and sampling share, from any accepted plan layout.

    Args:
      plan: a ``SamplingPlan``, its ``to_dict()`` (plan.json: ``{"languages": [{"language",
        "share", "target", "probability", ...}]}``), or ``{language: {"data_share",
        "probability"}}``.

    Returns:
      ``{language: (data share, sampling share)}``, both in the plan's unit: the sampling share
      is the strategy's ``target`` when the plan has one, else the draw ``probability``.

    Raises:
      ValueError: a row lacks the language, the share or the probability; or no languages.
    """
    if hasattr(plan, "to_dict"):
        plan = plan.to_dict()
    rows: Any = plan.get("languages", plan) if isinstance(plan, Mapping) else plan
    if isinstance(rows, Mapping):
        rows = [{"language": k, **v} for k, v in rows.items() if isinstance(v, Mapping)]
    out = {}
    for row in rows:
        share = row.get("data_share", row.get("share"))
        # The strategy's target is in the plan's unit, like the share (with unit tokens the
        # per-draw probability is in examples, so it is not comparable with a token share).
        prob = row.get("target", row.get("probability"))
        if share is None or prob is None or "language" not in row:
            raise ValueError(
                f"sampling plan row {dict(row)} lacks language / data_share (or share) / "
                "probability: pass SamplingPlan.to_dict() or {language: {data_share, probability}}"
            )
        out[str(row["language"])] = (float(share), float(prob))
    if not out:
        raise ValueError("sampling plan has no languages")
    return out


def plot_sampling_vs_data(plan: Any, path: str | Path) -> Path:
    """Per language, its share of the training data next to the share sampling gives it.

    Both bars are in the plan's unit (``sampling.unit``: examples or tokens), so they compare:
    with ``unit: tokens`` they are token shares (the strategy's target), not draw probabilities.
    """
    import numpy as np

    shares = plan_shares(plan)
    plan_dict = plan.to_dict() if hasattr(plan, "to_dict") else plan
    unit = plan_dict.get("unit", "examples") if isinstance(plan_dict, Mapping) else "examples"
    langs = list(shares)
    x = np.arange(len(langs))
    fig, ax = _figure(len(langs))
    w = 0.38
    strategy = (
        plan.get("strategy") if isinstance(plan, Mapping) else getattr(plan, "strategy", None)
    )
    for i, (label, color) in enumerate(
        [(f"data share ({unit})", "tab:gray"), (f"sampling share ({unit})", "tab:orange")]
    ):
        vals = [100 * shares[lang][i] for lang in langs]
        bars = ax.bar(x + (i - 0.5) * w, vals, w, label=label, color=color)
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    ax.set_xticks(x, langs)
    ax.set_xlabel("language")
    ax.set_ylabel(f"% of {unit}")
    ax.set_ylim(0, max(100 * max(s) for s in shares.values()) * 1.18)
    ax.set_title(
        f"sampling vs data share, in {unit}" + (f" (strategy: {strategy})" if strategy else "")
    )
    ax.legend()
    return _save(fig, path)


def _history_points(
    history: Sequence[Mapping[str, Any]], metric: str
) -> dict[str, tuple[list[int], list[float]]]:
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for entry in sorted(history, key=lambda e: e["step"]):
        per_lang = entry.get("per_language")
        if per_lang is None:
            per_lang = {k: v for k, v in entry.items() if k != "step"}
        for lang, v in per_lang.items():
            v = v.get(metric) if isinstance(v, Mapping) else v
            if v is None:
                continue
            xs, ys = curves.setdefault(str(lang), ([], []))
            xs.append(int(entry["step"]))
            ys.append(float(v))
    return curves


def plot_eval_curves(
    history: Sequence[Mapping[str, Any]], path: str | Path, *, metric: str
) -> Path:
    """``metric`` of each language over training steps, one line per language.

    Args:
      history: ``[{"step": int, "per_language": {language: score or {metric: score}}}]``
        (a flat ``{"step": s, language: score, ...}`` also works).
      path: the PNG to write.
      metric: the metric name (axis label, scaling, and the key in nested entries).
    """
    curves = _history_points(history, metric)
    if not curves:
        raise ValueError(f"history has no per-language {metric!r} values to plot")
    scale = display_scale(metric)
    fig, ax = _figure(6)
    for lang, (xs, ys) in curves.items():
        ys_s = [y * scale for y in ys]
        ax.plot(xs, ys_s, marker="o", ms=3, label=lang)
        ax.annotate(
            f"{lang} {format_score(ys[-1], metric)}",
            (xs[-1], ys_s[-1]),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=8,
            va="center",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel(column_label(metric))
    ax.set_title(f"{metric} per language during training")
    ax.grid(alpha=0.3)
    ax.margins(x=0.1)  # room for the end-of-line labels
    ax.legend(title="language", fontsize=8)
    return _save(fig, path)


def plot_comparison(data: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars of :func:`compare_runs` data: per language (then mean), one bar per run.

    Args:
      data: the second value returned by :func:`compare_runs`.
      path: the PNG to write.
    """
    import numpy as np

    metric, runs = data["metric"], data["runs"]
    groups = [*data["languages"], "mean"]
    scale = display_scale(metric)
    x = np.arange(len(groups))
    w = 0.8 / len(runs)
    fig, ax = _figure(len(groups) * max(1, len(runs) // 2), height=4.6)
    for i, run in enumerate(runs):
        vals = [data["values"][run].get(g) if g != "mean" else data["mean"][run] for g in groups]
        heights = [math.nan if v is None else v * scale for v in vals]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * w, heights, w, label=run)
        ax.bar_label(bars, labels=[format_score(v, metric) for v in vals], padding=2, fontsize=8)
    ax.set_xticks(x, groups)
    ax.axvline(len(groups) - 1.5, color="gray", lw=0.8, ls=":")  # languages | mean
    ax.set_xlabel("language")
    ax.set_ylabel(column_label(metric))
    finite = [
        h
        for run in runs
        for h in [*(data["values"][run].values()), data["mean"][run]]
        if h is not None
    ]
    ax.set_ylim(0, (110 if scale == 100.0 else max(finite, default=1) * 1.15))
    gaps = ", ".join(f"{run} {format_score(data['gap'][run], metric)}" for run in runs)
    ax.set_title(f"{metric} per language by run\ngap max-min: {gaps}")
    ax.legend(title="run", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_weight_segments(runs: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Language weights over training steps, as step functions (dynamic sampling).

    Args:
      runs: run name -> ``{"weight_segments": [{"start_step", "weights"}], "steps": int}`` (the
        plan.json view); one colour per language, one line style per run.
      path: the PNG to write.
    """
    styles = ["-", "--", ":", "-."]
    languages = list(
        dict.fromkeys(
            lang for r in runs.values() for seg in r["weight_segments"] for lang in seg["weights"]
        )
    )
    fig, ax = _figure(8, height=4.4)
    colors = {lang: f"C{i % 10}" for i, lang in enumerate(languages)}
    for k, (name, run) in enumerate(runs.items()):
        segments = run["weight_segments"]
        end = max(int(run.get("steps") or 0), segments[-1]["start_step"] + 1)
        xs = [seg["start_step"] for seg in segments] + [end]
        for lang in languages:
            ys = [seg["weights"].get(lang, math.nan) for seg in segments]
            label = lang if len(runs) == 1 else f"{lang} ({name})"
            ax.step(
                xs, ys + ys[-1:], where="post", color=colors[lang], ls=styles[k % 4], label=label
            )
    ax.set_xlabel("step")
    ax.set_ylabel("sampling probability")
    ax.set_ylim(0, None)
    ax.set_title(
        "language weights over training" + (f" ({next(iter(runs))})" if len(runs) == 1 else "")
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _save(fig, path)
