"""The record behind dynamic language weights, and the update rules it replays.

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

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from langtune_jax.data.sampling import SamplingConfig

if TYPE_CHECKING:  # the plan module builds the plan; this one only reads it
    from langtune_jax.data.plan import SamplingPlan


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
