"""Language weight strategies and the sampling plan.

`language_weights` turns per-language counts (examples or tokens) into target probabilities that
sum to one. Every strategy is a closed formula of the counts, so the plan printed by
`langtune plan` is exactly what the mixture samples.

| strategy      | probability of language l                        | reference |
| ------------- | ------------------------------------------------ | --------- |
| `natural`     | n_l / sum n                                      | |
| `uniform`     | 1 / L                                            | |
| `inverse`     | n_l * (1/n_l) / sum = 1 / L (per-example weight 1/n_l, as torch's `WeightedRandomSampler` with inverse-frequency weights gives) | |
| `temperature` | p_l^alpha / sum p^alpha, p = natural, alpha = 1/T | Conneau & Lample 2019 (XLM, alpha 0.3/0.5), Devlin 2018 (mBERT, 0.7), Xue et al. 2021 (mT5, 0.3) |
| `log`         | ln(1 + n_l) / sum ln(1 + n)                       | |
| `unimax`      | uniform character/example budget, capped at `max_epochs` epochs per language, excess redistributed | Chung et al. 2023, "UniMax", Algorithm 1 |
| `manual`      | weights_l / sum weights                          | |

`multipliers` rescale any strategy's result per language before renormalising (for languages that
need more weight than their size says: difficulty, script, semantic density).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Literal

from langtune_jax.data.errors import DataError

StaticStrategy = Literal["natural", "uniform", "inverse", "temperature", "log", "unimax", "manual"]
Strategy = Literal[
    "natural", "uniform", "inverse", "temperature", "log", "unimax", "manual", "dynamic"
]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]
STATIC_STRATEGIES: tuple[str, ...] = StaticStrategy.__args__  # type: ignore[attr-defined]


@dataclasses.dataclass
class DynamicConfig:
    """Loss-aware language weights (`sampling.strategy: dynamic`), stateless and resumable.

    The weights start from the static `prior` strategy (its options are the sampling section's:
    alpha, budget, weights, multipliers) and move every `every` steps with the per-language loss
    of the window before (`signal`). The weights in force at step k are a pure function of the
    seed, the config and the per-language losses recorded at earlier update points
    (`plan.json` and every checkpoint hold them as `weight_segments`).

    Attributes:
      prior: the static strategy the weights start from (and are smoothed toward).
      method: `dro`, exponentiated-gradient ascent on the excess loss as in group DRO / DoReMi:
        w <- w * exp(eta * (L_l - ref_l)), normalise, then (1 - smoothing) w + smoothing * prior;
        or `power`: w ∝ prior_l * L_l ** beta (no memory of earlier weights).
      eta: step size of `dro` (DoReMi uses 1); 0 keeps the prior exactly.
      beta: exponent of `power`; 0 keeps the prior exactly.
      smoothing: c, the share of the prior mixed into every `dro` update (DoReMi: 1e-3 toward
        uniform; larger values keep the weights closer to the prior).
      every: steps between updates; 0 computes the weights once, before step 0, from the base
        model's per-language loss on `probe_examples` training examples per language.
      signal: `train`, the mean train loss per language over the window since the last update
        (from the train step itself), or `eval`, the per-language loss on the `eval.split` split.
      reference: ref_l of `dro`: `first`, the first window's losses, or `base`, the base model's
        loss before training (on the probe sample). With every: 0, `dro` measures the excess
        against the mean base loss over languages.
      floor: no language's weight drops below min(floor, its prior weight).
      probe_examples: training examples per language on which the base model's loss is measured
        (`reference: base` or `every: 0`).

    The epoch cap of UniMax applies too: no update raises a language's weight above
    max(prior_l, sampling.max_epochs * n_l / total draws), so a tiny language is not repeated
    more than `max_epochs` times by the dynamic rule.

    References:
      Sagawa et al. 2020, "Distributionally Robust Neural Networks for Group Shifts" (group DRO);
      Xie et al. 2023, "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining",
      Algorithm 1.
    """

    prior: StaticStrategy = "uniform"
    method: Literal["dro", "power"] = "dro"
    eta: float = 1.0
    beta: float = 1.0
    smoothing: float = 0.1
    every: int = 20
    signal: Literal["train", "eval"] = "train"
    reference: Literal["first", "base"] = "first"
    floor: float = 0.01
    probe_examples: int = 64

    def __post_init__(self):
        if self.prior not in STATIC_STRATEGIES:
            raise ValueError(
                f"dynamic.prior: {self.prior!r} is not a static strategy; choose one of "
                f"{', '.join(STATIC_STRATEGIES)}"
            )
        if self.method not in ("dro", "power"):
            raise ValueError(f"dynamic.method must be 'dro' or 'power' (got {self.method!r})")
        for name in ("eta", "beta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"dynamic.{name} must be a finite number >= 0 (got {value})")
        if not 0 <= self.smoothing <= 1:
            raise ValueError(f"dynamic.smoothing must be in [0, 1] (got {self.smoothing})")
        if self.every < 0:
            raise ValueError(f"dynamic.every must be >= 0 steps (got {self.every})")
        if self.signal not in ("train", "eval"):
            raise ValueError(f"dynamic.signal must be 'train' or 'eval' (got {self.signal!r})")
        if self.reference not in ("first", "base"):
            raise ValueError(
                f"dynamic.reference must be 'first' or 'base' (got {self.reference!r})"
            )
        if not 0 <= self.floor < 1:
            raise ValueError(f"dynamic.floor must be in [0, 1) (got {self.floor})")
        if self.probe_examples < 1:
            raise ValueError(f"dynamic.probe_examples must be >= 1 (got {self.probe_examples})")

    @property
    def needs_base_loss(self) -> bool:
        """Whether the base model's loss is measured before step 0."""
        return self.every == 0 or (self.method == "dro" and self.reference == "base")


