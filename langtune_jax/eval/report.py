"""Evaluation reports on disk: ``report.json``, a markdown table and PNG plots; reading them back.

``write_report(run_dir / "eval" / split, report, config_hash=..., step=...)`` writes:

* ``report.json`` — the report of :func:`langtune_jax.eval.per_language_report` (or
  ``PerLanguageAccumulator.compute()``) plus run context. Schema (``schema_version`` 1)::

      schema_version    int, 1; readers refuse other versions
      task              "sequence-classification" | "token-classification" | "causal-lm" |
                         "masked-lm" (metrics over the masked positions)
      primary_metric    "macro_f1" | "f1" | "perplexity": the metric tables and plots lead with
      metrics           [str], the scalar metrics of this task, primary first
      higher_is_better  {metric: bool}; false for loss and perplexity
      languages         [str], languages with evaluation data, in evaluation order
      empty_languages   [str], languages that were expected but had no evaluation data
      zero_shot         [str], evaluated languages absent from the training data (may be absent
                         in reports written before zero-shot evaluation existed: read as [])
      source_language   str | null, the source of a cross-lingual transfer run
      label_names       [str] | null, class names or entity tags (null for causal LM)
      per_language      {language: {num_examples, <metric>: float, ...,
                         per_class_f1 {label: f1} (sequence classification) |
                         per_type_f1 {type: f1}, num_tokens, num_true_entities,
                         num_pred_entities (token classification) | num_tokens (causal LM)}}
      overall           same keys, all examples of all languages pooled
      gaps              {metric: {num_languages, best, best_language, worst, worst_language,
                         mean, gap, relative_gap_pct, std[, transfer_gap]
                         [, seen_mean, zero_shot_mean, transfer_gaps {language: gap}]}}
                         transfer_gap: the source language's score (eval.source_language; else
                         the mean of the languages seen in training) minus the mean of the
                         zero-shot languages (XTREME); without zero-shot languages, minus the
                         mean of the other languages
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
also works). :func:`~langtune_jax.eval.compare.compare_runs` reads the report of each run and
builds the side-by-side table (languages, then mean and gap rows; one column per run, then the
change against the first run); :func:`~langtune_jax.eval.plots.plot_comparison` draws it as
grouped bars.

The plots are drawn by :mod:`langtune_jax.eval.plots` (matplotlib, imported lazily).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langtune_jax.eval.formatting import column_label, format_score, markdown_rows
from langtune_jax.eval.metrics import SCHEMA_VERSION
from langtune_jax.eval.plots import plot_eval_curves, plot_metric_by_language, plot_sampling_vs_data

REPORT_FILE = "report.json"
TABLE_FILE = "report.md"
BARS_FILE = "metric_by_language.png"
SAMPLING_FILE = "sampling_vs_data.png"
CURVES_FILE = "eval_curves.png"


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
    files: Mapping[str, Path] | None = None,
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
      files: other files already written into ``out_dir`` that the report lists under
        ``files`` (e.g. ``{"predictions": path}``).

    Returns:
      ``{"report": path, "table": path, "bars": path[, "sampling", "curves"]}``.
    """
    metric = metric or report["primary_metric"]
    _check_metric(report, metric)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history = list(history) if history is not None else None
    paths = {"report": out / REPORT_FILE, "table": out / TABLE_FILE}
    paths.update(_write_plots(out, report, metric, plan, history))
    paths.update(files or {})
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
    _write_json_atomic(paths["report"], full)
    return paths


def _check_metric(report: Mapping[str, Any], metric: str) -> None:
    """Refuse a headline metric that the report does not hold, naming the ones it does."""
    if metric not in report["metrics"]:
        raise ValueError(
            f"metric {metric!r} is not in this {report['task']} report: use one of "
            f"{', '.join(report['metrics'])}"
        )


def _write_plots(
    out: Path,
    report: Mapping[str, Any],
    metric: str,
    plan: Any,
    history: list[Mapping[str, Any]] | None,
) -> dict[str, Path]:
    """The PNGs of a report: ``{"bars"[, "sampling"][, "curves"]}`` (in that order)."""
    paths = {"bars": plot_metric_by_language(report, out / BARS_FILE, metric=metric)}
    if plan is not None:
        paths["sampling"] = plot_sampling_vs_data(plan, out / SAMPLING_FILE)
    if history:
        paths["curves"] = plot_eval_curves(history, out / CURVES_FILE, metric=metric)
    else:  # a curve left by an earlier report would no longer describe this one
        (out / CURVES_FILE).unlink(missing_ok=True)
    return paths


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Strict JSON (NaN / inf as null) through a temporary file: a reader never sees half."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)  # atomic rename


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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path}: not a readable report ({err}); it may be truncated: re-run `langtune eval` "
            "on the run to rewrite it"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a report (a JSON object); re-run `langtune eval`")
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


def markdown_table(report: Mapping[str, Any], metrics: Sequence[str] | None = None) -> str:
    """One run's per-language table: a row per language, then overall, mean and gap rows.

    Args:
      report: a report dict (see the module docstring).
      metrics: columns, the first one summarised under the table; default all scalar metrics
        of the task, primary first.

    Returns:
      A markdown table; fractions are shown x 100. ``overall`` pools every example, ``mean`` is
      the unweighted mean over languages, ``gap`` is best minus worst (max - min). A language
      the split has no data for (``empty_languages``) gets a row of ``-`` and is named under
      the table: the statistics leave it out.
    """
    metrics = list(metrics or report["metrics"])
    gaps = report["gaps"]

    def scores(values: Mapping[str, Any]) -> list[str]:
        return [format_score(values.get(m), m) for m in metrics]

    def statistic(key: str) -> list[str]:
        return [format_score(gaps[m].get(key), m) for m in metrics]

    rows = [["language", "n"] + [column_label(m) for m in metrics]]
    for lang in report["languages"]:
        r = report["per_language"][lang]
        mark = " (source)" if lang == report.get("source_language") else ""
        mark += " (zero-shot)" if lang in report.get("zero_shot", ()) else ""
        rows.append([lang + mark, str(r["num_examples"]), *scores(r)])
    for lang in report.get("empty_languages", ()):  # expected, but the split has none of it
        rows.append([f"{lang} (no data)", "0", *scores({})])
    rows.append(["overall", str(report["overall"]["num_examples"]), *scores(report["overall"])])
    rows += [["mean", "", *statistic("mean")], ["gap (max-min)", "", *statistic("gap")]]
    if report.get("zero_shot"):
        rows.append(["seen mean", "", *statistic("seen_mean")])
        rows.append(["zero-shot mean", "", *statistic("zero_shot_mean")])
    if report.get("source_language") or report.get("zero_shot"):
        rows.append(["transfer gap", "", *statistic("transfer_gap")])
    summary = _summary_line(report["task"], metrics[0], gaps)
    if report.get("empty_languages"):
        summary += (
            f"; no data for {', '.join(report['empty_languages'])} (left out of the mean, worst "
            "and gap)"
        )
    return markdown_rows(rows) + "\n\n" + summary


def _summary_line(task: str, metric: str, gaps: Mapping[str, Mapping[str, Any]]) -> str:
    """The line under a report's table: best and worst language and the gap of ``metric``."""
    g = gaps[metric]
    line = (
        f"{task}: {metric} best {g['best_language']} {format_score(g['best'], metric)}, "
        f"worst {g['worst_language']} {format_score(g['worst'], metric)}, "
        f"gap {format_score(g['gap'], metric)}"
    )
    if g.get("relative_gap_pct") is not None:
        line += f" ({g['relative_gap_pct']:.1f}% of best)"
    return line
