"""Device mesh, logical-axis rules and the shardings of parameters, optimizer state and batches.

Parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ...; see
``langtune_jax.models.common``). One rules table maps each name to a mesh axis of the
``(data, fsdp, tensor)`` mesh; everything else is derived:

    logical names --rules--> PartitionSpec --mesh--> NamedSharding

A dimension that the mesh axis does not divide is replicated instead (a 4-label classifier on a
tensor axis of 8, say), so any model runs on any mesh. Batches are split over ``data`` and ``fsdp``.
The same code runs on one CPU device (a 1x1x1 mesh), 8 simulated CPU devices, a GPU host or a TPU
slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from langtune_jax.models.common import DEFAULT_RULES, logical_to_spec

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Build a ``(data, fsdp, tensor)`` mesh; one size may be -1 ("the rest of the devices").

    Args:
      data: data-parallel size.
      fsdp: fully-sharded data-parallel size (parameters and optimizer state split over it).
      tensor: tensor-parallel size.
      devices: devices to use (default: all devices of all processes).

    Raises:
      ValueError: sizes that do not multiply to the device count.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"mesh {dict(zip(AXES, sizes))}: {len(devices)} devices do not divide by {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices but "
            f"{len(devices)} are available; set mesh sizes whose product is {len(devices)} "
            "(or use -1 for one axis)"
        )
    device_array = np.asarray(devices).reshape(sizes)
    return Mesh(device_array, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.State:
    """NamedShardings for an ``nnx.State`` from its variables' logical axis metadata.

    Returns a State of the same structure whose variables hold ``NamedSharding`` values, usable as
    ``in_shardings``/``out_shardings`` of ``jax.jit`` and with ``jax.device_put``.
    """

    def one(var):
        if not isinstance(var, nnx.Variable):
            return NamedSharding(mesh, PartitionSpec())
        names = var.get_metadata().get("out_sharding")
        shape = getattr(var.get_value(), "shape", ())
        spec = logical_to_spec(names, shape, mesh, rules)
        return var.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def opt_state_shardings(tx: Any, opt_state: Any, param_shardings: nnx.State, mesh: Mesh) -> Any:
    """Shardings of an optax state: every copy of the parameter tree inside it (Adam's moments...)
    takes the parameters' shardings; scalars such as step counts are replicated."""
    return optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        opt_state,
        param_shardings,
        transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()),
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a ``[B, ...]`` batch array: rows split over the data and fsdp axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place this process's rows of a global batch on the mesh as global arrays.

    Each process passes only its own rows (``process_count`` equal slices, in process order); the
    result is the global batch, sharded over the data and fsdp axes.
    """
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(value)), value)
        for key, value in batch.items()
    }
