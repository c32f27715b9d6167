"""``LoRALinear``: an ``nnx.Linear`` plus named low-rank updates, and its variable type.

The design (tree surgery, names, layout, per-example routing) is described in
:mod:`langtune_jax.peft.lora`; ``apply_lora`` there puts these wrappers into a model.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.peft import targets as _targets
from langtune_jax.peft.lora.routing import Routing, active_routing
from langtune_jax.peft.tracing import check_traced

Array = jax.Array


class LoRAParam(nnx.Variable):
    """A LoRA factor (``A`` or ``B``): the variable type that trains."""


# --------------------------------------------------------------------------------------------------
# The wrapper


class LoRALinear(nnx.Module):
    """An ``nnx.Linear`` plus named low-rank updates: ``y = base(x) + sum_active drop(x) A B s``.

    Attributes:
      base_layer: the wrapped ``nnx.Linear`` (its ``kernel`` ``[in, out]`` stays frozen).
      lora_A: ``{adapter: LoRAParam [in, r]}``.
      lora_B: ``{adapter: LoRAParam [r, out]}``.
      lora_dropout: ``{adapter: nnx.Dropout}`` for adapters with ``lora_dropout > 0``.
      scaling: ``{adapter: scale}`` (read-only view of a static tuple).
      active_adapters: names used in the forward pass.
      merged_adapters: names currently folded into ``base_layer.kernel``.
    """

    _is_peft_wrapper = True

    def __init__(self, base_layer: nnx.Linear):
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.lora_A = nnx.Dict()
        self.lora_B = nnx.Dict()
        self.lora_dropout = nnx.Dict()
        # Static, hashable metadata (part of the graph definition, never traced).
        self._scaling: tuple[tuple[str, float], ...] = ()
        self.active_adapters: tuple[str, ...] = ()
        self.merged_adapters: tuple[str, ...] = ()

    @property
    def scaling(self) -> dict[str, float]:
        return dict(self._scaling)

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(self.lora_A.keys())

    def add_adapter(
        self,
        name: str,
        *,
        r: int,
        scaling: float,
        dropout: float,
        init: bool | str,
        rngs: nnx.Rngs,
        deterministic: bool = False,
    ) -> None:
        """Create adapter ``name`` of rank ``r`` (see ``LoraConfig.init_lora_weights``)."""
        kernel = self.base_layer.kernel
        n_in, n_out = kernel.shape
        # Adapters of a 16-bit model train in float32 (as PEFT's autocast_adapter_dtype=True).
        dtype = jnp.promote_types(kernel.value.dtype, jnp.float32)
        key_a, key_b = jax.random.split(rngs.params())
        # torch's kaiming_uniform_(a=sqrt(5)) on a [r, in] weight: U(-1/sqrt(in), 1/sqrt(in)).
        a = jax.random.uniform(key_a, (n_in, r), dtype, -1.0, 1.0) / math.sqrt(n_in)
        b = jnp.zeros((r, n_out), dtype)
        if init == "gaussian":
            a = jax.random.normal(key_a, (n_in, r), dtype) / r
        elif init is False:  # torch nn.Linear default init for B as well: not the identity
            b = jax.random.uniform(key_b, (r, n_out), dtype, -1.0, 1.0) / math.sqrt(r)
        elif init == "pissa":
            a, b = (v.astype(dtype) for v in self._pissa(r, scaling))
        in_axis, out_axis = _logical_axes(kernel)
        self.lora_A[name] = LoRAParam(
            _place_like(a, kernel.value, 0), out_sharding=(in_axis, None), eager_sharding=False
        )
        self.lora_B[name] = LoRAParam(
            _place_like(b, kernel.value, 1), out_sharding=(None, out_axis), eager_sharding=False
        )
        if dropout > 0:
            drop = nnx.Dropout(dropout, rngs=rngs)
            drop.deterministic = deterministic
            self.lora_dropout[name] = drop
        self._scaling = tuple((k, v) for k, v in self._scaling if k != name) + ((name, scaling),)
        if not self.active_adapters:
            self.active_adapters = (name,)

    def _pissa(self, r: int, scaling: float) -> tuple[Array, Array]:
        # PiSSA: kernel = U S Vh; A = U_r sqrt(S_r / s), B = sqrt(S_r / s) Vh_r, kernel -= s A B, so
        # the forward is unchanged at init and the adapter holds the principal directions.
        kernel = self.base_layer.kernel
        w = kernel.value.astype(jnp.float32)
        u, s, vh = jnp.linalg.svd(w, full_matrices=False)  # [in, k], [k], [k, out]
        root = jnp.sqrt(s[:r] / scaling)
        a = u[:, :r] * root  # [in, r]
        b = root[:, None] * vh[:r]  # [r, out]
        kernel.value = (w - scaling * (a @ b)).astype(kernel.value.dtype)
        return a, b

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the kernel; unmerge_lora first")
        del self.lora_A[name]
        del self.lora_B[name]
        if name in self.lora_dropout:
            del self.lora_dropout[name]
        self._scaling = tuple((k, v) for k, v in self._scaling if k != name)
        self.active_adapters = tuple(n for n in self.active_adapters if n != name)

    def delta(self, name: str) -> Array:
        """``scale * A @ B``: ``[in, out]``, what merging adds to the kernel."""
        return self.scaling[name] * (self.lora_A[name].value @ self.lora_B[name].value)

    def __call__(self, x: Array) -> Array:
        y = self.base_layer(x)  # [..., out]
        routing = active_routing()
        if routing is not None:  # per-example adapters replace the active ones
            if not any(n in self.lora_A for n in routing.names):
                return y
            return y + self._routed(x, routing).astype(y.dtype)
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            a, b = self.lora_A[name].value, self.lora_B[name].value
            h = self.lora_dropout[name](x) if name in self.lora_dropout else x
            dtype = self.base_layer.dtype or jnp.result_type(x.dtype, a.dtype)
            h = h.astype(dtype) @ a.astype(dtype)  # [..., r]
            y = y + ((h * self.scaling[name]) @ b.astype(dtype)).astype(y.dtype)  # [..., out]
        return y

    def _routed(self, x: Array, routing: Routing) -> Array:
        ids = routing.adapter_ids
        check_traced(x, ids, "adapter_routing", "adapter_ids")
        if any(n in self.merged_adapters for n in routing.names):
            raise ValueError(
                "per-example adapters need un-merged adapters: call unmerge_lora first"
            )
        if ids.shape[0] != x.shape[0]:
            raise ValueError(
                f"adapter_ids has {ids.shape[0]} entries but the batch has {x.shape[0]} examples"
            )
        present = [n for n in routing.names if n in self.lora_A]
        r_max = max(self.lora_A[n].value.shape[1] for n in present)
        dtype = self.base_layer.dtype or jnp.result_type(x.dtype, self.lora_A[present[0]].value)
        a_stack, b_stack, scales = [], [], []
        for name in routing.names:
            if name in self.lora_A:
                a, b = self.lora_A[name].value, self.lora_B[name].value
                pad = r_max - a.shape[1]  # zero rank padding contributes nothing
                a_stack.append(jnp.pad(a.astype(dtype), ((0, 0), (0, pad))))
                b_stack.append(jnp.pad(b.astype(dtype), ((0, pad), (0, 0))))
                scales.append(self.scaling[name])
            else:  # this layer has no such adapter: that example sees the base layer only
                a_stack.append(jnp.zeros((self.in_features, r_max), dtype))
                b_stack.append(jnp.zeros((r_max, self.out_features), dtype))
                scales.append(0.0)
        safe = jnp.clip(ids, 0, len(routing.names) - 1)
        a_g = jnp.stack(a_stack)[safe]  # [B, in, r]
        b_g = jnp.stack(b_stack)[safe]  # [B, r, out]
        s_g = jnp.where(ids >= 0, jnp.asarray(scales, dtype)[safe], 0.0)  # [B]
        # Routed adapters share the dropout of the first one that has it.
        drops = [n for n in present if n in self.lora_dropout]
        h = self.lora_dropout[drops[0]](x) if drops else x
        h = jnp.einsum("b...i,bir->b...r", h.astype(dtype), a_g)  # [B, ..., r]
        h = h * s_g.reshape((-1,) + (1,) * (h.ndim - 1))
        return jnp.einsum("b...r,bro->b...o", h, b_g)  # [B, ..., out]


def _logical_axes(kernel: nnx.Variable) -> tuple[Any, Any]:
    names = kernel.get_metadata().get("out_sharding") or (None, None)
    return tuple(names) if len(names) == 2 else (None, None)


def _place_like(value: Array, kernel: Array, dim: int) -> Array:
    """Give ``A`` (``dim=0``) / ``B`` (``dim=1``) the kernel's sharding on that dimension."""
    sharding = getattr(kernel, "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return value
    spec = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
    new_spec = (spec[0], None) if dim == 0 else (None, spec[1])
    return jax.device_put(
        value, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*new_spec))
    )


# --------------------------------------------------------------------------------------------------
# On a model


def lora_layers(model: nnx.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` of ``model`` by dotted path."""
    return {p: m for p, m in _targets.named_modules(model).items() if isinstance(m, LoRALinear)}
