"""The optax chain: clipping, optimizer, schedule and weight-decay mask.

It is built over the *trainable* parameters only (the state selected by the PEFT filter), so frozen
base weights carry no optimizer state and are never differentiated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

from langtune_jax.config import TrainConfig


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Learning rate per step: linear warm-up to ``learning_rate``, then constant/linear/cosine.

    Linear and cosine decay reach 0 at ``cfg.steps``. A warm-up longer than the run is kept, as
    transformers' schedules keep it: the rate rises by ``learning_rate / warmup_steps`` per step
    for the whole run and never peaks (the run warns about it before step 0).
    """
    warmup = cfg.warmup_steps
    decay_steps = max(cfg.steps - warmup, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
    else:
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
    if warmup == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, warmup), after], [warmup]
    )


def segmented_schedule(cfg: TrainConfig, segments: Sequence[Mapping[str, int]]) -> optax.Schedule:
    """The schedule of a run continued with ``--extend``: one piece per segment.

    Args:
      cfg: the current training config (``steps`` is the last segment's end).
      segments: ``[{"start_step", "steps"}, ...]`` from ``run.json``, oldest first. The first
        segment runs the configured schedule to its ``steps``; each later one starts again at
        ``learning_rate`` (no warm-up) and decays to 0 at its own ``steps``.
    """
    if len(segments) <= 1:
        return make_schedule(cfg)
    pieces = [make_schedule(dataclasses.replace(cfg, steps=int(segments[0]["steps"])))]
    for seg in segments[1:]:
        length = max(int(seg["steps"]) - int(seg["start_step"]), 1)
        pieces.append(make_schedule(dataclasses.replace(cfg, steps=length, warmup_steps=0)))
    return optax.join_schedules(pieces, [int(seg["start_step"]) for seg in segments[1:]])


def decay_mask(params: Any) -> Any:
    """True for leaves that take weight decay: matrices (ndim >= 2), not biases, norms or scalars."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(
    cfg: TrainConfig, schedule: optax.Schedule | None = None
) -> optax.GradientTransformation:
    """Global-norm clipping followed by the configured optimizer and schedule.

    ``schedule`` replaces :func:`make_schedule` (``--extend`` passes :func:`segmented_schedule`).

    Gradient accumulation is done inside the train step (a scan over micro-batches), so the optimizer
    always sees the mean gradient of the full global batch.
    """
    schedule = make_schedule(cfg) if schedule is None else schedule
    if cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=decay_mask)
    elif cfg.optimizer == "sgd":
        opt = optax.chain(
            optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=0.9),
        )
    else:
        opt = optax.adafactor(
            schedule, weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=decay_mask
        )
    parts = [opt]
    if cfg.max_grad_norm is not None:
        parts.insert(0, optax.clip_by_global_norm(cfg.max_grad_norm))
    return optax.chain(*parts)
