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


# Logical axis name -> mesh axis (or axes, or None = replicated). Mesh axes a mesh does not have are
# dropped, so one table serves a ("data",) mesh and a ("data", "fsdp", "tensor") mesh alike.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (VOCAB, "tensor"),
)


def logical_to_spec(
    names: tuple[str | None, ...] | None,
    shape: tuple[int, ...],
    mesh: jax.sharding.Mesh,
    rules=DEFAULT_RULES,
) -> jax.sharding.PartitionSpec:
    """Map logical axis ``names`` of an array of ``shape`` to a ``PartitionSpec`` on ``mesh``.

    A dimension stays replicated when its name has no rule, the rule's mesh axes are absent from
    the mesh or already used by an earlier dimension, or the dimension is not divisible by the mesh
    axes' total size (e.g. 3 labels on a tensor axis of 4) — so every model loads on every mesh.
    """
    P = jax.sharding.PartitionSpec
    if not names:
        return P()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape, strict=True):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a in mesh.shape and a not in used)
        size = 1
        for a in axes:
            size *= mesh.shape[a]
        if not axes or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)
