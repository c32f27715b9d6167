"""Pieces shared by every model file: logical-axis initialisers and output containers.

Parameters carry *logical* axis names (``embed``, ``mlp``, ``heads``, ``kv_heads``, ``vocab``) in
Flax's ``out_sharding`` metadata. They are never sharded at construction (``eager_sharding=False``):
``langtune_jax.train.mesh`` maps the names to mesh axes with one rules table and places the state,
so the same model code runs unsharded on one CPU device and sharded on a TPU slice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

Array = jax.Array

# The logical axis vocabulary. Activations use BATCH and LENGTH as well.
BATCH, LENGTH, EMBED, MLP, HEADS, KV_HEADS, VOCAB = (
    "batch",
    "length",
    "embed",
    "mlp",
    "heads",
    "kv_heads",
    "vocab",
)


def with_axes(init: Any, *names: str | None) -> Any:
    """Wrap an initializer so its variable carries logical axis ``names`` (one per dimension).

    Example: ``nnx.Linear(..., kernel_init=with_axes(nnx.initializers.normal(0.02), EMBED, MLP))``.
    """
    return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


@dataclasses.dataclass
class ModelOutput:
    """What every model returns.

    Attributes:
      logits: ``[B, T, V]`` (token heads) or ``[B, C]`` (sequence heads); ``None`` for bare models.
      last_hidden_state: ``[B, T, D]`` final hidden states (after the final norm for decoders).
      hidden_states: per-layer hidden states when asked for (embeddings first), else ``None``.
      cache: the updated KV cache of a decoder called with one, else ``None``.
    """

    logits: Array | None = None
    last_hidden_state: Array | None = None
    hidden_states: tuple[Array, ...] | None = None
    cache: Any = None


jax.tree_util.register_dataclass(
    ModelOutput,
    data_fields=["logits", "last_hidden_state", "hidden_states", "cache"],
    meta_fields=[],
)