@dataclasses.dataclass
class SamplingConfig:
    """How training examples are drawn across languages.

    Attributes:
      strategy: one of natural, uniform, inverse, temperature, log, unimax, manual.
      alpha: temperature exponent (alpha = 1/T); 0.3 as XLM-R and mT5, 0.7 as mBERT.
      budget: UniMax total budget in `unit`s; None = the run's total (steps x batch size,
        in tokens when `unit` is tokens).
      max_epochs: UniMax cap on epochs per language; the plan warns when any strategy repeats a
        language more than this.
      weights: manual weights per language (strategy `manual`); every language of the data.
      multipliers: per-language factors applied after any strategy (missing languages: 1).
      unit: count languages in `examples` or in `tokens` (languages differ in tokens per example).
        With tokens the strategy sets token shares and the mixture draws examples with
        probability proportional to share / mean tokens per example.
      dynamic: options of strategy `dynamic` (loss-aware weights, see `DynamicConfig`).
    """

    strategy: Strategy = "natural"
    alpha: float = 0.3
    budget: float | None = None
    max_epochs: float = 4.0
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    multipliers: dict[str, float] = dataclasses.field(default_factory=dict)
    unit: Literal["examples", "tokens"] = "examples"
    dynamic: DynamicConfig = dataclasses.field(default_factory=DynamicConfig)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"sampling.strategy: unknown strategy {self.strategy!r}; "
                f"choose one of {', '.join(STRATEGIES)}"
            )
        if not self.alpha > 0:
            raise ValueError(f"sampling.alpha must be > 0 (got {self.alpha})")
        if self.budget is not None and not self.budget > 0:
            raise ValueError(f"sampling.budget must be > 0 or null (got {self.budget})")
        if not self.max_epochs > 0:
            raise ValueError(f"sampling.max_epochs must be > 0 (got {self.max_epochs})")
        if self.unit not in ("examples", "tokens"):
            raise ValueError(f"sampling.unit must be 'examples' or 'tokens' (got {self.unit!r})")
        for field in ("weights", "multipliers"):
            for lang, w in getattr(self, field).items():
                if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
                    raise ValueError(
                        f"sampling.{field}.{lang} must be a finite number >= 0 (got {w!r})"
                    )
        if self.static_strategy == "manual" and not self.weights:
            raise ValueError("sampling.weights: strategy 'manual' needs weights per language")

    @property
    def static_strategy(self) -> str:
        """The count formula of the weights at step 0: the strategy, or dynamic's prior."""
        return self.dynamic.prior if self.strategy == "dynamic" else self.strategy

    def strategy_options(self) -> dict:
        """The keyword options `language_weights` takes for `static_strategy`."""
        opts: dict = {"multipliers": self.multipliers}
        strategy = self.static_strategy
        if strategy == "temperature":
            opts["alpha"] = self.alpha
        elif strategy == "unimax":
            opts["budget"] = self.budget
            opts["max_epochs"] = self.max_epochs
        elif strategy == "manual":
            opts["weights"] = self.weights
        return opts


def _check_counts(counts: Mapping[str, float]) -> None:
    if not counts:
        raise DataError("no languages: the training data is empty; check data.sources")
    for lang, n in counts.items():
        if not (isinstance(n, int | float) and math.isfinite(n)) or n < 0:
            raise DataError(f"language {lang!r}: count must be a number >= 0 (got {n!r})")
        if n == 0:
            raise DataError(
                f"language {lang!r} has zero examples; remove it from the sources or fix its "
                "files (all rows may have been skipped as bad)"
            )


