"""Evaluation reports on disk: ``report.json``, a markdown table, PNG plots; comparison of runs.

``write_report(run_dir / "eval" / split, report, config_hash=..., step=...)`` writes:

* ``report.json`` — the report of :func:`langtune_jax.eval.per_language_report` (or
  ``PerLanguageAccumulator.compute()``) plus run context. Schema (``schema_version`` 1)::

      schema_version    int, 1; readers refuse other versions
      task              "sequence-classification" | "token-classification" | "causal-lm"
      primary_metric    "macro_f1" | "f1" | "perplexity": the metric tables and plots lead with
      metrics           [str], the scalar metrics of this task, primary first
      higher_is_better  {metric: bool}; false for loss and perplexity
      languages         [str], languages with evaluation data, in evaluation order
      empty_languages   [str], languages that were expected but had no evaluation data
      source_language   str | null, the source of a cross-lingual transfer run
      label_names       [str] | null, class names or entity tags (null for causal LM)
      per_language      {language: {num_examples, <metric>: float, ...,
                         per_class_f1 {label: f1} (sequence classification) |
                         per_type_f1 {type: f1}, num_tokens, num_true_entities,
                         num_pred_entities (token classification) | num_tokens (causal LM)}}
      overall           same keys, all examples of all languages pooled
      gaps              {metric: {num_languages, best, best_language, worst, worst_language,
                         mean, gap, relative_gap_pct, std[, transfer_gap]}}
      run_name          str | null, the run's name (run.name); compare tables use it
      config_hash       str | null, hash of the resolved run config
      step              int | null, the training step the evaluated weights come from
      plan              dict | null, the sampling plan (plan.json of the run)
      history           [{step, per_language: {language: score}}] | null, earlier evaluations
      files             {kind: file name}, the other files written beside report.json

  Scores are fractions in [0, 1] (loss in nats, perplexity as is); a score that is undefined
  (NaN) or infinite is written as ``null`` so the file is strict JSON.
* ``report.md`` — :func:`markdown_table` (scores x 100 for fractions).
* ``metric_by_language.png`` — bars of the primary metric per language, mean line, gap in title.
* ``sampling_vs_data.png`` — per language, its share of the data vs its sampling probability
  (when a plan is given).
* ``eval_curves.png`` — the primary metric of each language over training steps (when a history
  with at least one entry is given).

A run folder keeps one report per split in ``RUN_DIR/eval/<split>/`` (``RUN_DIR/eval/`` itself
also works). :func:`compare_runs` reads the report of each run and builds the
side-by-side table (languages, then mean and gap rows; one column per run, then the change
against the first run); :func:`plot_comparison` draws it as grouped bars.

Plots use matplotlib's object-oriented API with the Agg canvas (``matplotlib.figure.Figure``,
no ``pyplot``): no global backend switch, no GUI, safe in threads. matplotlib is imported inside
the plotting functions so that importing ``langtune_jax.eval`` stays fast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langtune_jax.eval.metrics import LOWER_IS_BETTER, SCHEMA_VERSION, gap_statistics

REPORT_FILE = "report.json"
TABLE_FILE = "report.md"
BARS_FILE = "metric_by_language.png"
SAMPLING_FILE = "sampling_vs_data.png"
CURVES_FILE = "eval_curves.png"

# Scores outside [0, 1] are shown as they are; fractions are shown x 100 (percentage points).
_NOT_FRACTIONS = frozenset({"loss", "perplexity"})


def _scale(metric: str) -> float:
    return 1.0 if metric in _NOT_FRACTIONS else 100.0


def _fmt(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    digits = 3 if metric == "loss" else (2 if metric == "perplexity" else 1)
    return f"{value * _scale(metric):{'+' if signed else ''}.{digits}f}"


def _json_safe(x: Any) -> Any:
    """Plain JSON types; NaN / inf -> None; numpy scalars -> Python; dataclass-like -> dict."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "to_dict"):
        return _json_safe(x.to_dict())
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()  # numpy scalar
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------- files


