"""The sampling plan of a run.

`build_plan` computes, before any training, what a run will draw from each language (the
`SamplingPlan`: the table `langtune plan` prints, and plan.json). With strategy `dynamic` the
plan holds the run's `WeightRecord` (`langtune_jax.data.weight_record`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from langtune_jax.data.errors import DataError
from langtune_jax.data.sampling import SamplingConfig, check_counts, language_weights


@dataclasses.dataclass
class PlanRow:
    """One language of a `SamplingPlan` (see `SamplingPlan` for the columns)."""

    language: str
    examples: int
    tokens: int | None
    share: float
    target: float
    probability: float
    expected_samples: float
    expected_epochs: float
    skipped: int = 0
    warning: str | None = None


@dataclasses.dataclass
class SamplingPlan:
    """What a run will draw from each language, computed before any training.

    Attributes:
      rows: one `PlanRow` per language (sorted by language): `examples` and `tokens` in the
        training split, `share` of the data (in `unit`), `target` probability of the strategy
        (in `unit`), `probability` of each draw picking the language (examples; equals target
        with unit examples), `expected_samples` = probability x total_samples, `expected_epochs`
        = expected_samples / examples, `skipped` bad rows, `warning` when expected_epochs exceeds
        max_epochs.
      strategy, unit, total_samples, max_epochs: the inputs.
      skipped_reasons: reason -> bad training rows skipped for it (on_bad_row: skip).
      dynamic: strategy `dynamic`: the weight record (`langtune_jax.data.weight_record.WeightRecord`
        as a dict: prior, base losses, per-language losses at update points and the
        `weight_segments` they give); plan.json lists `weight_segments` at its top level.
      notes: what reading the data changed or found that the user should know (language codes
        normalised, duplicate rows), one sentence each.
    """

    rows: list[PlanRow]
    strategy: str
    unit: str
    total_samples: int
    max_epochs: float
    skipped_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    dynamic: dict | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def languages(self) -> list[str]:
        return [r.language for r in self.rows]

    @property
    def probabilities(self) -> dict[str, float]:
        """Per-draw probability of each language (what `LanguageMixture` takes)."""
        return {r.language: r.probability for r in self.rows}

    @property
    def warnings(self) -> list[str]:
        return [r.warning for r in self.rows if r.warning]

    def to_dict(self) -> dict:
        """JSON-ready dict (written as plan.json in the run folder)."""
        out = {
            "strategy": self.strategy,
            "unit": self.unit,
            "total_samples": self.total_samples,
            "max_epochs": self.max_epochs,
            "languages": [dataclasses.asdict(r) for r in self.rows],
            "skipped_reasons": dict(self.skipped_reasons),
            "warnings": self.warnings,
            "notes": list(self.notes),
        }
        if self.dynamic is not None:
            out["weight_segments"] = self.dynamic["weight_segments"]
            out["dynamic"] = {k: v for k, v in self.dynamic.items() if k != "weight_segments"}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A fixed-width text table, one line per language, then the warnings."""
        head = ["language", "examples", "tokens", "share", "target", "p(draw)", "samples", "epochs"]
        has_skipped = any(r.skipped for r in self.rows)
        if has_skipped:
            head.append("skipped")
        lines = []
        for r in self.rows:
            cells = [
                r.language,
                f"{r.examples:,}",
                "-" if r.tokens is None else f"{r.tokens:,}",
                f"{r.share:.4f}",
                f"{r.target:.4f}",
                f"{r.probability:.4f}",
                f"{r.expected_samples:,.0f}",
                f"{r.expected_epochs:.2f}" + (" !" if r.warning else ""),
            ]
            if has_skipped:
                cells.append(f"{r.skipped:,}")
            lines.append(cells)
        widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]

        def fmt(cells):
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )

        out = [
            f"sampling plan: strategy={self.strategy} unit={self.unit} "
            f"total_samples={self.total_samples:,}",
            fmt(head),
            fmt(["-" * w for w in widths]),
        ]
        out += [fmt(c) for c in lines]
        if self.skipped_reasons:
            why = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.skipped_reasons.items()))
            out.append(f"skipped bad rows: {sum(self.skipped_reasons.values()):,} ({why})")
        out += [f"note: {n}" for n in self.notes]
        out += [f"warning: {w}" for w in self.warnings]
        out += dynamic_lines(self.dynamic)
        return "\n".join(out)


def dynamic_lines(dynamic: dict | None) -> list[str]:
    """The plan table's lines about dynamic weights: prior, base loss, weight segments."""
    if dynamic is None:
        return []
    every = dynamic["every"]
    when = f"every {every} steps" if every else "once, before step 0, from the base model's loss"
    out = [
        f"dynamic weights: prior={dynamic['prior']} method={dynamic['method']} "
        f"signal={dynamic['signal']}, updated {when}"
    ]
    if dynamic.get("base_loss"):
        out.append(
            "base model loss per language: "
            + ", ".join(f"{k}={v:.4f}" for k, v in dynamic["base_loss"].items())
        )
    segments = dynamic["weight_segments"]
    for seg in segments[-3:]:
        out.append(
            f"weights from step {seg['start_step']}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in seg["weights"].items())
        )
    return out