def _check_known(name: str, given: Mapping[str, float], counts: Mapping[str, float]) -> None:
    unknown = sorted(set(given) - set(counts))
    if unknown:
        raise DataError(
            f"sampling.{name}: language(s) {', '.join(map(repr, unknown))} not in the data "
            f"(languages: {', '.join(sorted(counts))}); fix the name or remove the entry"
        )
    for lang, w in given.items():
        if not (isinstance(w, int | float) and math.isfinite(w)) or w < 0:
            raise DataError(f"sampling.{name}.{lang}: must be a number >= 0 (got {w!r})")


def _unimax(counts: Mapping[str, float], budget: float, max_epochs: float) -> dict[str, float]:
    # Chung et al. 2023, Algorithm 1: visit languages from smallest to largest; each gets the
    # uniform share of what is left, capped at max_epochs passes over its data.
    order = sorted(counts, key=lambda lang: (counts[lang], lang))
    remaining = float(budget)
    alloc: dict[str, float] = {}
    for i, lang in enumerate(order):
        share = remaining / (len(order) - i)
        alloc[lang] = min(share, counts[lang] * max_epochs)
        remaining -= alloc[lang]
    return {lang: alloc[lang] for lang in counts}


def language_weights(
    counts: Mapping[str, float], strategy: str = "natural", **options
) -> dict[str, float]:
    """Turns per-language counts into sampling probabilities by a named strategy.

    Args:
      counts: language -> number of examples (or tokens); every count must be > 0.
      strategy: natural | uniform | inverse | temperature | log | unimax | manual (see the module
        docstring for the formulas).
      **options: `alpha` (temperature, default 0.3); `budget` (unimax, required, same unit as
        counts) and `max_epochs` (unimax, default 4); `weights` (manual, one per language);
        `multipliers` (any strategy, per-language factors applied before renormalising).

    Returns:
      language -> probability, in the key order of `counts`, summing to 1.

    Raises:
      DataError: zero/negative counts, unknown strategy or option, negative or all-zero weights,
        a weight or multiplier for a language not in the data.

    References:
      UniMax: Chung et al. 2023, "UniMax: Fairer and More Effective Language Sampling for
      Large-Scale Multilingual Pretraining", Algorithm 1.
    """
    _check_counts(counts)
    multipliers = options.pop("multipliers", None) or {}
    allowed = {
        "natural": set(),
        "uniform": set(),
        "inverse": set(),
        "temperature": {"alpha"},
        "log": set(),
        "unimax": {"budget", "max_epochs"},
        "manual": {"weights"},
    }
    if strategy not in allowed:
        raise DataError(
            f"sampling.strategy: unknown strategy {strategy!r}; choose one of {', '.join(allowed)}"
        )
    extra = set(options) - allowed[strategy]
    if extra:
        raise DataError(
            f"sampling: option(s) {', '.join(sorted(extra))} do not apply to strategy "
            f"{strategy!r} (it takes {', '.join(sorted(allowed[strategy])) or 'no options'})"
        )
    total = float(sum(counts.values()))
    if strategy == "natural":
        raw = {lang: n / total for lang, n in counts.items()}
    elif strategy in ("uniform", "inverse"):
        # inverse: per-example weight 1/n_l summed over the n_l examples of l is 1 per language.
        raw = {lang: 1.0 for lang in counts}
    elif strategy == "temperature":
        alpha = float(options.get("alpha", 0.3))
        if not alpha > 0:
            raise DataError(f"sampling.alpha must be > 0 (got {alpha})")
        raw = {lang: (n / total) ** alpha for lang, n in counts.items()}
    elif strategy == "log":
        raw = {lang: math.log1p(n) for lang, n in counts.items()}
    elif strategy == "unimax":
        budget = options.get("budget")
        max_epochs = float(options.get("max_epochs", 4.0))
        if budget is None or not budget > 0:
            raise DataError(
                f"sampling.budget: strategy 'unimax' needs a budget > 0 (got {budget!r}); set it "
                "to the run's total examples (or tokens with unit: tokens)"
            )
        if not max_epochs > 0:
            raise DataError(f"sampling.max_epochs must be > 0 (got {max_epochs})")
        raw = _unimax(counts, float(budget), max_epochs)
    else:  # manual
        weights = options.get("weights") or {}
        _check_known("weights", weights, counts)
        missing = sorted(set(counts) - set(weights))
        if missing:
            raise DataError(
                f"sampling.weights: no weight for language(s) {', '.join(map(repr, missing))}; "
                "give every language a weight (0 to leave one out)"
            )
        raw = {lang: float(weights[lang]) for lang in counts}
    _check_known("multipliers", multipliers, counts)
    raw = {lang: w * float(multipliers.get(lang, 1.0)) for lang, w in raw.items()}
    z = sum(raw.values())
    if not z > 0:
        raise DataError(
            f"sampling: all weights are zero after strategy {strategy!r} and multipliers; "
            "give at least one language a positive weight"
        )
    return {lang: w / z for lang, w in raw.items()}


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
    _check_counts(examples)
    langs = sorted(examples)
    if sampling_cfg.unit == "tokens":
        if tokens is None:
            raise DataError("sampling.unit is 'tokens' but no token counts were given")
        counts = {lang: float(tokens[lang]) for lang in langs}
    else:
        counts = {lang: float(examples[lang]) for lang in langs}
    opts = sampling_cfg.strategy_options()
    if sampling_cfg.static_strategy == "unimax" and opts["budget"] is None:
        # The run's own budget: every draw is one example, `mean` tokens long on average.
        mean = sum(counts.values()) / sum(examples[lang] for lang in langs)
        opts["budget"] = float(total_samples) * (mean if sampling_cfg.unit == "tokens" else 1.0)
    target = language_weights(counts, sampling_cfg.static_strategy, **opts)
    if sampling_cfg.unit == "tokens":
        # Token share t_l needs draws in proportion to t_l / (tokens per example of l).
        per_draw = {lang: target[lang] * examples[lang] / counts[lang] for lang in langs}
        z = sum(per_draw.values())
        per_draw = {lang: v / z for lang, v in per_draw.items()}
    else:
        per_draw = dict(target)
    total_count = sum(counts.values())
    rows = []
    for lang in langs:
        exp_samples = per_draw[lang] * total_samples
        epochs = exp_samples / examples[lang]
        warning = None
        if epochs > sampling_cfg.max_epochs:
            warning = (
                f"language {lang!r} would be repeated {epochs:.1f} times (> max_epochs "
                f"{sampling_cfg.max_epochs:g}); add data, lower its weight or use unimax"
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
                skipped=int((skipped or {}).get(lang, 0)),
                warning=warning,
            )
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


