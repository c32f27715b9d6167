"""Comparison of runs: a side-by-side per-language table of several runs' reports.

:func:`compare_runs` reads the report of each run (found by
:func:`~langtune_jax.eval.report.find_report`) and builds the table (languages, then mean and gap
rows; one column per run, then the change against the first run);
:func:`~langtune_jax.eval.plots.plot_comparison` draws it as grouped bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langtune_jax.eval.formatting import column_label, format_score, markdown_rows
from langtune_jax.eval.metrics import gap_statistics, metric_info
from langtune_jax.eval.report import REPORT_FILE, load_report


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


def _weight_segments(paths: Sequence[Path], names: Sequence[str]) -> dict[str, Any]:
    """Run name -> plan.json's weight segments and steps, for runs whose weights moved."""
    import json

    out = {}
    for path, name in zip(paths, names):
        plan = _run_folder(path) / "plan.json"
        data = json.loads(plan.read_text(encoding="utf-8")) if plan.exists() else {}
        if data.get("weight_segments"):
            steps = data.get("dynamic", {}).get("steps")
            out[name] = {"weight_segments": data["weight_segments"], "steps": steps}
    return out


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
      then ``mean`` and ``gap`` (max - min) over the languages every run has (when the runs'
      languages differ, a note under the table names the ones left out); with zero-shot
      languages (any report's ``zero_shot``) they follow the seen languages, marked, and
      ``seen mean``, ``zero-shot mean`` and ``transfer gap`` rows follow (keys ``zero_shot``,
      ``seen_mean``, ``zero_shot_mean``, ``transfer_gap`` in ``data``); columns = run names
      (the reports' ``run_name`` when they differ, else folder names), then ``delta`` (second
      minus first; with more runs, ``delta <run>`` = that run minus the first). Fractions are
      shown x 100. ``data`` = ``{"metric", "higher_is_better", "runs" [names], "languages",
      "values" {run: {language: score | None}}, "mean" {run: score}, "gap" {run: score},
      "common_languages", "note" (str or None), "delta" {run: {language | "mean" | "gap":
      score | None}}}`` (raw scores, not x 100; ``delta`` has an entry for every run after the
      first), and ``"weights"`` {run: {"weight_segments", "steps"}} for the runs with dynamic
      sampling (their plan.json), which :func:`~langtune_jax.eval.plots.plot_weight_segments`
      draws.
    """
    if len(run_dirs) < 1:
        raise ValueError("compare_runs needs at least one run folder")
    paths = [Path(p) for p in run_dirs]
    reports = [load_report(p, split) for p in paths]
    names = _run_names(paths, reports)
    metric = metric or reports[0]["primary_metric"]
    _check_metric(metric, names, reports)
    languages, zero_shot = _ordered_languages(reports)
    values = {
        n: {lang: rep["per_language"].get(lang, {}).get(metric) for lang in languages}
        for n, rep in zip(names, reports)
    }
    common = _common_languages(metric, languages, values)
    data = _comparison(metric, names, reports, languages, zero_shot, values, common)
    data["weights"] = _weight_segments(paths, names)
    table = _table(data)
    return (table + "\n\n" + data["note"] if data["note"] else table), data


def _check_metric(metric: str, names: Sequence[str], reports: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a metric that some run's report lacks (e.g. perplexity against a classifier)."""
    for name, rep in zip(names, reports):
        if metric not in rep["metrics"]:
            raise ValueError(
                f"run {name} ({rep['task']}) has no metric {metric!r}; it has "
                f"{', '.join(rep['metrics'])}: pass --metric with one all runs share"
            )


def _ordered_languages(reports: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """``(languages, zero_shot)``: every run's languages in first-seen order, zero-shot last."""
    zero_shot = list(dict.fromkeys(z for rep in reports for z in rep.get("zero_shot", [])))
    languages = list(dict.fromkeys(lang for rep in reports for lang in rep["languages"]))
    # Two groups: the languages seen in training, then the zero-shot ones.
    languages = [x for x in languages if x not in zero_shot] + [
        x for x in languages if x in zero_shot
    ]
    return languages, zero_shot


def _common_languages(
    metric: str, languages: Sequence[str], values: Mapping[str, Mapping[str, float | None]]
) -> list[str]:
    """The languages every run has a score for; a ValueError when there are none."""
    # Means and gaps over different language sets are not comparable: use the languages every
    # run has, and say so when that leaves some out.
    common = [lang for lang in languages if all(v[lang] is not None for v in values.values())]
    if not common:
        raise ValueError(
            f"the runs share no language with a {metric!r} score; "
            + "; ".join(
                f"{n}: {sorted(k for k, v in values[n].items() if v is not None)}" for n in values
            )  # fmt: skip
        )
    return common


def _summary_keys(zero_shot: Sequence[str]) -> list[str]:
    """The summary rows under the languages (and keys of ``data``), zero-shot ones when any."""
    return ["mean", "gap"] + (["seen_mean", "zero_shot_mean", "transfer_gap"] if zero_shot else [])


def _comparison(
    metric: str,
    names: Sequence[str],
    reports: Sequence[Mapping[str, Any]],
    languages: list[str],
    zero_shot: list[str],
    values: dict[str, dict[str, float | None]],
    common: list[str],
) -> dict[str, Any]:
    """``compare_runs``'s data without ``weights``: scores, summary statistics, note, deltas."""
    higher = metric_info(metric).higher_is_better
    stats = {
        n: gap_statistics(
            {k: values[n][k] for k in common},
            rep.get("source_language") if rep.get("zero_shot") else None,
            higher_is_better=higher,
            zero_shot=[z for z in rep.get("zero_shot", []) if z in common],
        )
        for n, rep in zip(names, reports)
    }
    summary = _summary_keys(zero_shot)
    data: dict[str, Any] = {
        "metric": metric,
        "higher_is_better": higher,
        "runs": list(names),
        "languages": languages,
        "values": values,
        "zero_shot": zero_shot,
        **{key: {n: stats[n].get(key) for n in names} for key in summary},
        "common_languages": common,
        "note": None,
        "delta": _deltas(names, languages, summary, values, stats),
    }
    left_out = [lang for lang in languages if lang not in common]
    if left_out:
        data["note"] = (
            f"note: the runs have different languages; mean and gap are over the {len(common)} "
            f"they all have ({', '.join(common)}); not in every run: {', '.join(left_out)}"
        )
    return data


def _deltas(
    names: Sequence[str],
    languages: Sequence[str],
    summary: Sequence[str],
    values: Mapping[str, Mapping[str, float | None]],
    stats: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, float | None]]:
    """Each later run minus the first, per language and per summary key (None: a side missing)."""

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    base = names[0]
    deltas = {}
    for n in names[1:]:
        d = {lang: diff(values[n][lang], values[base][lang]) for lang in languages}
        for key in summary:
            d[key] = diff(stats[n].get(key), stats[base].get(key))
        deltas[n] = d
    return deltas


def _table(data: Mapping[str, Any]) -> str:
    """The markdown table of the comparison: a row per language and summary key, x 100 shown."""
    metric, names, values = data["metric"], data["runs"], data["values"]
    summary = _summary_keys(data["zero_shot"])
    delta_cols = ["delta"] if len(names) == 2 else [f"delta {n}" for n in names[1:]]
    rows = [[column_label(metric)] + names + delta_cols]
    labels = {"seen_mean": "seen mean", "zero_shot_mean": "zero-shot mean"}
    labels.update(
        {"transfer_gap": "transfer gap", **{z: f"{z} (zero-shot)" for z in data["zero_shot"]}}
    )
    for key in [*data["languages"], *summary]:
        row = [labels.get(key, key)]
        for n in names:
            row.append(format_score(data[key][n] if key in summary else values[n][key], metric))
        row += [format_score(data["delta"][n][key], metric, signed=True) for n in names[1:]]
        rows.append(row)
    return markdown_rows(rows)