def write_report(
    out_dir: str | Path,
    report: Mapping[str, Any],
    *,
    config_hash: str | None,
    step: int | None,
    plan: Any = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    run_name: str | None = None,
    metric: str | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``out_dir`` (created).

    Args:
      out_dir: the folder that receives the files, normally ``RUN_DIR/eval/<split>``.
      report: from :func:`~langtune_jax.eval.per_language_report` or
        ``PerLanguageAccumulator.compute()``.
      config_hash: hash of the resolved run config (ties the report to its config).
      step: the training step of the evaluated weights.
      plan: the sampling plan: ``SamplingPlan``, its ``to_dict()`` (plan.json), or
        ``{language: {"data_share", "probability"}}``. Adds ``sampling_vs_data.png``.
      history: earlier evaluations, ``[{"step": int, "per_language": {language: score or
        {metric: score}}}]`` (oldest first; the current one may be included). Adds
        ``eval_curves.png``.
      run_name: the run's name, shown by :func:`compare_runs` (default there: the folder name).
      metric: the headline metric of the plots and the table's summary line (e.g. the config's
        ``eval.metric``); default the report's primary metric.

    Returns:
      ``{"report": path, "table": path, "bars": path[, "sampling", "curves"]}``.
    """
    metric = metric or report["primary_metric"]
    if metric not in report["metrics"]:
        raise ValueError(
            f"metric {metric!r} is not in this {report['task']} report: use one of "
            f"{', '.join(report['metrics'])}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / REPORT_FILE, "table": out / TABLE_FILE, "bars": out / BARS_FILE}
    plot_metric_by_language(report, paths["bars"], metric=metric)
    if plan is not None:
        paths["sampling"] = plot_sampling_vs_data(plan, out / SAMPLING_FILE)
    history = list(history) if history is not None else None
    if history:
        paths["curves"] = plot_eval_curves(history, out / CURVES_FILE, metric=metric)
    columns = [metric] + [m for m in report["metrics"] if m != metric]
    paths["table"].write_text(markdown_table(report, columns) + "\n")
    full = {
        **report,
        "run_name": run_name,
        "config_hash": config_hash,
        "step": step,
        "plan": plan,
        "history": history,
        "files": {k: p.name for k, p in paths.items() if k != "report"},
    }
    tmp = paths["report"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(full), indent=2, allow_nan=False) + "\n")
    tmp.replace(paths["report"])  # atomic: a reader never sees half a report
    return paths


def history_entry(report: Mapping[str, Any], step: int) -> dict[str, Any]:
    """One ``history`` entry for :func:`write_report` from a report computed at ``step``.

    Returns:
      ``{"step": step, "per_language": {language: {metric: score}}}`` with the report's scalar
      metrics, so curves can be drawn for any of them later.
    """
    return {
        "step": int(step),
        "per_language": {
            lang: {m: r.get(m) for m in report["metrics"]}
            for lang, r in report["per_language"].items()
        },
    }


def load_report(path: str | Path, split: str | None = None) -> dict[str, Any]:
    """Read a ``report.json``, or find it in a run / eval folder, and check its schema.

    Args:
      path: a ``report.json``, a folder holding one, or a run folder (see :func:`find_report`).
      split: the split to read from a run folder (``eval/<split>/report.json``).
    """
    path = find_report(Path(path), split)
    data = json.loads(path.read_text())
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {version!r}, this langtune_jax reads {SCHEMA_VERSION}; "
            "re-run `langtune eval` on the run to rewrite it"
        )
    return data


def find_report(path: Path, split: str | None = None) -> Path:
    """The ``report.json`` that ``path`` designates.

    Looked for, in order: ``path`` itself (a file), ``path/report.json``, then in the run folder
    layout ``path/eval/<split>/report.json`` when ``split`` is given, else ``path/eval/report.json``,
    else the only ``path/eval/*/report.json``, else ``path/eval/test/report.json`` when several
    splits were evaluated.
    """
    if path.name == "eval" and not (path / REPORT_FILE).is_file():
        path = path.parent  # given RUN_DIR/eval: look in its split folders
    if split is not None:
        candidates = [path / "eval" / split / REPORT_FILE, path / split / REPORT_FILE]
    else:
        candidates = [path, path / REPORT_FILE, path / "eval" / REPORT_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = sorted((path / "eval").glob(f"*/{REPORT_FILE}")) if split is None else []
    if len(found) == 1:
        return found[0]
    if found and (path / "eval" / "test" / REPORT_FILE).is_file():
        return path / "eval" / "test" / REPORT_FILE
    if found:
        splits = ", ".join(p.parent.name for p in found)
        raise FileNotFoundError(
            f"{path} has reports for several splits ({splits}): pick one (split=..., --split)"
        )
    where = f"{path}/eval/{split}/{REPORT_FILE}" if split else f"{path}/eval/<split>/{REPORT_FILE}"
    raise FileNotFoundError(
        f"no {REPORT_FILE} at {path} (looked for {where}): run `langtune eval {path}` first"
    )


