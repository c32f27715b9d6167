"""The sampling plan of a run, and the record behind dynamic language weights.

`build_plan` computes, before any training, what a run will draw from each language (the
`SamplingPlan`: the table `langtune plan` prints, and plan.json).

Dynamic sampling keeps the mixture stateless by making the weights a *function of a record*
(`WeightRecord`): the per-language losses observed at the update points (steps every, 2*every,
...), plus the base model's loss when the config asks for it. Replaying the record from the prior
(:meth:`WeightRecord.segments`) gives the weights in force from each update step on::

    updates: [{step: 20, losses: {en: 0.61, sw: 0.93}}, {step: 40, ...}]
    weight_segments: [{start_step: 0, weights: prior}, {start_step: 40, weights: {...}}, ...]

and `LanguageMixture(..., segments=...)` maps a global index to an example as a pure function of
(seed, index, segments). The record is small JSON: it is saved in every checkpoint (with the
loss sums of the window in progress, so a resume between update points continues that window)
and in plan.json, so a resumed run and every host of a multi-host run read the batches of an
unbroken single-host run. Losses are recorded to 6 significant digits: the same run on another
mesh sums its float32 losses in another order, and rounding keeps such last-bit differences out of
the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from langtune_jax.data.errors import DataError
from langtune_jax.data.sampling import (
    SamplingConfig,
    bounded_weights,
    check_counts,
    dro_update,
    language_weights,
    power_weights,
)


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
      dynamic: strategy `dynamic`: the weight record (`langtune_jax.data.plan.WeightRecord`
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


# ----------------------------------------------------------------------------- dynamic weights


_SAME = 1e-12  # an update that moves no weight by more than this opens no segment


def _round(x: float) -> float:
    return float(f"{x:.6g}")


class WeightRecord:
    """Per-language losses at update points; the weights in force at every step follow from it.

    Args:
      sampling_cfg: the sampling section (strategy dynamic; `dynamic` holds the rule).
      plan: the run's sampling plan; its per-draw probabilities are the prior.
      steps: the run's optimizer steps (shown in plan.json; plots draw the weights up to it).

    Attributes:
      languages: the training languages (the order of the train step's per-language arrays).
      prior: per-draw probability of each language under `dynamic.prior`.
      lower, upper: the guard rails, min(floor, prior_l) and max(prior_l, max_epochs * n_l /
        total draws) (UniMax's epoch cap).
      base_loss: the base model's loss per language (when measured), else None.
      updates: `[{"step", "losses"}]`, the per-language losses at each update point.
    """

    def __init__(self, sampling_cfg: SamplingConfig, plan: SamplingPlan, *, steps: int = 0):
        self.cfg = sampling_cfg.dynamic
        self.steps = int(steps)
        self.languages = plan.languages
        self.prior = plan.probabilities
        total = max(plan.total_samples, 1)
        self.lower = {lang: min(self.cfg.floor, p) for lang, p in self.prior.items()}
        self.upper = {
            r.language: max(r.probability, plan.max_epochs * r.examples / total) for r in plan.rows
        }
        self.base_loss: dict[str, float] | None = None
        self.updates: list[dict] = []
        self._window = np.zeros((2, len(self.languages)))  # loss sums, counts (float64)
        self._pending: list[tuple] = []

    # ------------------------------------------------------------------ the record

    def due(self, step: int) -> bool:
        """Whether `step` (optimizer steps taken) is an update point."""
        return self.cfg.every > 0 and step % self.cfg.every == 0

    def add_step(self, loss_sum, count) -> None:
        """Add one train step's per-language loss sums and counts ([L] arrays, any kind)."""
        self._pending.append((loss_sum, count))

    def _flush(self) -> None:
        # Host float64 sums, added in step order: the same values whenever they are fetched.
        for loss_sum, count in self._pending:
            self._window += np.stack([np.asarray(loss_sum), np.asarray(count)]).astype(np.float64)
        self._pending = []

    def window_losses(self) -> dict[str, float]:
        """Mean train loss per language over the window since the last update; resets it."""
        self._flush()
        sums, counts = self._window
        self._window = np.zeros_like(self._window)
        return {lang: float(s / c) for lang, s, c in zip(self.languages, sums, counts) if c > 0}

    def record(self, step: int, losses: Mapping[str, float]) -> dict[str, float]:
        """Record the per-language losses seen at update point `step`; returns the new weights.

        A language without a loss in the window (not drawn) keeps its last recorded loss, or
        else the mean of the others, so its weight is not moved by a missing value.
        """
        last = self.updates[-1]["losses"] if self.updates else {}
        known = [v for v in losses.values() if math.isfinite(v)]
        mean = sum(known) / len(known) if known else 1.0
        filled = {
            lang: _round(losses[lang] if lang in losses else last.get(lang, mean))
            for lang in self.languages
        }
        self.updates.append({"step": int(step), "losses": filled})
        return self.weights_at(step)

    def set_base_loss(self, losses: Mapping[str, float]) -> None:
        """The base model's per-language loss (measured once, before step 0)."""
        self.base_loss = {lang: _round(losses[lang]) for lang in self.languages}
        if self.cfg.every == 0:
            self.updates = [{"step": 0, "losses": dict(self.base_loss)}]

    # ------------------------------------------------------------------ replay

    def segments(self) -> list[tuple[int, dict[str, float]]]:
        """`(start_step, weights)` from step 0 on: a pure function of config, prior and record."""
        cfg = self.cfg
        weights, segments = dict(self.prior), [(0, dict(self.prior))]
        reference = self.base_loss if cfg.reference == "base" else None
        for update in self.updates:
            losses = update["losses"]
            if cfg.method == "power":
                new = power_weights(self.prior, losses, beta=cfg.beta)
            else:
                ref = reference
                if update["step"] == 0:  # every: 0 has no earlier window: excess over the mean
                    ref = dict.fromkeys(losses, sum(losses.values()) / len(losses))
                elif ref is None:  # reference first: this window is the reference
                    reference = dict(losses)
                    continue
                new = dro_update(
                    weights, losses, ref, self.prior, eta=cfg.eta, smoothing=cfg.smoothing
                )
            new = bounded_weights(new, self.lower, self.upper)
            if max(abs(new[lang] - weights[lang]) for lang in weights) <= _SAME:
                continue
            weights = new
            if update["step"] == 0:
                segments[0] = (0, dict(new))
            else:
                segments.append((int(update["step"]), dict(new)))
        return segments

    def weights_at(self, step: int) -> dict[str, float]:
        """The weights in force at global step `step`."""
        return next(w for start, w in reversed(self.segments()) if start <= step)

    # ------------------------------------------------------------------ persistence

    def state(self) -> dict:
        """JSON-safe state for a checkpoint: the record and the window in progress."""
        self._flush()
        return {
            "base_loss": self.base_loss,
            "updates": self.updates,
            "window": self._window.tolist(),
        }

    def restore(self, state: Mapping) -> None:
        """Set the record back to a checkpoint's `state()`."""
        self.base_loss = state["base_loss"]
        self.updates = [dict(u) for u in state["updates"]]
        self._window = np.asarray(state["window"], dtype=np.float64)
        self._pending = []

    def to_dict(self) -> dict:
        """The plan.json view: prior, rule, base losses, updates and `weight_segments`."""
        cfg = self.cfg
        return {
            "prior": cfg.prior,
            "method": cfg.method,
            "every": cfg.every,
            "steps": self.steps,
            "signal": cfg.signal,
            "prior_weights": dict(self.prior),
            "base_loss": self.base_loss,
            "updates": self.updates,
            "weight_segments": weight_segments_dict(self.segments()),
        }


def weight_segments_dict(segments: Sequence[tuple[int, Mapping[str, float]]]) -> list[dict]:
    """`[(start_step, weights)]` as plan.json's `[{"start_step", "weights"}]`."""
    return [{"start_step": int(s), "weights": dict(w)} for s, w in segments]
