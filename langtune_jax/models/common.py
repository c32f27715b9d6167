"""Pieces shared by every model file: logical-axis initialisers and output containers.

Parameters carry *logical* axis names (``embed``, ``mlp``, ``heads``, ``kv_heads``, ``vocab``) in
Flax's ``out_sharding`` metadata. They are never sharded at construction (``eager_sharding=False``):
``langtune_jax.train.mesh`` maps the names to mesh axes with one rules table and places the state,
so the same model code runs unsharded on one CPU device and sharded on a TPU slice.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
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


def positions_from_mask(mask: Array) -> Array:
    """Position ids ``[B, T]`` from a ``[B, T]`` padding/segment mask.

    Positions count the non-zero tokens of each segment from 0 (left padding does not shift them;
    a new segment id restarts them). Padding gets the position of its predecessor (or 0).
    """
    valid = mask != 0
    count = jnp.cumsum(valid, axis=1, dtype=jnp.int32)  # [B, T] tokens so far, this one included
    # Segment id of the previous *non-pad* token (0 if none), so pads inside a row never restart.
    last = jax.lax.cummax(jnp.where(valid, jnp.arange(mask.shape[1]), -1), axis=1)
    prev_last = jnp.pad(last[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    prev = jnp.where(prev_last >= 0, jnp.take_along_axis(mask, jnp.maximum(prev_last, 0), 1), 0)
    starts = valid & (mask != prev)  # first token of each segment
    offset = jax.lax.cummax(jnp.where(starts, count - 1, 0), axis=1)
    return jnp.maximum(count - 1 - offset, 0)


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


# ----------------------------------------------------------------------------- activations


def constrain(x: Array, *names: str | None, rules=DEFAULT_RULES) -> Array:
    """Constrain activation ``x`` to logical axes ``names`` on the mesh being traced under.

    A no-op without a mesh (``jax.sharding.get_abstract_mesh()`` empty: plain CPU runs, tests),
    so the unsharded path is unchanged; the train step traces under its mesh (see
    ``langtune_jax.train.step``), where this pins e.g. hidden states to ``(batch, length,
    embed)`` at layer boundaries instead of leaving XLA to guess.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(names, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))


REMAT_POLICIES = {
    "none": None,
    "dots-saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_layer(layer: nnx.Module, policy: str):
    """``layer``'s call, rematerialised in the backward pass by the named ``jax.checkpoint``
    policy: ``none`` (keep every activation), ``dots-saveable`` (keep the matmul outputs, recompute
    the cheap element-wise work) or ``full`` (keep only the layer input)."""
    if policy == "none":
        return layer
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; use one of {sorted(REMAT_POLICIES)}")
    call = nnx.remat(lambda mod, *args: mod(*args), policy=REMAT_POLICIES[policy])
    return functools.partial(call, layer)


def set_remat(model: nnx.Module, policy: str) -> nnx.Module:
    """Set the remat ``policy`` on every layer stack of ``model`` (modules with a ``remat``
    attribute); returns ``model``."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; use one of {sorted(REMAT_POLICIES)}")
    for _, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Module) and hasattr(module, "remat"):
            module.remat = policy
    return model


#: The additive attention bias of a masked position: exp(score + MASK_BIAS - max) is exactly 0
#: in float32 for any real score, and a fully masked row stays finite (uniform, not NaN).
MASK_BIAS = -1e30


def attention(
    q: Array, k: Array, v: Array, keep: Array | None, *, dropout: nnx.Dropout, dtype
) -> Array:
    """Scaled dot-product attention ``[B, T, N, H]`` with a boolean ``keep`` mask.

    ``jax.nn.dot_product_attention`` (XLA on CPU; on GPU it may pick cuDNN's fused kernel) unless
    the probabilities need dropout (the fused op has none) or the model trains on CPU, where the
    einsum path's backward pass measured faster (docs/benchmarks.md, scripts/bench_attention.py).
    """
    scale = q.shape[-1] ** -0.5
    training = not dropout.deterministic
    if training and (dropout.rate > 0 or jax.default_backend() == "cpu"):
        # The scale on q ([B, T, N, H]) rather than on the scores ([B, N, T, T], 4x larger at
        # T=128, H=32), and the mask as an additive bias rather than a select: the same
        # probabilities (masked ones exactly 0); together 1.12-1.15x faster forward + backward
        # on CPU (either change alone: none; scripts/bench_attention.py).
        scores = jnp.einsum("bqnh,bknh->bnqk", q * jnp.asarray(scale, q.dtype), k)
        scores = scores.astype(jnp.float32)  # [B, N, T, T]
        if keep is not None:
            scores = scores + jnp.where(keep, 0.0, MASK_BIAS).astype(jnp.float32)
        probs = dropout(jax.nn.softmax(scores, axis=-1).astype(dtype))
        return jnp.einsum("bnqk,bknh->bqnh", probs, v)  # [B, T, N, H]
    impl = "xla" if jax.default_backend() == "cpu" else None
    return jax.nn.dot_product_attention(q, k, v, mask=keep, scale=scale, implementation=impl)