# ----------------------------------------------------------------------------- dynamic weights


def bounded_weights(
    weights: Mapping[str, float], lower: Mapping[str, float], upper: Mapping[str, float]
) -> dict[str, float]:
    """The weights rescaled to sum to 1 with every language inside [lower_l, upper_l].

    Languages that cross a bound are fixed at it and the rest share what is left in proportion
    to their weights, until none crosses (at most L rounds; UniMax redistributes its epoch cap
    the same way). Needs sum(lower) <= 1 <= sum(upper).
    """
    fixed: dict[str, float] = {}
    for _ in range(len(weights) + 1):
        free = [lang for lang in weights if lang not in fixed]
        mass = 1.0 - sum(fixed.values())
        z = sum(weights[lang] for lang in free)
        if not free or not z > 0:
            break
        scaled = {lang: weights[lang] * mass / z for lang in free}
        crossed = {
            lang: lower[lang] if w < lower[lang] else upper[lang]
            for lang, w in scaled.items()
            if w < lower[lang] or w > upper[lang]
        }
        if not crossed:
            return {lang: fixed.get(lang, scaled.get(lang, 0.0)) for lang in weights}
        fixed.update(crossed)
    z = sum(fixed.values())
    return {lang: fixed.get(lang, 0.0) / z for lang in weights}


def dro_update(
    weights: Mapping[str, float],
    losses: Mapping[str, float],
    reference: Mapping[str, float],
    prior: Mapping[str, float],
    *,
    eta: float,
    smoothing: float,
) -> dict[str, float]:
    """One exponentiated-gradient step on the per-language excess loss, smoothed to the prior.

    w_l <- w_l * exp(eta * (L_l - ref_l)); normalise; then (1 - c) w + c * prior.

    References:
      Xie et al. 2023, "DoReMi", Algorithm 1 (steps 2-3), with the prior in place of uniform.
    """
    # Clipped exponent: a diverging language must not overflow the weights to inf/nan.
    raw = {
        lang: w * math.exp(min(50.0, max(-50.0, eta * (losses[lang] - reference[lang]))))
        for lang, w in weights.items()
    }
    z = sum(raw.values())
    return {lang: (1 - smoothing) * raw[lang] / z + smoothing * prior[lang] for lang in raw}


def power_weights(
    prior: Mapping[str, float], losses: Mapping[str, float], *, beta: float
) -> dict[str, float]:
    """w_l ∝ prior_l * L_l ** beta: harder languages (higher loss) weigh more; beta 0 = prior."""
    raw = {lang: p * max(losses[lang], 1e-12) ** beta for lang, p in prior.items()}
    z = sum(raw.values())
    return {lang: w / z for lang, w in raw.items()}
