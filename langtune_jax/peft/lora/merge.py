"""Merge LoRA into the base kernels and back: ``merge_lora``, ``unmerge_lora``, ``merged_view``.

Merging adds ``scale * A @ B`` to each base kernel with ``jnp`` ops under ``jit`` with the kernel's
own ``out_shardings``: sharded kernels stay sharded and no host gathers a matrix.
``merge_and_unload`` also removes the wrappers, for export.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.peft import targets as _targets
from langtune_jax.peft.lora.layer import lora_layers

Array = jax.Array


@functools.lru_cache(maxsize=64)
def _merge_fn(sharding: jax.sharding.Sharding):
    # Jitted with the kernel's own sharding as output: each device computes its block of A @ B from
    # its shards of A and B (A follows the kernel's rows, B its columns); nothing is gathered to one
    # host, and the merged kernel keeps its placement. One compilation per sharding and shape.
    def update(kernel, a, b, scale):
        delta = a.astype(jnp.float32) @ b.astype(jnp.float32)  # [in, out]
        return (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)

    return jax.jit(update, out_shardings=sharding)


def _kernel_update(kernel: Array, a: Array, b: Array, scale: float) -> Array:
    return _merge_fn(kernel.sharding)(kernel, a, b, jnp.float32(scale))


def _fold(layer, name: str, sign: float) -> None:
    """Add (``sign=1``) or subtract (``-1``) adapter ``name``'s ``scale * A @ B`` to its kernel."""
    kernel = layer.base_layer.kernel
    a, b = layer.lora_A[name].value, layer.lora_B[name].value
    kernel.value = _kernel_update(kernel.value, a, b, sign * layer.scaling[name])


def merge_lora(model: nnx.Module, adapter_names: Sequence[str] | None = None) -> nnx.Module:
    """Fold ``scale * A @ B`` into each base kernel (default: the active adapters). In place.

    After merging, the forward pass skips the merged adapters (same outputs, base-layer cost).
    """
    for layer in lora_layers(model).values():
        names = layer.active_adapters if adapter_names is None else adapter_names
        for name in names:
            if name not in layer.lora_A or name in layer.merged_adapters:
                continue
            _fold(layer, name, 1.0)
            layer.merged_adapters = layer.merged_adapters + (name,)
    return model


def unmerge_lora(model: nnx.Module) -> nnx.Module:
    """Subtract every merged adapter from its base kernel again (in place)."""
    for layer in lora_layers(model).values():
        for name in layer.merged_adapters:
            _fold(layer, name, -1.0)
        layer.merged_adapters = ()
    return model


def merge_and_unload(model: nnx.Module) -> nnx.Module:
    """Merge the active adapters and put the plain ``nnx.Linear`` layers back (PEFT's name).

    The result has the original parameter tree (so ``save_pretrained`` writes a standard
    checkpoint) and no adapters; ``modules_to_save`` weights stay as trained.
    """
    merge_lora(model)
    for path, layer in lora_layers(model).items():
        _targets.set_module_at(model, path, layer.base_layer)
    model._lora_configs = ()
    return model


@contextlib.contextmanager
def merged_view(model: nnx.Module) -> Iterator[nnx.Module]:
    """Temporarily merge the active adapters and unwrap, restoring the adapted model afterwards."""
    layers = lora_layers(model)
    already = {p: layer.merged_adapters for p, layer in layers.items()}
    configs = getattr(model, "_lora_configs", ())
    merge_lora(model)
    for path, layer in layers.items():
        _targets.set_module_at(model, path, layer.base_layer)
    try:
        yield model
    finally:
        for path, layer in layers.items():
            _targets.set_module_at(model, path, layer)
        model._lora_configs = configs
        for path, layer in layers.items():
            extra = [n for n in layer.merged_adapters if n not in already[path]]
            for name in extra:
                _fold(layer, name, -1.0)
            layer.merged_adapters = already[path]
