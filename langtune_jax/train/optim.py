"""The optax chain: clipping, optimizer, schedule and weight-decay mask.

It is built over the *trainable* parameters only (the state selected by the PEFT filter), so frozen
base weights carry no optimizer state and are never differentiated.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from langtune_jax.config import TrainConfig


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Learning rate per step: linear warm-up to ``learning_rate``, then constant/linear/cosine.

    Linear and cosine decay reach 0 at ``cfg.steps``.
    """
    warmup = min(cfg.warmup_steps, cfg.steps)
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


def decay_mask(params: Any) -> Any:
    """True for leaves that take weight decay: matrices (ndim >= 2), not biases, norms or scalars."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping followed by the configured optimizer and schedule.

    Gradient accumulation is done inside the train step (a scan over micro-batches), so the optimizer
    always sees the mean gradient of the full global batch.
    """
    schedule = make_schedule(cfg)
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
