"""Language weight strategies: per-language counts -> sampling probabilities, static and dynamic.

`language_weights` turns per-language counts (examples or tokens) into target probabilities that
sum to one. Every static strategy is one small function of the counts, listed in
`STRATEGY_TABLE`; its docstring gives its formula and reference. All of them are closed formulas,
so the plan printed by `langtune plan` is exactly what the mixture samples:

    natural      n_l / sum n (the data as it is)
    uniform      1 / L
    inverse      1 / L, as per-example weights 1 / n_l give
    temperature  (n_l / sum n) ** alpha, renormalised (XLM, XLM-R, mBERT, mT5)
    log          ln(1 + n_l), renormalised
    unimax       a uniform budget capped at max_epochs epochs per language (UniMax)
    manual       the given weights, renormalised

A strategy's options are its function's keyword arguments; each option has one check
(`check_option`), which both `SamplingConfig` (when a config is read) and `language_weights`
(when called directly) apply. `multipliers` rescale any strategy's result per language before
renormalising (for languages that need more weight than their size says: difficulty, script,
semantic density).

The dynamic strategy starts from a static one (`DynamicConfig.prior`) and moves the weights with
the per-language loss: `dro_update` and `power_weights` are its rules, `bounded_weights` its guard
rails; `langtune_jax.data.weight_record` holds them and the `WeightRecord` that applies them.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from langtune_jax.data.errors import DataError

StaticStrategy = Literal["natural", "uniform", "inverse", "temperature", "log", "unimax", "manual"]
Strategy = Literal[
    "natural", "uniform", "inverse", "temperature", "log", "unimax", "manual", "dynamic"
]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]
STATIC_STRATEGIES: tuple[str, ...] = StaticStrategy.__args__  # type: ignore[attr-defined]

# Defaults shared by the strategy functions and `SamplingConfig`.
DEFAULT_ALPHA = 0.3
DEFAULT_MAX_EPOCHS = 4.0


# --------------------------------------------------------------------------- static strategies
# Each takes the counts (language -> n_l > 0) and its options, and returns unnormalised weights
# in the key order of the counts; `language_weights` applies multipliers and normalises.


def natural(counts: Mapping[str, float]) -> dict[str, float]:
    """The data's own proportions: p_l = n_l / sum_k n_k."""
    total = float(sum(counts.values()))
    return {lang: n / total for lang, n in counts.items()}


def uniform(counts: Mapping[str, float]) -> dict[str, float]:
    """Every language alike: p_l = 1 / L."""
    return {lang: 1.0 for lang in counts}


def inverse(counts: Mapping[str, float]) -> dict[str, float]:
    """Inverse frequency: per-example weight 1 / n_l, so p_l = n_l * (1 / n_l) / L = 1 / L.

    This is what torch's ``WeightedRandomSampler`` gives with inverse-frequency weights; as a
    language distribution it equals `uniform`.
    """
    return {lang: 1.0 for lang in counts}


def temperature(counts: Mapping[str, float], *, alpha: float = DEFAULT_ALPHA) -> dict[str, float]:
    """Temperature sampling: p_l ∝ q_l ** alpha, q_l = n_l / sum_k n_k, alpha = 1 / T.

    alpha 1 is `natural`, alpha -> 0 approaches `uniform`.

    References:
      Conneau & Lample 2019, "Cross-lingual Language Model Pretraining" (XLM, alpha 0.5);
      Conneau et al. 2020, "Unsupervised Cross-lingual Representation Learning at Scale"
      (XLM-R, 0.3); Devlin et al. 2019, multilingual BERT (0.7); Xue et al. 2021, "mT5" (0.3).
    """
    total = float(sum(counts.values()))
    alpha = float(alpha)
    return {lang: (n / total) ** alpha for lang, n in counts.items()}


