"""Bottleneck adapters and per-language (MAD-X style) adapters, wired into the forward pass.

A bottleneck adapter (Houlsby et al., 2019) is a small residual MLP on a sub-layer's output ``y``:
``adapter(y) = y + s * up(f(down(y)))`` with ``down: [D, m]``, ``up: [m, D]``, ``m << D``. With the
up-projection initialised to zero it is the identity, so the adapted model starts equal to the base.

Tree surgery
------------
``apply_adapters`` replaces the sub-module that produces the adapted output by an ``AdapterWrapper``
that *holds* it and calls it, so the adapter is on the computation path by construction (the
wrapper's ``__call__`` is the only way the model reaches the original layer). For a BERT layer with
``placement="houlsby"``::

    encoder.layer.3                              encoder.layer.3
    ├── attention.output                         ├── attention.output
    │   ├── dense: Linear                ──►     │   ├── dense: AdapterWrapper  adapter(dense(h))
    │   └── LayerNorm                            │   │   ├── base_layer: Linear        (frozen)
    ├── intermediate.dense                       │   │   └── adapter: BottleneckAdapter
    └── output                                   │   │       ├── down_kernel: AdapterParam [D, m]
        ├── dense: Linear                        │   │       ├── down_bias:   AdapterParam [m]
        └── LayerNorm                            │   │       ├── up_kernel:   AdapterParam [m, D]
                                                 │   │       └── up_bias:     AdapterParam [D]
                                                 │   └── LayerNorm
                                                 └── output.dense: AdapterWrapper (as above)

Placements (``AdapterConfig.placement``), per adapted layer:

========  =====================================================================================
pfeiffer  one adapter after the feed-forward block (Pfeiffer et al., 2020/2021; the MAD-X site):
          BERT ``output.dense``, Llama ``mlp.down_proj``
houlsby   two: after attention and after the feed-forward block (Houlsby et al., 2019): BERT
          ``attention.output.dense`` + ``output.dense``; Llama ``self_attn.o_proj`` +
          ``mlp.down_proj``
parallel  one adapter reading the feed-forward *input* and adding to its output (He et al., 2022):
          Llama ``mlp(x) + s * adapter(x)``; BERT ``LayerNorm(ffn(x) + x + s * adapter(x))``
========  =====================================================================================

Serial adapters sit on the projection output *before* the residual add (and, for BERT, before the
residual LayerNorm), as in Houlsby's design; BERT's hidden dropout follows the adapter instead of
preceding it. The ``adapters`` library's Pfeiffer config additionally re-uses the layer's LayerNorm
around the adapter; we keep the simpler Houlsby-style position for both (same parameter count).

Per-language adapters
---------------------
With ``languages=[...]`` every adapted site holds a *stack* of language adapters (``[L, D, m]`` ...,
row ``i`` = ``languages[i]``) plus, with ``shared_task_adapter``, a shared task adapter applied after
it (MAD-X: ``task(lang(y))``; parallel placement sums both branches). Each example picks its row by
a ``[B]`` int array: the wrapper gathers the rows (``jnp.take``) and applies them with a batched
``einsum``. One compiled program serves any mix of languages; row ``-1`` means "no language
adapter" (only the shared adapter, or the base model when there is none).

The rows reach the wrappers through a context, not through the model's call signature, so the models
need no ``language_id`` argument::

    @nnx.jit
    def forward(model, batch):
        with with_routing(model, batch["language_id"], table=rows):   # rows: language_rows(...)
            return model(batch["input_ids"], batch["attention_mask"]).logits

Open it *inside* the traced function, with the ids a traced argument (a concrete array would be
frozen into the compiled program; the wrapper refuses that case). Nothing is stored on the model, so
``nnx.split`` / checkpoints never see the routing. :func:`language_rows` maps language names to rows
and implements the evaluation fallback for languages without their own adapter (``fallback`` names
one, else ``default_fallback``: ``"shared"`` or a language).

Trainable set: ``AdapterParam`` plus the ``nnx.Param``s of ``modules_to_save`` (the task head by
default): :func:`adapter_trainable_filter`. LoRA composes: ``apply_lora`` then ``apply_adapters``
keeps LoRA's paths PEFT-exact (recommended); the reverse order gives the same function, but LoRA on a
layer the adapters already wrap must then name its ``base_layer`` path.

References:
  Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019, arXiv:1902.00751.
  Pfeiffer et al., "MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer",
  EMNLP 2020, arXiv:2005.00052; "AdapterFusion", EACL 2021, arXiv:2005.00247.
  He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022,
  arXiv:2110.04366.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.models.common import EMBED, with_axes
from langtune_jax.peft import targets as _targets
from langtune_jax.peft.lora import LoRAParam

Array = jax.Array
_log = logging.getLogger(__name__)

#: File names of an adapter-only checkpoint folder.
CONFIG_FILE = "adapters_config.json"
WEIGHTS_FILE = "adapters.safetensors"
_FORMAT = "langtune_jax.bottleneck_adapters"
#: Bottleneck reduction when neither ``adapter_size`` nor ``reduction_factor`` is set.
DEFAULT_REDUCTION_FACTOR = 16.0

_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "swish": jax.nn.silu,
}
_LAYERS_RE = re.compile(r"^(all|last:(\d+)|every:(\d+))$")

# Adapted sites per model family, relative to one layer: (path, mode). Modes:
#   serial             y = base(...); y + adapter(y)
#   parallel           base(x) + adapter(x)             (x = the first argument)
#   parallel_residual  base(h, residual + adapter(residual))   (BERT's BertOutput(h, residual))
_SITES = {
    "bert": {
        "attention": ("attention.output.dense", "serial"),
        "ffn": ("output.dense", "serial"),
        "ffn_parallel": ("output", "parallel_residual"),
    },
    "llama": {
        "attention": ("self_attn.o_proj", "serial"),
        "ffn": ("mlp.down_proj", "serial"),
        "ffn_parallel": ("mlp", "parallel"),
    },
}
_PLACEMENT_SITES = {
    "pfeiffer": ("ffn",),
    "houlsby": ("attention", "ffn"),
    "parallel": ("ffn_parallel",),
}
# A layer container: BERT ``<prefix>.encoder.layer.<i>``, Llama ``<prefix>.layers.<i>``.
_LAYER_PATH = {
    "bert": re.compile(r"^(?:.*\.)?encoder\.layer\.\d+$"),
    "llama": re.compile(r"^(?:.*\.)?layers\.\d+$"),
}


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class AdapterConfig:
    """Bottleneck adapters: where, how big, which layers, and per-language options.

    Attributes:
      placement: ``pfeiffer`` (after the feed-forward block), ``houlsby`` (after attention and
        after the feed-forward block) or ``parallel`` (beside the feed-forward block).
      adapter_size: bottleneck width ``m`` (e.g. 64). Give this or ``reduction_factor``.
      reduction_factor: ``m = hidden_size // reduction_factor``. If neither is given:
        ``DEFAULT_REDUCTION_FACTOR`` (16, the adapters library's Pfeiffer default).
      non_linearity: ``relu`` (Pfeiffer), ``gelu`` (exact) or ``swish`` (Houlsby's adapters lib.).
      dropout: dropout on the adapter branch during training.
      scaling: ``s`` in ``y + s * up(f(down(y)))`` (He et al. use 4 for parallel adapters).
      layers: which layers carry adapters: a list of indices (``[10, 11]``), ``"all"``,
        ``"last:N"`` (the top N layers) or ``"every:K"`` (layers ``K-1, 2K-1, ...``: every K-th
        layer counting from 1, so the top layer is included when K divides the depth).
      init: ``identity`` (down: uniform +-1/sqrt(D) as torch's ``nn.Linear``, up and biases zero:
        the adapted model equals the base model exactly at init) or ``bert`` (down and up
        ~ N(0, 0.02), biases zero: the adapters library's ``init_weights="bert"``, near identity).
      languages: per-language adapters, one stacked row per language in this order; ``None``: one
        adapter per site.
      shared_task_adapter: with ``languages``, also a shared task adapter applied after the
        language adapter (MAD-X). Without ``languages`` there is always exactly one adapter.
      fallback: ``{language: adapter_language}`` for languages without their own adapter
        (zero-shot), e.g. ``{"sw": "en"}``; read by :func:`language_rows`.
      default_fallback: for languages neither in ``languages`` nor in ``fallback``: ``"shared"``
        (no language adapter: the shared task adapter only) or a language of ``languages``.
      modules_to_save: modules trained fully and saved with the adapters (matched by path suffix,
        as in PEFT); ``None``: the model's task heads (``model.head_modules``, e.g. the new
        classifier); ``[]``: none.
    """

    placement: Literal["pfeiffer", "houlsby", "parallel"] = "pfeiffer"
    adapter_size: int | None = None
    reduction_factor: float | None = None
    non_linearity: Literal["relu", "gelu", "swish"] = "relu"
    dropout: float = 0.0
    scaling: float = 1.0
    layers: list[int] | str = "all"
    init: Literal["identity", "bert"] = "identity"
    languages: list[str] | None = None
    shared_task_adapter: bool = True
    fallback: dict[str, str] = dataclasses.field(default_factory=dict)
    default_fallback: str = "shared"
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"AdapterConfig.{field}={getattr(self, field)!r}: {why}")

        if self.placement not in _PLACEMENT_SITES:
            raise bad("placement", f"expected one of {sorted(_PLACEMENT_SITES)}")
        if self.non_linearity not in _ACTIVATIONS:
            raise bad("non_linearity", f"expected one of {sorted(_ACTIVATIONS)}")
        if self.init not in ("identity", "bert"):
            raise bad("init", "expected 'identity' or 'bert'")
        if self.adapter_size is not None and self.reduction_factor is not None:
            raise bad("adapter_size", "set adapter_size or reduction_factor, not both")
        if self.adapter_size is not None and (
            isinstance(self.adapter_size, bool) or self.adapter_size < 1
        ):
            raise bad("adapter_size", "must be a positive integer (e.g. 64)")
        if self.reduction_factor is not None and self.reduction_factor <= 0:
            raise bad("reduction_factor", "must be positive (e.g. 16)")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
        if isinstance(self.layers, str):
            m = _LAYERS_RE.match(self.layers)
            if not m or (m.group(2) or m.group(3) or "1") == "0":
                raise bad(
                    "layers", "expected a list of layer indices, 'all', 'last:N' or 'every:K'"
                )
        else:
            self.layers = list(self.layers)
            if not self.layers or any(
                isinstance(i, bool) or not isinstance(i, int) for i in self.layers
            ):
                raise bad("layers", "a list must hold at least one integer layer index")
            if len(set(self.layers)) != len(self.layers):
                raise bad("layers", "contains a layer twice")
        if self.languages is not None:
            self.languages = list(self.languages)
            if not self.languages or len(set(self.languages)) != len(self.languages):
                raise bad("languages", "must be a non-empty list of distinct language names")
            for lang, target in self.fallback.items():
                if lang in self.languages:
                    raise ValueError(
                        f"AdapterConfig.fallback[{lang!r}]: {lang!r} has its own adapter; remove it "
                        "from fallback"
                    )
                if target not in self.languages:
                    raise ValueError(
                        f"AdapterConfig.fallback[{lang!r}]={target!r} is not one of languages "
                        f"{self.languages}"
                    )
            if self.default_fallback != "shared" and self.default_fallback not in self.languages:
                raise bad("default_fallback", f"expected 'shared' or one of {self.languages}")
        else:
            if self.fallback:
                raise bad("fallback", "needs per-language adapters: set languages too")
            if self.default_fallback != "shared":
                raise bad("default_fallback", "needs per-language adapters: set languages too")

    def bottleneck_size(self, hidden_size: int) -> int:
        """The bottleneck width ``m`` for a model of width ``hidden_size``."""
        if self.adapter_size is not None:
            return self.adapter_size
        factor = self.reduction_factor or DEFAULT_REDUCTION_FACTOR
        return max(1, int(hidden_size // factor))

    def layer_indices(self, num_layers: int) -> list[int]:
        """The adapted layer indices of a ``num_layers``-layer model, ascending."""
        if not isinstance(self.layers, str):
            wrong = [i for i in self.layers if not -num_layers <= i < num_layers]
            if wrong:
                raise ValueError(
                    f"AdapterConfig.layers={self.layers}: {wrong} out of range for a model with "
                    f"{num_layers} layers (valid 0..{num_layers - 1})"
                )
            return sorted(i % num_layers for i in self.layers)
        kind, _, n = self.layers.partition(":")
        if kind == "all":
            return list(range(num_layers))
        if kind == "last":
            return list(range(max(0, num_layers - int(n)), num_layers))
        return list(range(int(n) - 1, num_layers, int(n)))

    @property
    def adapters_per_site(self) -> int:
        """Adapters at each site: language rows plus the shared one (1 without languages)."""
        if self.languages is None:
            return 1
        return len(self.languages) + int(self.shared_task_adapter)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        return cls(**json.loads(text))


class AdapterParam(nnx.Variable):
    """A bottleneck adapter weight: the variable type that trains."""


# --------------------------------------------------------------------------------------------------
# Per-example routing


_ROUTING: contextvars.ContextVar[Array | None] = contextvars.ContextVar(
    "langtune_adapter_routing", default=None
)


@contextlib.contextmanager
def with_routing(
    model: nnx.Module, language_id: Array, table: Array | np.ndarray | None = None
) -> Iterator[nnx.Module]:
    """Route each example to its language adapter while the context is open.

    Args:
      model: a model with per-language adapters (``AdapterConfig.languages``).
      language_id: ``[B]`` integer array. Without ``table`` these are adapter rows (indices into
        ``AdapterConfig.languages``, ``-1`` = no language adapter); with ``table`` they index it.
      table: optional ``[num_data_languages]`` int array mapping a data pipeline's language id to
        an adapter row, e.g. ``language_rows(model, data_languages)`` (fallbacks included); ids
        outside the table run without a language adapter.

    Yields:
      ``model`` (call it inside the block, inside the jitted function).

    Raises:
      ValueError: the model has no per-language adapters, or ``language_id`` is not ``[B]`` ints.
    """
    if not has_language_adapters(model):
        raise ValueError(
            "with_routing: this model has no per-language adapters; apply_adapters with "
            "AdapterConfig(languages=[...]) first (or call the model without routing)"
        )
    rows = jnp.asarray(language_id)
    if rows.ndim != 1 or not jnp.issubdtype(rows.dtype, jnp.integer):
        raise ValueError(
            f"with_routing: language_id must be a [batch] integer array, got shape {rows.shape} "
            f"dtype {rows.dtype}"
        )
    if table is not None:
        rows = jnp.take(jnp.asarray(table, jnp.int32), rows, axis=0)  # [B]
    token = _ROUTING.set(rows.astype(jnp.int32))
    try:
        yield model
    finally:
        _ROUTING.reset(token)


def language_rows(
    model_or_config: nnx.Module | AdapterConfig, languages: Sequence[str]
) -> np.ndarray:
    """Adapter row per language name, with the configured fallbacks.

    A language in ``config.languages`` gets its own row; otherwise ``config.fallback[lang]``'s row;
    otherwise ``config.default_fallback``'s row, or ``-1`` for ``"shared"`` (no language adapter).

    Args:
      model_or_config: an adapted model or its ``AdapterConfig``.
      languages: language names, e.g. the data pipeline's languages in id order.

    Returns:
      ``[len(languages)]`` int32 rows, usable as ``with_routing(..., table=rows)``.
    """
    config = _config_of(model_or_config)
    if config.languages is None:
        raise ValueError(
            "language_rows: AdapterConfig.languages is None (no per-language adapters)"
        )
    index = {lang: i for i, lang in enumerate(config.languages)}
    default = -1 if config.default_fallback == "shared" else index[config.default_fallback]
    rows = []
    for lang in languages:
        if lang in index:
            rows.append(index[lang])
            continue
        target = config.fallback.get(lang, config.default_fallback)
        rows.append(index[target] if target in index else default)
        how = f"{target!r}'s adapter" if target in index else "the shared task adapter only"
        _log.info("language %r has no adapter of its own: it uses %s (fallback)", lang, how)
    return np.asarray(rows, np.int32)


# --------------------------------------------------------------------------------------------------
# Modules


class BottleneckAdapter(nnx.Module):
    """``up(f(down(h)))`` — the adapter branch (the wrapper adds the residual and the scale).

    With ``num`` set it is a stack of ``num`` adapters (``down_kernel [num, D, m]`` ...) and the
    call takes ``rows [B]`` choosing one per example (``-1``: a zero branch for that example).
    """

    def __init__(
        self,
        hidden_size: int,
        bottleneck: int,
        *,
        non_linearity: str,
        init: str,
        num: int | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        d, m = hidden_size, bottleneck
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
            return AdapterParam(value)

        self.down_kernel = param(down, (d, m), EMBED, None)
        self.down_bias = param(zeros, (m,), None)
        self.up_kernel = param(up, (m, d), None, EMBED)
        self.up_bias = param(zeros, (d,), EMBED)
        self.non_linearity = non_linearity
        self.num = num

    def __call__(self, h: Array, rows: Array | None = None) -> Array:
        dtype = h.dtype
        act = _ACTIVATIONS[self.non_linearity]
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
        if self.language_adapters is None:
            return None
        rows = _ROUTING.get()
        if rows is None:
            raise ValueError(
                "this model has per-language adapters: call it inside `with with_routing(model, "
                "language_id):` (language_id [B] = adapter rows, see language_rows)"
            )
        if isinstance(h, jax.core.Tracer) and not isinstance(rows, jax.core.Tracer):
            raise ValueError(
                "with_routing was opened outside the traced (jitted) function, so its language_id "
                "would be baked into the compiled program as a constant. Open `with "
                "with_routing(model, language_id):` inside the jitted function and pass "
                "language_id as an argument."
            )
        if rows.shape[0] != h.shape[0]:
            raise ValueError(
                f"with_routing: language_id has {rows.shape[0]} entries but the batch has "
                f"{h.shape[0]} examples"
            )
        return rows

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
# Model-level API


def _find_layers(model: nnx.Module) -> tuple[str, list[str]]:
    """``(family, layer paths in order)`` of a BERT-family encoder or a Llama-family decoder."""
    modules = _targets.named_modules(model)
    for family, pattern in _LAYER_PATH.items():
        layers = [p for p in modules if pattern.match(p)]
        sites = [rel for rel, _ in _SITES[family].values()]
        layers = [p for p in layers if all(f"{p}.{rel}" in modules for rel in sites)]
        if layers:
            prefixes = {p.rpartition(".")[0] for p in layers}
            if len(prefixes) > 1:
                raise ValueError(
                    f"apply_adapters: {type(model).__name__} has several layer stacks "
                    f"{sorted(prefixes)}; apply adapters to the sub-model that holds one"
                )
            return family, sorted(layers, key=lambda p: int(p.rpartition(".")[2]))
    raise ValueError(
        f"apply_adapters: {type(model).__name__} is neither a BERT-family encoder (layers at "
        "'<prefix>.encoder.layer.<i>' with 'attention.output.dense' and 'output.dense') nor a "
        "Llama-family decoder (layers at '<prefix>.layers.<i>' with 'self_attn.o_proj' and "
        "'mlp.down_proj'); build it with langtune_jax.models"
    )


def adapter_layers(model: nnx.Module) -> dict[str, AdapterWrapper]:
    """Every ``AdapterWrapper`` of ``model`` by dotted path."""
    return {p: m for p, m in _targets.named_modules(model).items() if isinstance(m, AdapterWrapper)}


def get_adapter_config(model: nnx.Module) -> AdapterConfig:
    """The resolved ``AdapterConfig`` the model's adapters were built with."""
    text = getattr(model, "_adapter_config_json", None)
    if not text:
        raise ValueError(
            f"{type(model).__name__} has no bottleneck adapters; call apply_adapters(model, config)"
        )
    return AdapterConfig.from_json(text)


def has_language_adapters(model: nnx.Module) -> bool:
    """Whether ``model`` carries per-language adapters (and so needs :func:`with_routing`)."""
    text = getattr(model, "_adapter_config_json", None)
    return bool(text) and AdapterConfig.from_json(text).languages is not None


def _config_of(model_or_config: nnx.Module | AdapterConfig) -> AdapterConfig:
    if isinstance(model_or_config, AdapterConfig):
        return model_or_config
    return get_adapter_config(model_or_config)


def _hidden_size(model: nnx.Module) -> int:
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(hidden, int):
        raise ValueError(
            f"apply_adapters: {type(model).__name__} has no config.hidden_size; build the model "
            "with langtune_jax.models"
        )
    return hidden


def _param_dtype(module: nnx.Module) -> Any:
    leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    return leaves[0].dtype if leaves else jnp.float32


def _is_deterministic(model: nnx.Module) -> bool:
    # New dropout layers follow the model's current train()/eval() mode.
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Dropout) and module.deterministic is not None:
            return bool(module.deterministic)
    return False


def _resolve_modules_to_save(model: nnx.Module, config: AdapterConfig) -> list[str]:
    modules = _targets.named_modules(model)
    if config.modules_to_save is None:
        return [h for h in getattr(model, "head_modules", ()) or () if h in modules]
    for name in config.modules_to_save:
        if not any(_targets._in_modules_to_save(p, [name]) for p in modules):
            raise ValueError(
                f"AdapterConfig.modules_to_save names {name!r} but no module path ends with it; "
                f"top-level modules are {sorted({p.split('.')[0] for p in modules})}"
            )
    return list(config.modules_to_save)


def apply_adapters(
    model: nnx.Module, config: AdapterConfig, *, rngs: nnx.Rngs | None = None
) -> nnx.Module:
    """Insert bottleneck adapters into a BERT/XLM-R encoder or a Llama-family decoder (in place).

    Args:
      model: one of our BERT-family or Llama-family models (bare or with a task head), possibly
        already carrying LoRA.
      config: where and how big (see :class:`AdapterConfig`).
      rngs: random streams for the down-projections (``params``) and dropout (``dropout``);
        default ``nnx.Rngs(0)``.

    Returns:
      ``model`` itself, with each adapted sub-module replaced by an :class:`AdapterWrapper`. The
      resolved config (``modules_to_save`` filled in) is kept on the model for
      :func:`adapter_trainable_filter`, :func:`save_adapters` and :func:`language_rows`.

    Raises:
      ValueError: the model already has adapters, is not a supported architecture, or ``layers`` /
        ``modules_to_save`` name something it does not have.
    """
    if getattr(model, "_adapter_config_json", None):
        raise ValueError(
            "apply_adapters: this model already has bottleneck adapters; load or build a fresh model"
        )
    family, layer_paths = _find_layers(model)
    hidden = _hidden_size(model)
    config = dataclasses.replace(config, modules_to_save=_resolve_modules_to_save(model, config))
    m = config.bottleneck_size(hidden)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    deterministic = _is_deterministic(model)
    for i in config.layer_indices(len(layer_paths)):
        for site in _PLACEMENT_SITES[config.placement]:
            rel, mode = _SITES[family][site]
            path = f"{layer_paths[i]}.{rel}"
            base = _targets.module_at(model, path)
            kw = dict(
                non_linearity=config.non_linearity,
                init=config.init,
                param_dtype=_param_dtype(base),
                rngs=rngs,
            )
            shared = None
            if config.languages is None or config.shared_task_adapter:
                shared = BottleneckAdapter(hidden, m, **kw)
            per_lang = None
            if config.languages is not None:
                per_lang = BottleneckAdapter(hidden, m, num=len(config.languages), **kw)
            wrapper = AdapterWrapper(
                base,
                mode=mode,
                adapter=shared,
                language_adapters=per_lang,
                dropout=config.dropout,
                scaling=config.scaling,
                deterministic=deterministic,
                rngs=rngs,
            )
            _targets.set_module_at(model, path, wrapper)
    model._adapter_config_json = config.to_json()
    return model


def remove_adapters(model: nnx.Module) -> nnx.Module:
    """Take the adapters out again (in place): every wrapper is replaced by its ``base_layer``.

    Bottleneck adapters are non-linear, so unlike LoRA they cannot be merged into the base weights;
    this restores the base model (e.g. to load other adapters or to export the base weights).
    """
    for path, wrapper in adapter_layers(model).items():
        _targets.set_module_at(model, path, wrapper.base_layer)
    del model._adapter_config_json
    return model


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
    saves = _config_of(model_or_config).modules_to_save or []
    save_re = [re.compile(rf"(^|.*\.){re.escape(s)}($|\..*)") for s in saves]

    def saved(path: tuple, value: Any) -> bool:
        return isinstance(value, nnx.Param) and any(
            r.match(_targets.path_str(path)) for r in save_re
        )

    return nnx.Any(AdapterParam, saved)


def count_adapter_params(config: AdapterConfig, hidden_size: int, num_layers: int) -> int:
    """Closed-form number of adapter weights (``modules_to_save`` not included).

    Each adapter has ``2 D m + m + D`` weights (down kernel and bias, up kernel and bias); there
    are ``len(layers) * sites(placement) * adapters_per_site`` adapters, with sites 1 (pfeiffer,
    parallel) or 2 (houlsby) and ``adapters_per_site = len(languages) + shared`` (1 without
    languages).
    """
    d, m = hidden_size, config.bottleneck_size(hidden_size)
    per_adapter = 2 * d * m + m + d
    sites = len(config.layer_indices(num_layers)) * len(_PLACEMENT_SITES[config.placement])
    return sites * config.adapters_per_site * per_adapter


def _trainable_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    keep = nnx.filterlib.to_predicate(adapter_trainable_filter(model))
    return {
        _targets.path_str(path): var
        for path, var in nnx.iter_graph(model)
        if isinstance(var, nnx.Variable) and keep(path, var)
    }


def adapter_summary(model: nnx.Module) -> str:
    """``"adapter params: 1,234 || trainable: 2,000 || all params: 5,678 || trainable%: 35.2"``."""
    trainable = _trainable_variables(model)
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


# --------------------------------------------------------------------------------------------------
# Adapter-only checkpoints


def save_adapters(model: nnx.Module, folder: str | Path) -> Path:
    """Write the adapter weights (+ ``modules_to_save``) and their config to ``folder``.

    Files: ``adapters.safetensors`` (keys are the dotted variable paths, e.g.
    ``bert.encoder.layer.1.output.dense.adapter.up_kernel``) and ``adapters_config.json`` (the
    resolved ``AdapterConfig`` plus the model's width and depth). Call it on every process: sharded
    arrays are gathered first (a collective), then only process 0 writes.

    Returns:
      The folder.
    """
    from safetensors.numpy import save_file

    config = get_adapter_config(model)
    _, layer_paths = _find_layers(model)
    hidden = _hidden_size(model)
    tensors = {}
    for key, var in _trainable_variables(model).items():
        value = var[...]
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            from jax.experimental import multihost_utils

            value = multihost_utils.process_allgather(value, tiled=True)
        tensors[key] = np.ascontiguousarray(np.asarray(jax.device_get(value)))
    folder = Path(folder)
    if jax.process_index() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _FORMAT,
            "version": 1,
            "config": dataclasses.asdict(config),
            "hidden_size": hidden,
            "num_layers": len(layer_paths),
            "model_class": type(model).__name__,
            "num_adapter_params": count_adapter_params(config, hidden, len(layer_paths)),
        }
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": _FORMAT})
    return folder


