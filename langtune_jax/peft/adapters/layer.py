"""The bottleneck adapter modules (``BottleneckAdapter``, ``AdapterWrapper``) and what trains.

The design (placements, tree surgery, per-language stacks) is described in
:mod:`langtune_jax.peft.adapters`; ``apply_adapters`` there puts these wrappers into a model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.models.common import EMBED, with_axes
from langtune_jax.peft import targets as _targets
from langtune_jax.peft.adapters.config import ACTIVATIONS, AdapterConfig, config_of, nice_widths
from langtune_jax.peft.adapters.routing import active_rows
from langtune_jax.peft.lora.layer import LoRAParam
from langtune_jax.peft.tracing import check_traced

Array = jax.Array


class AdapterParam(nnx.Variable):
    """A bottleneck adapter weight: the variable type that trains."""


class LanguageAdapterParam(nnx.Param):
    """A frozen, pretrained language adapter weight under a task adapter (MAD-X stacking).

    A ``Param`` (not an ``AdapterParam``): it lands in the frozen state with the base weights, is
    never differentiated and has no optimizer state; it is reloaded from its library folder.
    """


# --------------------------------------------------------------------------------------------------
# Modules


class BottleneckAdapter(nnx.Module):
    """``up(f(down(h)))`` — the adapter branch (the wrapper adds the residual and the scale).

    With ``num`` set it is a stack of ``num`` adapters (``down_kernel [num, D, m]`` ...) and the
    call takes ``rows [B]`` choosing one per example (``-1``: a zero branch for that example).
    ``param_type``: ``AdapterParam`` (trains) or ``LanguageAdapterParam`` (frozen, stacked).
    ``out_size``: the output width when it differs from the input's (the halves of an
    :class:`InvertibleAdapter` of odd width); default ``hidden_size``.
    """

    def __init__(
        self,
        hidden_size: int,
        bottleneck: int,
        *,
        non_linearity: str,
        init: str,
        num: int | None = None,
        out_size: int | None = None,
        param_dtype: Any = jnp.float32,
        param_type: type[nnx.Variable] = AdapterParam,
        rngs: nnx.Rngs,
    ):
        d, m = hidden_size, bottleneck
        d_out = d if out_size is None else out_size
        lead, lead_axes = ((), ()) if num is None else ((num,), (None,))
        batch_axis = () if num is None else (0,)
        if init == "identity":
            # torch nn.Linear's default (kaiming_uniform(a=sqrt(5))): U(+-1/sqrt(fan_in)).
            down = nnx.initializers.variance_scaling(
                1 / 3, "fan_in", "uniform", batch_axis=batch_axis
            )
            up = nnx.initializers.zeros_init()
        else:
            down = up = nnx.initializers.normal(0.02)
        zeros = nnx.initializers.zeros_init()

        def param(init_fn, shape, *axes):
            value = with_axes(init_fn, *lead_axes, *axes)(rngs.params(), lead + shape, param_dtype)
            return param_type(value)

        self.down_kernel = param(down, (d, m), EMBED, None)
        self.down_bias = param(zeros, (m,), None)
        self.up_kernel = param(up, (m, d_out), None, EMBED)
        self.up_bias = param(zeros, (d_out,), EMBED)
        self.non_linearity = non_linearity
        self.num = num

    def __call__(self, h: Array, rows: Array | None = None) -> Array:
        dtype = h.dtype
        act = ACTIVATIONS[self.non_linearity]
        wd, bd = self.down_kernel[...].astype(dtype), self.down_bias[...].astype(dtype)
        wu, bu = self.up_kernel[...].astype(dtype), self.up_bias[...].astype(dtype)
        if self.num is None:
            z = act(h @ wd + bd)  # [..., m]
            return z @ wu + bu  # [..., D]
        b = h.shape[0]
        safe = jnp.clip(rows, 0, self.num - 1)  # [B]
        expand = (b,) + (1,) * (h.ndim - 2)
        z = jnp.einsum("b...d,bdm->b...m", h, jnp.take(wd, safe, axis=0))  # [B, ..., m]
        z = act(z + jnp.take(bd, safe, axis=0).reshape(expand + (-1,)))
        out = jnp.einsum("b...m,bmd->b...d", z, jnp.take(wu, safe, axis=0))  # [B, ..., D]
        out = out + jnp.take(bu, safe, axis=0).reshape(expand + (-1,))
        keep = (rows >= 0).astype(dtype).reshape(expand + (1,))  # row -1: no language adapter
        return out * keep


def routed_rows(h: Array) -> Array:
    """The ``[B]`` language rows of the open :func:`with_routing` context, checked against ``h``."""
    rows = active_rows()
    if rows is None:
        raise ValueError(
            "this model has per-language adapters: call it inside `with with_routing(model, "
            "language_id):` (language_id [B] = adapter rows, see language_rows)"
        )
    check_traced(h, rows, "with_routing", "language_id")
    if rows.shape[0] != h.shape[0]:
        raise ValueError(
            f"with_routing: language_id has {rows.shape[0]} entries but the batch has "
            f"{h.shape[0]} examples"
        )
    return rows


class InvertibleAdapter(nnx.Module):
    """MAD-X's invertible adapter: a NICE coupling block on the embedding output (Dinh et al.).

    With ``x = [x1 | x2]`` split at ``D // 2``: ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``; the
    inverse is ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``, exact for any ``F`` and ``G``. ``F`` and
    ``G`` are bottleneck MLPs (``Linear(n, n // r) -> f -> Linear(n // r, .)``, ``r`` the
    reduction factor, 2 in MAD-X), the layout of the ``adapters`` library's
    ``NICECouplingBlock``. ``init="identity"`` zeroes their up-projections: the block is then the
    identity (exactly) until it trains. With ``num`` set it is a stack of ``num`` blocks routed by
    ``rows [B]`` as :class:`BottleneckAdapter` (row ``-1``: the identity for that example).
    """

    def __init__(
        self,
        hidden_size: int,
        reduction_factor: float,
        *,
        non_linearity: str,
        init: str,
        num: int | None = None,
        param_dtype: Any = jnp.float32,
        param_type: type[nnx.Variable] = AdapterParam,
        rngs: nnx.Rngs,
    ):
        self.split = hidden_size // 2
        self.reduction_factor = float(reduction_factor)
        half1, half2 = self.split, hidden_size - self.split
        kw = dict(
            non_linearity=non_linearity,
            init=init,
            num=num,
            param_dtype=param_dtype,
            param_type=param_type,
            rngs=rngs,
        )
        m_f, m_g = nice_bottlenecks(hidden_size, reduction_factor)
        self.F = BottleneckAdapter(half2, m_f, out_size=half1, **kw)
        self.G = BottleneckAdapter(half1, m_g, out_size=half2, **kw)

    def __call__(self, x: Array, rows: Array | None = None) -> Array:
        x1, x2 = x[..., : self.split], x[..., self.split :]
        y1 = x1 + self.F(x2, rows)
        return jnp.concatenate([y1, x2 + self.G(y1, rows)], axis=-1)

    def inverse(self, y: Array, rows: Array | None = None) -> Array:
        y1, y2 = y[..., : self.split], y[..., self.split :]
        x2 = y2 - self.G(y1, rows)
        return jnp.concatenate([y1 - self.F(x2, rows), x2], axis=-1)

    def weight(self, name: str) -> nnx.Variable:
        """A weight by its saved name, ``"F.down_kernel"`` ... (``library.INV_WEIGHTS``)."""
        sub, _, field = name.partition(".")
        return getattr(getattr(self, sub), field)


def nice_bottlenecks(hidden_size: int, reduction_factor: float) -> tuple[int, int]:
    """The widths of ``F`` and ``G`` (``int(n // r)`` of their inputs, the library's rounding).

    Raises:
      ValueError: a factor so large that a width would be 0.
    """
    widths = nice_widths(hidden_size, reduction_factor)
    if min(widths) < 1:
        half1 = hidden_size // 2
        raise ValueError(
            f"AdapterConfig.inv_adapter_reduction_factor={reduction_factor}: the invertible "
            f"adapter's inner width int({half1} // {reduction_factor}) is 0 for hidden_size "
            f"{hidden_size}; use a factor of at most {half1}"
        )
    return widths


class InvertibleEmbeddings(nnx.Module):
    """Holds the embedding layer and runs its output through an invertible adapter.

    ``apply_adapters`` puts it at ``<encoder>.embeddings`` when ``AdapterConfig.inv_adapter`` is
    set (or the MAD-X language library carries invertible adapters). A masked-LM head calls
    :meth:`invert_output` on its transformed hidden states before the tied decoder, as MAD-X
    does, so the model reads and writes tokens through the same (language's) transform.

    Attributes:
      base_layer: the original embeddings module.
      adapter: a single :class:`InvertibleAdapter`, or ``None``.
      language_adapters: a stack of per-language ones (routed per example), or ``None``.
    """

    def __init__(
        self,
        base_layer: nnx.Module,
        *,
        adapter: InvertibleAdapter | None,
        language_adapters: InvertibleAdapter | None,
    ):
        if (adapter is None) == (language_adapters is None):
            raise ValueError("InvertibleEmbeddings: give exactly one of adapter, language_adapters")
        self.base_layer = base_layer
        self.adapter = adapter
        self.language_adapters = language_adapters

    @property
    def word_embeddings(self) -> nnx.Module:
        """The base layer's token table (the tied decoder reads it)."""
        return self.base_layer.word_embeddings

    def _block(self, h: Array) -> tuple[InvertibleAdapter, Array | None]:
        if self.language_adapters is None:
            return self.adapter, None
        return self.language_adapters, routed_rows(h)

    def __call__(self, *args, **kwargs) -> Array:
        x = self.base_layer(*args, **kwargs)  # [B, T, D]
        block, rows = self._block(x)
        return block(x, rows)

    def invert_output(self, h: Array) -> Array:
        """The inverse transform, applied to a masked-LM head's hidden states ``[B, T, D]``."""
        block, rows = self._block(h)
        return block.inverse(h, rows)


class AdapterWrapper(nnx.Module):
    """Holds an adapted sub-module and runs it together with its adapter(s).

    Attributes:
      base_layer: the original sub-module (a ``Linear``, a ``LoRALinear``, an MLP block ...).
      adapter: the single (or shared task) ``BottleneckAdapter``, or ``None``.
      language_adapters: the stacked per-language ``BottleneckAdapter``, or ``None``.
      dropout: ``nnx.Dropout`` on the adapter branch, or ``None``.
      mode: ``serial``, ``parallel`` or ``parallel_residual`` (see the module docstring).
      scaling: the branch scale ``s``.
    """

    def __init__(
        self,
        base_layer: nnx.Module,
        *,
        mode: str,
        adapter: BottleneckAdapter | None,
        language_adapters: BottleneckAdapter | None,
        dropout: float,
        scaling: float,
        deterministic: bool,
        rngs: nnx.Rngs,
    ):
        self.base_layer = base_layer
        self.adapter = adapter
        self.language_adapters = language_adapters
        self.dropout = (
            nnx.Dropout(dropout, deterministic=deterministic, rngs=rngs) if dropout > 0 else None
        )
        self.mode = mode
        self.scaling = scaling

    def _branch(self, adapter: BottleneckAdapter, h: Array, rows: Array | None) -> Array:
        delta = adapter(h, rows)
        if self.dropout is not None:
            delta = self.dropout(delta)
        return delta * jnp.asarray(self.scaling, delta.dtype)

    def _rows(self, h: Array) -> Array | None:
        return None if self.language_adapters is None else routed_rows(h)

    def _parallel(self, x: Array) -> Array:
        # Parallel branches read the same input, so language and task deltas add up.
        rows = self._rows(x)
        delta = jnp.zeros_like(x)
        if self.language_adapters is not None:
            delta = delta + self._branch(self.language_adapters, x, rows)
        if self.adapter is not None:
            delta = delta + self._branch(self.adapter, x, None)
        return delta

    def __call__(self, *args, **kwargs):
        if self.mode == "parallel":
            return self.base_layer(*args, **kwargs) + self._parallel(args[0])  # [B, T, D]
        if self.mode == "parallel_residual":
            h, residual, *rest = args
            return self.base_layer(h, residual + self._parallel(residual), *rest, **kwargs)
        y = self.base_layer(*args, **kwargs)  # [B, T, D]
        rows = self._rows(y)
        if self.language_adapters is not None:  # MAD-X: language adapter, then task adapter
            y = y + self._branch(self.language_adapters, y, rows)
        if self.adapter is not None:
            y = y + self._branch(self.adapter, y, None)
        return y


# --------------------------------------------------------------------------------------------------
# What trains


def adapter_trainable_filter(
    model_or_config: nnx.Module | AdapterConfig,
) -> nnx.filterlib.Filter:
    """The NNX filter of what trains: ``AdapterParam`` plus the params of ``modules_to_save``.

    Args:
      model_or_config: an adapted model (uses its resolved ``modules_to_save``, task heads
        included) or an ``AdapterConfig`` (``modules_to_save=None`` then means none).

    Returns:
      A filter for ``nnx.Optimizer(model, tx, wrt=...)``, ``nnx.DiffState(0, ...)``, ``nnx.state``.
      Combine with LoRA's as ``nnx.Any(lora_filter, adapter_filter)``.
    """
    saves = config_of(model_or_config).modules_to_save or []

    def saved(path: tuple, value: Any) -> bool:
        return isinstance(value, nnx.Param) and _targets.in_modules_to_save(
            _targets.path_str(path), saves
        )

    return nnx.Any(AdapterParam, saved)


def trainable_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    keep = nnx.filterlib.to_predicate(adapter_trainable_filter(model))
    return {
        _targets.path_str(path): var
        for path, var in nnx.iter_graph(model)
        if isinstance(var, nnx.Variable) and keep(path, var)
    }


def adapter_summary(model: nnx.Module) -> str:
    """``"adapter params: 1,234 || trainable: 2,000 || all params: 5,678 || trainable%: 35.2"``."""
    trainable = trainable_variables(model)
    n_adapter = sum(v.size for v in trainable.values() if isinstance(v, AdapterParam))
    n_train = sum(v.size for v in trainable.values())
    n_all = sum(
        v.size
        for _, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Param | AdapterParam | LoRAParam)
    )
    pct = 100.0 * n_train / n_all if n_all else 0.0
    return (
        f"adapter params: {n_adapter:,d} || trainable params: {n_train:,d} || "
        f"all params: {n_all:,d} || trainable%: {pct:.4f}"
    )