def logarithmic(counts: Mapping[str, float]) -> dict[str, float]:
    """Log-scaled counts (strategy ``log``): p_l ∝ ln(1 + n_l)."""
    return {lang: math.log1p(n) for lang, n in counts.items()}


def unimax(
    counts: Mapping[str, float],
    *,
    budget: float | None = None,
    max_epochs: float = DEFAULT_MAX_EPOCHS,
) -> dict[str, float]:
    """UniMax: a uniform share of `budget` per language, capped at `max_epochs` epochs.

    Languages are visited from smallest to largest (the i-th of L, 0-based); each gets
    p_l ∝ a_l = min(R_i / (L - i), max_epochs * n_l), R_i the budget the languages before it
    left, so what a small language cannot use goes to the larger ones.

    Args:
      counts: language -> examples (or tokens, the unit of `budget`).
      budget: the run's total draws in the unit of the counts (required).
      max_epochs: the cap on passes over a language's data.

    References:
      Chung et al. 2023, "UniMax: Fairer and More Effective Language Sampling for Large-Scale
      Multilingual Pretraining", Algorithm 1.
    """
    if budget is None:
        raise DataError(
            "sampling.budget: strategy 'unimax' needs a budget > 0 (got None); set it to the "
            "run's total examples (or tokens with unit: tokens)"
        )
    order = sorted(counts, key=lambda lang: (counts[lang], lang))
    remaining = float(budget)
    alloc: dict[str, float] = {}
    for i, lang in enumerate(order):
        share = remaining / (len(order) - i)
        alloc[lang] = min(share, counts[lang] * float(max_epochs))
        remaining -= alloc[lang]
    return {lang: alloc[lang] for lang in counts}