def load_adapters(model: nnx.Module, folder: str | Path, *, rngs: nnx.Rngs | None = None):
    """Load an adapter-only checkpoint written by :func:`save_adapters` into ``model``.

    A model without adapters gets them first (``apply_adapters`` with the saved config); a model
    that has adapters must have been built with the same config.

    Returns:
      ``model`` with the saved adapter (and ``modules_to_save``) weights.

    Raises:
      ValueError: missing files, a config or shape that does not fit the model, missing or
        unexpected keys.
    """
    from safetensors.numpy import load_file

    folder = Path(folder)
    cfg_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise ValueError(f"load_adapters: {f} does not exist (write it with save_adapters)")
    meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    if meta.get("format") != _FORMAT:
        raise ValueError(f"load_adapters: {cfg_file} is not a {_FORMAT} config")
    saved = AdapterConfig(**meta["config"])
    if getattr(model, "_adapter_config_json", None):
        if get_adapter_config(model) != saved:
            raise ValueError(
                f"load_adapters: the model's adapters were built with {get_adapter_config(model)} "
                f"but {cfg_file} holds {saved}; load into a model without adapters instead"
            )
    else:
        apply_adapters(model, saved, rngs=rngs)
    tensors = load_file(str(weights_file))
    variables = _trainable_variables(model)
    missing = sorted(set(variables) - set(tensors))
    unexpected = sorted(set(tensors) - set(variables))
    if missing or unexpected:
        raise ValueError(
            f"load_adapters: {weights_file} does not match the model: missing keys "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected keys "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for key, var in variables.items():
        old = var[...]
        if tensors[key].shape != old.shape:
            raise ValueError(
                f"load_adapters: {key} has shape {tensors[key].shape} in {weights_file} but "
                f"{old.shape} in the model"
            )
        new = jnp.asarray(tensors[key], old.dtype)
        sharding = getattr(old, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            new = jax.device_put(new, sharding)
        var[...] = new
    return model