def build_plan(
    examples: Mapping[str, int],
    sampling_cfg: SamplingConfig,
    total_samples: int,
    *,
    tokens: Mapping[str, int] | None = None,
    skipped: Mapping[str, int] | None = None,
    skipped_reasons: Mapping[str, int] | None = None,
    notes: list[str] | None = None,
) -> SamplingPlan:
    """Computes the sampling plan of a run.

    Args:
      examples: language -> number of training examples.
      sampling_cfg: the strategy and its options.
      total_samples: examples the run draws (train steps x global batch size).
      tokens: language -> number of training tokens (needed with unit tokens).
      skipped: language -> bad rows skipped (shown in the plan).
      skipped_reasons: reason -> bad rows skipped (shown under the table).
      notes: sentences shown under the table (see `SamplingPlan.notes`).

    Returns:
      A `SamplingPlan`; its `probabilities` feed `LanguageMixture`.
    """
    check_counts(examples)
    counts = _unit_counts(examples, tokens, sampling_cfg.unit)
    opts = _options(sampling_cfg, counts, examples, total_samples)
    target = language_weights(counts, sampling_cfg.static_strategy, **opts)
    per_draw = _per_draw(target, counts, examples, sampling_cfg.unit)
    rows = _rows(
        examples,
        tokens,
        skipped or {},
        counts,
        target,
        per_draw,
        total_samples,
        sampling_cfg.max_epochs,
    )
    return SamplingPlan(
        rows=rows,
        strategy=sampling_cfg.strategy,
        unit=sampling_cfg.unit,
        total_samples=int(total_samples),
        max_epochs=sampling_cfg.max_epochs,
        skipped_reasons=dict(skipped_reasons or {}),
        notes=list(notes or []),
    )


def _unit_counts(
    examples: Mapping[str, int], tokens: Mapping[str, int] | None, unit: str
) -> dict[str, float]:
    """Per-language counts in the strategy's unit (examples or tokens), languages sorted."""
    langs = sorted(examples)
    if unit != "tokens":
        return {lang: float(examples[lang]) for lang in langs}
    if tokens is None:
        raise DataError("sampling.unit is 'tokens' but no token counts were given")
    return {lang: float(tokens[lang]) for lang in langs}


def _options(
    sampling_cfg: SamplingConfig,
    counts: Mapping[str, float],
    examples: Mapping[str, int],
    total_samples: int,
) -> dict:
    """The strategy's options; an unset UniMax budget becomes the run's own draws."""
    opts = sampling_cfg.strategy_options()
    if sampling_cfg.static_strategy == "unimax" and opts["budget"] is None:
        # The run's own budget: every draw is one example, `mean` tokens long on average.
        mean = sum(counts.values()) / sum(examples[lang] for lang in counts)
        opts["budget"] = float(total_samples) * (mean if sampling_cfg.unit == "tokens" else 1.0)
    return opts


def _per_draw(
    target: Mapping[str, float],
    counts: Mapping[str, float],
    examples: Mapping[str, int],
    unit: str,
) -> dict[str, float]:
    """The probability of each draw (one example) picking a language, for target shares."""
    if unit != "tokens":
        return dict(target)
    # Token share t_l needs draws in proportion to t_l / (tokens per example of l).
    per_draw = {lang: target[lang] * examples[lang] / counts[lang] for lang in counts}
    z = sum(per_draw.values())
    return {lang: v / z for lang, v in per_draw.items()}


def _rows(
    examples: Mapping[str, int],
    tokens: Mapping[str, int] | None,
    skipped: Mapping[str, int],
    counts: Mapping[str, float],
    target: Mapping[str, float],
    per_draw: Mapping[str, float],
    total_samples: int,
    max_epochs: float,
) -> list[PlanRow]:
    """One `PlanRow` per language (sorted), with a warning past `max_epochs`."""
    total_count = sum(counts.values())
    rows = []
    for lang in counts:
        exp_samples = per_draw[lang] * total_samples
        epochs = exp_samples / examples[lang]
        warning = None
        if epochs > max_epochs:
            warning = (
                f"language {lang!r} would be repeated {epochs:.1f} times (> max_epochs "
                f"{max_epochs:g}); add data, lower its weight or use unimax"
            )
        rows.append(
            PlanRow(
                language=lang,
                examples=int(examples[lang]),
                tokens=None if tokens is None else int(tokens[lang]),
                share=counts[lang] / total_count,
                target=target[lang],
                probability=per_draw[lang],
                expected_samples=exp_samples,
                expected_epochs=epochs,
                skipped=int(skipped.get(lang, 0)),
                warning=warning,
            )
        )
    return rows