def manual(
    counts: Mapping[str, float], *, weights: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Given weights: p_l ∝ weights_l; every language of the data needs one (0 leaves it out)."""
    weights = weights or {}
    check_languages("weights", weights, counts)
    missing = sorted(set(counts) - set(weights))
    if missing:
        raise DataError(
            f"sampling.weights: no weight for language(s) {', '.join(map(repr, missing))}; "
            "give every language a weight (0 to leave one out)"
        )
    return {lang: float(weights[lang]) for lang in counts}


STRATEGY_TABLE: dict[str, Callable[..., dict[str, float]]] = {
    "natural": natural,
    "uniform": uniform,
    "inverse": inverse,
    "temperature": temperature,
    "log": logarithmic,
    "unimax": unimax,
    "manual": manual,
}
# The options of a strategy are its function's keyword-only arguments.
_TAKES: dict[str, tuple[str, ...]] = {
    name: tuple(
        p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY
    )
    for name, fn in STRATEGY_TABLE.items()
}


# --------------------------------------------------------------------------- checks


def check_option(name: str, value: Any) -> None:
    """The one range check of a sampling option (alpha, budget, max_epochs, weights, multipliers).

    Raises:
      DataError: naming ``sampling.<name>`` (and the language, for a per-language map).
    """
    if name in ("alpha", "max_epochs") and not value > 0:
        raise DataError(f"sampling.{name} must be > 0 (got {value})")
    if name == "budget" and value is not None and not value > 0:
        raise DataError(f"sampling.budget must be > 0 or null (got {value})")
    if name in ("weights", "multipliers"):
        for lang, w in value.items():
            if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
                raise DataError(f"sampling.{name}.{lang} must be a finite number >= 0 (got {w!r})")


def check_counts(counts: Mapping[str, float]) -> None:
    """Every language has a count > 0.

    Raises:
      DataError: no languages, or a language whose count is zero, negative or not a number.
    """
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


def check_languages(name: str, given: Mapping[str, float], counts: Mapping[str, float]) -> None:
    """Every language of a per-language option (`weights`, `multipliers`) is in the data."""
    unknown = sorted(set(given) - set(counts))
    if unknown:
        raise DataError(
            f"sampling.{name}: language(s) {', '.join(map(repr, unknown))} not in the data "
            f"(languages: {', '.join(sorted(counts))}); fix the name or remove the entry"
        )


def _strategy(strategy: str, options: Mapping[str, Any]) -> Callable[..., dict[str, float]]:
    """The table's function of `strategy`, after checking the options it is given."""
    if strategy not in STRATEGY_TABLE:
        raise DataError(
            f"sampling.strategy: unknown strategy {strategy!r}; choose one of "
            f"{', '.join(STRATEGY_TABLE)}"
        )
    extra = set(options) - set(_TAKES[strategy])
    if extra:
        raise DataError(
            f"sampling: option(s) {', '.join(sorted(extra))} do not apply to strategy "
            f"{strategy!r} (it takes {', '.join(sorted(_TAKES[strategy])) or 'no options'})"
        )
    for name, value in options.items():
        check_option(name, value)
    return STRATEGY_TABLE[strategy]


def language_weights(
    counts: Mapping[str, float], strategy: str = "natural", **options
) -> dict[str, float]:
    """Turns per-language counts into sampling probabilities by a named strategy.

    Args:
      counts: language -> number of examples (or tokens); every count must be > 0.
      strategy: natural | uniform | inverse | temperature | log | unimax | manual (the functions
        of `STRATEGY_TABLE`, whose docstrings give the formulas).
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
    check_counts(counts)
    multipliers = options.pop("multipliers", None) or {}
    weigh = _strategy(strategy, options)
    check_option("multipliers", multipliers)
    raw = weigh(counts, **options)
    check_languages("multipliers", multipliers, counts)
    raw = {lang: w * float(multipliers.get(lang, 1.0)) for lang, w in raw.items()}
    z = sum(raw.values())
    if not z > 0:
        raise DataError(
            f"sampling: all weights are zero after strategy {strategy!r} and multipliers; "
            "give at least one language a positive weight"
        )
    return {lang: w / z for lang, w in raw.items()}


# --------------------------------------------------------------------------- configs


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
      strategy: one of natural, uniform, inverse, temperature, log, unimax, manual, dynamic.
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
    alpha: float = DEFAULT_ALPHA
    budget: float | None = None
    max_epochs: float = DEFAULT_MAX_EPOCHS
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
        for name in ("alpha", "budget", "max_epochs", "weights", "multipliers"):
            check_option(name, getattr(self, name))
        if self.unit not in ("examples", "tokens"):
            raise ValueError(f"sampling.unit must be 'examples' or 'tokens' (got {self.unit!r})")
        if self.static_strategy == "manual" and not self.weights:
            raise ValueError("sampling.weights: strategy 'manual' needs weights per language")

    @property
    def static_strategy(self) -> str:
        """The count formula of the weights at step 0: the strategy, or dynamic's prior."""
        return self.dynamic.prior if self.strategy == "dynamic" else self.strategy

    def strategy_options(self) -> dict:
        """The keyword options `language_weights` takes for `static_strategy`."""
        opts: dict = {"multipliers": self.multipliers}
        opts.update({name: getattr(self, name) for name in _TAKES[self.static_strategy]})
        return opts

    def unused_options(self) -> list[str]:
        """Options set away from their defaults that this strategy does not read, as dotted
        ``sampling.`` keys (the run warns about each: a value that changes nothing is a mistake
        or a leftover). ``max_epochs``, ``multipliers`` and ``unit`` apply to every strategy."""
        default = SamplingConfig()
        unused = [
            f"sampling.{name}"
            for name in ("alpha", "budget", "weights")
            if name not in _TAKES[self.static_strategy]
            and getattr(self, name) != getattr(default, name)
        ]
        if self.strategy != "dynamic":
            unused += [
                f"sampling.dynamic.{f.name}"
                for f in dataclasses.fields(DynamicConfig)
                if getattr(self.dynamic, f.name) != getattr(default.dynamic, f.name)
            ]
        return unused