# --------------------------------------------------------------------------- tables


def _md(rows: list[list[str]]) -> str:
    """A markdown pipe table with aligned columns; first column left, others right aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    cells = [
        [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        for r in rows
    ]
    rule = [("-" * w) if i == 0 else ("-" * (w - 1) + ":") for i, w in enumerate(widths)]
    return "\n".join("| " + " | ".join(r) + " |" for r in [cells[0], rule, *cells[1:]])


def markdown_table(report: Mapping[str, Any], metrics: Sequence[str] | None = None) -> str:
    """One run's per-language table: a row per language, then overall, mean and gap rows.

    Args:
      report: a report dict (see the module docstring).
      metrics: columns, the first one summarised under the table; default all scalar metrics
        of the task, primary first.

    Returns:
      A markdown table; fractions are shown x 100. ``overall`` pools every example, ``mean`` is
      the unweighted mean over languages, ``gap`` is best minus worst (max - min).
    """
    metrics = list(metrics or report["metrics"])
    scaled = [m for m in metrics if m not in _NOT_FRACTIONS]
    head = ["language", "n"] + [m + (" (x100)" if m in scaled else "") for m in metrics]
    rows = [head]
    for lang in report["languages"]:
        r = report["per_language"][lang]
        mark = " (source)" if lang == report.get("source_language") else ""
        rows.append([lang + mark, str(r["num_examples"])] + [_fmt(r.get(m), m) for m in metrics])
    rows.append(
        ["overall", str(report["overall"]["num_examples"])]
        + [_fmt(report["overall"].get(m), m) for m in metrics]
    )
    gaps = report["gaps"]
    rows.append(["mean", ""] + [_fmt(gaps[m]["mean"], m) for m in metrics])
    rows.append(["gap (max-min)", ""] + [_fmt(gaps[m]["gap"], m) for m in metrics])
    if report.get("source_language"):
        rows.append(["transfer gap", ""] + [_fmt(gaps[m].get("transfer_gap"), m) for m in metrics])
    primary = metrics[0]
    g = gaps[primary]
    note = (
        f"{report['task']}: {primary} best {g['best_language']} {_fmt(g['best'], primary)}, "
        f"worst {g['worst_language']} {_fmt(g['worst'], primary)}, gap {_fmt(g['gap'], primary)}"
        + (
            f" ({g['relative_gap_pct']:.1f}% of best)"
            if g.get("relative_gap_pct") is not None
            else ""
        )
    )
    return _md(rows) + "\n\n" + note


def _run_folder(path: Path) -> Path:
    """The run folder of a path given as run folder, eval folder, split folder or report file."""
    path = path.parent if path.name == REPORT_FILE else path
    if path.parent.name == "eval":  # RUN_DIR/eval/<split>
        return path.parent.parent
    return path.parent if path.name == "eval" else path


def _run_names(paths: Sequence[Path], reports: Sequence[Mapping[str, Any]]) -> list[str]:
    """The runs' ``run_name`` when all differ, else folder names made unique."""
    given = [r.get("run_name") for r in reports]
    if all(given) and len(set(given)) == len(given):
        return [str(n) for n in given]
    names = [_run_folder(p).name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{_run_folder(p).parent.name}/{n}" for p, n in zip(paths, names)]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def compare_runs(
    run_dirs: Sequence[str | Path], *, metric: str | None = None, split: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Side-by-side per-language table of several runs, with the change against the first run.

    Args:
      run_dirs: run folders (or report files); the first is the baseline. The report of each
        is found by :func:`find_report`.
      metric: the metric to compare; default the first run's primary metric.
      split: which split's reports to compare (``RUN_DIR/eval/<split>/report.json``); default:
        the only split evaluated, or ``test`` when there are several.

    Returns:
      ``(table, data)``. ``table`` is markdown: rows = languages (union, first run's order),
      then ``mean`` (over languages) and ``gap`` (max - min); columns = run names (the reports'
      ``run_name`` when they differ, else folder names), then ``delta`` (second minus first;
      with more runs, ``delta <run>`` = that run minus the first). Fractions are shown x 100. ``data`` = ``{"metric", "higher_is_better",
      "runs" [names], "languages", "values" {run: {language: score | None}}, "mean" {run: score},
      "gap" {run: score}, "delta" {run: {language | "mean" | "gap": score | None}}}`` (raw
      scores, not x 100; ``delta`` has an entry for every run after the first).
    """
    if len(run_dirs) < 1:
        raise ValueError("compare_runs needs at least one run folder")
    paths = [Path(p) for p in run_dirs]
    reports = [load_report(p, split) for p in paths]
    names = _run_names(paths, reports)
    metric = metric or reports[0]["primary_metric"]
    for name, rep in zip(names, reports):
        if metric not in rep["metrics"]:
            raise ValueError(
                f"run {name} ({rep['task']}) has no metric {metric!r}; it has "
                f"{', '.join(rep['metrics'])}: pass --metric with one all runs share"
            )
    languages = list(dict.fromkeys(lang for rep in reports for lang in rep["languages"]))
    values = {
        n: {lang: rep["per_language"].get(lang, {}).get(metric) for lang in languages}
        for n, rep in zip(names, reports)
    }
    higher = metric not in LOWER_IS_BETTER
    stats = {
        n: gap_statistics(values[n], higher_is_better=higher) for n in names
    }  # recomputed, so languages missing from a run are visibly left out of its mean / gap
    data: dict[str, Any] = {
        "metric": metric,
        "higher_is_better": higher,
        "runs": names,
        "languages": languages,
        "values": values,
        "mean": {n: stats[n]["mean"] for n in names},
        "gap": {n: stats[n]["gap"] for n in names},
        "delta": {},
    }
    base = names[0]

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    for n in names[1:]:
        d = {lang: diff(values[n][lang], values[base][lang]) for lang in languages}
        d["mean"] = diff(data["mean"][n], data["mean"][base])
        d["gap"] = diff(data["gap"][n], data["gap"][base])
        data["delta"][n] = d
    delta_cols = ["delta"] if len(names) == 2 else [f"delta {n}" for n in names[1:]]
    rows = [
        [f"{metric}" + (" (x100)" if metric not in _NOT_FRACTIONS else "")] + names + delta_cols
    ]
    for key in [*languages, "mean", "gap"]:
        row = [key]
        for n in names:
            row.append(_fmt(data[key][n] if key in ("mean", "gap") else values[n][key], metric))
        row += [_fmt(data["delta"][n][key], metric, signed=True) for n in names[1:]]
        rows.append(row)
    return _md(rows), data


# --------------------------------------------------------------------------- plots


def _figure(n_groups: int, height: float = 4.2) -> Any:
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    fig = Figure(figsize=(max(7.0, 1.1 * n_groups + 3.0), height), dpi=120, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")  # Figure without pyplot renders with the Agg canvas
    return path


def _axis_label(metric: str) -> str:
    return metric + (" (x100)" if metric not in _NOT_FRACTIONS else "")


def plot_metric_by_language(
    report: Mapping[str, Any], path: str | Path, *, metric: str | None = None
) -> Path:
    """Bar per language of ``metric`` (default primary), values on bars, mean as a dashed line."""
    metric = metric or report["primary_metric"]
    langs = report["languages"]
    scale = _scale(metric)
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
    ax.bar_label(bars, labels=[_fmt(v / scale, metric) for v in vals], padding=2)
    ax.axhline(
        g["mean"] * scale, color="gray", ls="--", lw=1, label=f"mean {_fmt(g['mean'], metric)}"
    )
    ax.set_xlabel("language")
    ax.set_ylabel(_axis_label(metric))
    if scale == 100.0:
        ax.set_ylim(0, 110)
    else:
        ax.set_ylim(
            0,
            max(v for v in vals if math.isfinite(v)) * 1.15 if any(map(math.isfinite, vals)) else 1,
        )
    ax.set_title(
        f"{metric} per language ({report['task']})\ngap {_fmt(g['gap'], metric)} "
        f"(best {g['best_language']}, worst {g['worst_language']})"
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _plan_shares(plan: Any) -> dict[str, tuple[float, float]]:
    """``{language: (data share, sampling probability)}`` from the accepted plan layouts."""
    if hasattr(plan, "to_dict"):
        plan = plan.to_dict()
    rows: Any = plan.get("languages", plan) if isinstance(plan, Mapping) else plan
    if isinstance(rows, Mapping):
        rows = [{"language": k, **v} for k, v in rows.items() if isinstance(v, Mapping)]
    out = {}
    for row in rows:
        share = row.get("data_share", row.get("share"))
        prob = row.get("probability", row.get("target"))
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
    """Per language, its share of the training data next to its sampling probability."""
    import numpy as np

    shares = _plan_shares(plan)
    langs = list(shares)
    x = np.arange(len(langs))
    fig, ax = _figure(len(langs))
    w = 0.38
    strategy = (
        plan.get("strategy") if isinstance(plan, Mapping) else getattr(plan, "strategy", None)
    )
    for i, (label, color) in enumerate(
        [("data share", "tab:gray"), ("sampling probability", "tab:orange")]
    ):
        vals = [100 * shares[lang][i] for lang in langs]
        bars = ax.bar(x + (i - 0.5) * w, vals, w, label=label, color=color)
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    ax.set_xticks(x, langs)
    ax.set_xlabel("language")
    ax.set_ylabel("% of examples")
    ax.set_ylim(0, max(100 * max(s) for s in shares.values()) * 1.18)
    ax.set_title("sampling vs data share" + (f" (strategy: {strategy})" if strategy else ""))
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
    scale = _scale(metric)
    fig, ax = _figure(6)
    for lang, (xs, ys) in curves.items():
        ys_s = [y * scale for y in ys]
        ax.plot(xs, ys_s, marker="o", ms=3, label=lang)
        ax.annotate(
            f"{lang} {_fmt(ys[-1], metric)}",
            (xs[-1], ys_s[-1]),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=8,
            va="center",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel(_axis_label(metric))
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
    scale = _scale(metric)
    x = np.arange(len(groups))
    w = 0.8 / len(runs)
    fig, ax = _figure(len(groups) * max(1, len(runs) // 2), height=4.6)
    for i, run in enumerate(runs):
        vals = [data["values"][run].get(g) if g != "mean" else data["mean"][run] for g in groups]
        heights = [math.nan if v is None else v * scale for v in vals]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * w, heights, w, label=run)
        ax.bar_label(bars, labels=[_fmt(v, metric) for v in vals], padding=2, fontsize=8)
    ax.set_xticks(x, groups)
    ax.axvline(len(groups) - 1.5, color="gray", lw=0.8, ls=":")  # languages | mean
    ax.set_xlabel("language")
    ax.set_ylabel(_axis_label(metric))
    finite = [
        h
        for run in runs
        for h in [*(data["values"][run].values()), data["mean"][run]]
        if h is not None
    ]
    ax.set_ylim(0, (110 if scale == 100.0 else max(finite, default=1) * 1.15))
    gaps = ", ".join(f"{run} {_fmt(data['gap'][run], metric)}" for run in runs)
    ax.set_title(f"{metric} per language by run\ngap max-min: {gaps}")
    ax.legend(title="run", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)
