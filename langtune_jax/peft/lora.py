"""LoRA for any Flax NNX model, with Hugging Face PEFT's options and meanings.

LoRA (Hu et al., 2021) freezes a linear layer ``y = x W + b`` and learns a low-rank update:
``y = x W + b + dropout(x) A B * scale`` with ``A: [in, r]``, ``B: [r, out]`` and
``scale = lora_alpha / r`` (or ``lora_alpha / sqrt(r)`` with rsLoRA, Kalajdzievski 2023). ``B``
starts at zero, so the wrapped model equals the base model exactly until the first update.

Tree surgery
------------
``apply_lora`` finds the targets (``langtune_jax.peft.targets``, PEFT's matching rules) and replaces
each ``nnx.Linear`` in place by a ``LoRALinear`` that *holds* the original layer. Before and after,
for ``target_modules=["query", "value"]`` on BERT::

    attention.self                               attention.self
    ├── query: Linear                            ├── query: LoRALinear
    │   ├── kernel: Param [D, D]                 │   ├── base_layer: Linear      (frozen)
    │   └── bias:   Param [D]          ──►       │   │   ├── kernel: Param [D, D]
    ├── key:   Linear                            │   │   └── bias:   Param [D]
    └── value: Linear                            │   ├── lora_A: Dict{"default": LoRAParam [D, r]}
                                                 │   ├── lora_B: Dict{"default": LoRAParam [r, D]}
                                                 │   └── lora_dropout: Dict{"default": Dropout}
                                                 ├── key:   Linear                (untouched)
                                                 └── value: LoRALinear            (as query)

The names are PEFT's (``base_layer``, ``lora_A``, ``lora_B``), so a variable's path *is* its PEFT
state-dict key once the adapter name is dropped (``...query.lora_A.default`` <->
``base_model.model....query.lora_A.weight``, transposed) and ``peft_format`` needs no table.

- **Trainable set.** ``LoRAParam`` is its own ``nnx.Variable`` type; ``trainable_filter`` is that
  type plus the ``nnx.Param``s of ``modules_to_save`` (and biases per ``bias``). Use it as
  ``nnx.Optimizer(model, tx, wrt=filter)`` and ``nnx.DiffState(0, filter)``: frozen weights get no
  gradient and no optimizer state.
- **Layout.** ``A`` inherits the base kernel's input logical axis, ``B`` its output axis (and, when
  the kernel is already placed on a mesh, the matching ``NamedSharding``), so a tensor-parallel layer
  stays tensor-parallel.
- **Named adapters.** Each wrapper keeps one ``A``/``B`` per adapter name. ``apply_lora(...,
  adapter_name=...)`` on an adapted model adds an adapter (inactive unless it is the first, as in
  PEFT's ``add_adapter``); ``set_adapter`` picks the active one(s); ``delete_adapter`` removes one
  (unwrapping layers left without adapters).
- **Per-example adapters.** Inside ``with adapter_routing(model, adapter_ids):`` (``adapter_ids``
  ``[B]`` int, indices into the model's adapter names, ``-1`` = base model only) every wrapper
  stacks its adapters' ``A``/``B`` (``[N, in, r]``, ``[N, r, out]``, ranks zero-padded to the
  largest), gathers one pair per example and applies it with a batched ``einsum``: one program for
  any mix of languages, no Python branch per language, no recompilation when the mix changes. Enter
  the context *inside* the jitted function, where ``adapter_ids`` is a traced argument (a concrete
  array closed over by a traced function would be frozen into the compiled program; the wrapper
  refuses that case).
- **Merge.** ``merge_lora`` adds ``scale * A @ B`` to the base kernel with ``jnp`` ops under ``jit``
  with the kernel's own ``out_shardings``: sharded kernels stay sharded and no host gathers a matrix.
  ``unmerge_lora`` subtracts it again. ``merge_and_unload`` removes the wrappers for export.

References:
  Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021, arXiv:2106.09685.
  Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023,
  arXiv:2312.03732. Meng et al., "PiSSA", 2024, arXiv:2404.02948. Hugging Face PEFT ``LoraConfig``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.peft import targets as _targets

Array = jax.Array

TaskType = Literal[
    "SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM", "SEQ_2_SEQ_LM", "QUESTION_ANS", "FEATURE_EXTRACTION"
]
_TASK_TYPES = (
    "SEQ_CLS",
    "TOKEN_CLS",
    "CAUSAL_LM",
    "SEQ_2_SEQ_LM",
    "QUESTION_ANS",
    "FEATURE_EXTRACTION",
)
#: PEFT's ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`` for the families we implement.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
}
#: Task heads PEFT adds to ``modules_to_save`` for ``SEQ_CLS`` / ``TOKEN_CLS`` when the model does
#: not name its heads (``head_modules``).
_PEFT_CLS_HEADS = ["classifier", "score"]
_INIT_KINDS = (True, False, "gaussian", "pissa")


@dataclasses.dataclass
class LoraConfig:
    """Hugging Face PEFT's ``LoraConfig`` (the options we implement), same names and defaults.

    Attributes:
      r: rank of the update.
      lora_alpha: numerator of the scale: ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``).
      lora_dropout: dropout on the LoRA branch's input (training only).
      target_modules: list of module names matched by path suffix, a string that must fully match
        the dotted path (regex), or ``"all-linear"`` (every linear layer but the output head).
        ``None``: PEFT's default for the architecture (BERT/XLM-R ``query``, ``value``; Llama
        family ``q_proj``, ``v_proj``).
      exclude_modules: names (suffix) or a full-match regex of modules never wrapped.
      layers_to_transform: only wrap these layer indices (with a list ``target_modules``).
      layers_pattern: name(s) of the layer list that ``layers_to_transform`` indexes
        (``"layer"`` for BERT, ``"layers"`` for Llama); ``None`` reads the first index in the path.
      rank_pattern: ``{regex: r}`` overriding ``r`` for modules whose path ends with a match.
      alpha_pattern: ``{regex: alpha}`` overriding ``lora_alpha`` likewise.
      bias: ``"none"``, ``"all"`` (every bias trains) or ``"lora_only"`` (biases of wrapped layers).
      modules_to_save: modules trained fully and saved with the adapter (e.g. a new classifier).
      use_rslora: rank-stabilised scale ``lora_alpha / sqrt(r)``.
      init_lora_weights: ``True`` (A kaiming-uniform, B zero: identity at init), ``"gaussian"``
        (A ~ N(0, 1/r), B zero), ``False`` (both random: *not* the identity; for tests), or
        ``"pissa"`` (A, B from the top-r SVD of the kernel, which keeps the residual).
      task_type: ``SEQ_CLS`` / ``TOKEN_CLS`` add the task head to ``modules_to_save`` (as PEFT);
        ``CAUSAL_LM`` etc. are recorded for the exported ``adapter_config.json``.
    """

    r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, int] = dataclasses.field(default_factory=dict)
    alpha_pattern: dict[str, int] = dataclasses.field(default_factory=dict)
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    init_lora_weights: bool | Literal["gaussian", "pissa"] = True
    task_type: TaskType | None = None

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r={self.r!r}: must be a positive integer (e.g. 8)")
        if self.lora_alpha <= 0:
            raise ValueError(f"LoraConfig.lora_alpha={self.lora_alpha!r}: must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout={self.lora_dropout!r}: must be in [0, 1)")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(
                f"LoraConfig.bias={self.bias!r}: expected 'none', 'all' or 'lora_only'"
            )
        if self.init_lora_weights not in _INIT_KINDS or (
            isinstance(self.init_lora_weights, int) and not isinstance(self.init_lora_weights, bool)
        ):
            raise ValueError(
                f"LoraConfig.init_lora_weights={self.init_lora_weights!r}: expected true, false, "
                "'gaussian' or 'pissa'"
            )
        if self.task_type is not None and self.task_type not in _TASK_TYPES:
            raise ValueError(
                f"LoraConfig.task_type={self.task_type!r}: expected one of {_TASK_TYPES}"
            )
        for name in ("rank_pattern", "alpha_pattern"):
            for key, value in getattr(self, name).items():
                if value <= 0:
                    raise ValueError(f"LoraConfig.{name}[{key!r}]={value!r}: must be positive")
        if isinstance(self.target_modules, list | tuple):
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ValueError("LoraConfig.target_modules=[]: name at least one module")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError(
                "LoraConfig.layers_pattern is set but layers_to_transform is not: give the layer "
                "indices to wrap as well (PEFT's rule)"
            )
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError(
                "LoraConfig.layers_to_transform cannot be used when target_modules is a regex "
                "string (PEFT's rule): put the layer numbers into the regex instead"
            )

    def rank_and_alpha(self, path: str) -> tuple[int, int]:
        """``(r, lora_alpha)`` for the module at ``path`` after ``rank_pattern``/``alpha_pattern``.

        PEFT's rule (``get_pattern_key``): the first pattern key ``k`` for which
        ``re.match(rf"(.*\\.)?({k})$", path)`` succeeds.
        """
        return (
            _pattern_value(self.rank_pattern, path, self.r),
            _pattern_value(self.alpha_pattern, path, self.lora_alpha),
        )

    def scaling(self, path: str) -> float:
        """The LoRA scale of the module at ``path``: ``alpha / r`` or ``alpha / sqrt(r)`` (rsLoRA)."""
        r, alpha = self.rank_and_alpha(path)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoraConfig:
        return cls(**json.loads(text))


def _pattern_value(patterns: dict[str, int], path: str, default: int) -> int:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


class LoRAParam(nnx.Variable):
    """A LoRA factor (``A`` or ``B``): the variable type that trains."""


# --------------------------------------------------------------------------------------------------
# Per-example routing context


@dataclasses.dataclass(frozen=True)
class _Routing:
    adapter_ids: Array  # [B] int, -1 = no adapter
    names: tuple[str, ...]


_ROUTING: contextvars.ContextVar[_Routing | None] = contextvars.ContextVar(
    "langtune_lora_routing", default=None
)


@contextlib.contextmanager
def adapter_routing(
    model: nnx.Module, adapter_ids: Array, adapter_names: Sequence[str] | None = None
) -> Iterator[None]:
    """Route each example of the batch to its own adapter while the context is open.

    Args:
      model: a model with LoRA adapters (used to check the names).
      adapter_ids: ``[B]`` integers indexing ``adapter_names``; ``-1`` means "no adapter" (the base
        model) for that example.
      adapter_names: the adapters the indices refer to; default: every adapter of ``model`` in the
        order they were added (``adapter_names(model)``).

    Open it inside the jitted function, with ``adapter_ids`` a traced argument::

        @nnx.jit
        def forward(model, input_ids, adapter_ids):
            with adapter_routing(model, adapter_ids, ["sw", "yo", "ha"]):
                return model(input_ids).logits
    """
    known = adapter_names_of(model)
    names = tuple(known if adapter_names is None else adapter_names)
    missing = [n for n in names if n not in known]
    if missing or not names:
        raise ValueError(
            f"adapter_routing: adapters {missing or '[]'} are not on this model; it has {known}"
        )
    ids = jnp.asarray(adapter_ids)
    if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(
            f"adapter_routing: adapter_ids must be a [batch] integer array, got shape {ids.shape} "
            f"dtype {ids.dtype}"
        )
    token = _ROUTING.set(_Routing(ids, names))
    try:
        yield
    finally:
        _ROUTING.reset(token)


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
        routing = _ROUTING.get()
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

    def _routed(self, x: Array, routing: _Routing) -> Array:
        ids = routing.adapter_ids
        if isinstance(x, jax.core.Tracer) and not isinstance(ids, jax.core.Tracer):
            raise ValueError(
                "adapter_routing was opened outside the traced (jitted) function, so its "
                "adapter_ids would be baked into the compiled program as a constant. Open "
                "`with adapter_routing(model, adapter_ids):` inside the jitted function and pass "
                "adapter_ids as an argument."
            )
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
# Model-level API


def lora_layers(model: nnx.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` of ``model`` by dotted path."""
    return {p: m for p, m in _targets.named_modules(model).items() if isinstance(m, LoRALinear)}


def adapter_names_of(model: nnx.Module) -> tuple[str, ...]:
    """Names of the LoRA adapters on ``model``, in the order they were added."""
    return tuple(name for name, _ in getattr(model, "_lora_configs", ()))


def get_lora_config(model: nnx.Module, adapter_name: str = "default") -> LoraConfig:
    """The resolved ``LoraConfig`` adapter ``adapter_name`` was created with (targets filled in)."""
    for name, text in getattr(model, "_lora_configs", ()):
        if name == adapter_name:
            return LoraConfig.from_json(text)
    raise ValueError(
        f"no LoRA adapter named {adapter_name!r}; this model has {list(adapter_names_of(model))}"
    )


def model_type_of(model: nnx.Module) -> str | None:
    """The Hugging Face ``model_type`` of one of our models (``None`` for other NNX models)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None and hasattr(config, "to_hf"):
        model_type = config.to_hf().get("model_type")
    return model_type


def default_target_modules(model: nnx.Module) -> list[str]:
    """PEFT's default ``target_modules`` for the model's architecture."""
    model_type = model_type_of(model)
    if model_type in DEFAULT_TARGET_MODULES:
        return list(DEFAULT_TARGET_MODULES[model_type])
    leaves = {p.rpartition(".")[2] for p in _targets.named_modules(model)}
    for names in (["query", "value"], ["q_proj", "v_proj"]):
        if set(names) <= leaves:
            return names
    raise ValueError(
        f"LoraConfig.target_modules is None and {type(model).__name__} (model_type={model_type!r}) "
        "has no default; set target_modules, e.g. 'all-linear' or a list of layer names"
    )


def resolve_config(model: nnx.Module, config: LoraConfig) -> LoraConfig:
    """``config`` with ``target_modules`` and task-head ``modules_to_save`` filled in for ``model``."""
    target_modules = config.target_modules
    if target_modules is None:
        target_modules = default_target_modules(model)
    modules_to_save = list(config.modules_to_save or [])
    if config.task_type in ("SEQ_CLS", "TOKEN_CLS"):
        heads = list(getattr(model, "head_modules", ()) or _PEFT_CLS_HEADS)
        present = _targets.named_modules(model)
        # PEFT writes both of its guesses ("classifier", "score") into adapter_config.json and
        # ignores the one the model lacks; so do we.
        modules_to_save = [
            m
            for m in modules_to_save
            if m not in _PEFT_CLS_HEADS or any(_targets.in_modules_to_save(p, [m]) for p in present)
        ]
        for head in heads:
            if head not in modules_to_save and any(
                _targets.in_modules_to_save(p, [head]) for p in present
            ):
                modules_to_save.append(head)
    return dataclasses.replace(
        config, target_modules=target_modules, modules_to_save=modules_to_save or None
    )


def apply_lora(
    model: nnx.Module,
    config: LoraConfig,
    *,
    rngs: nnx.Rngs | None = None,
    adapter_name: str = "default",
) -> nnx.Module:
    """Wrap the target layers of ``model`` with LoRA adapter ``adapter_name`` (in place).

    Args:
      model: any Flax NNX model; ours, or user-written (layers must be ``nnx.Linear``).
      config: the LoRA options; ``target_modules=None`` uses the architecture's PEFT default.
      rngs: random streams for ``A`` (``params``) and dropout (``dropout``); default ``Rngs(0)``.
      adapter_name: name of the new adapter. On an already adapted model this adds a second
        adapter (active only if no other is).

    Returns:
      ``model`` itself, with the targets replaced by ``LoRALinear`` wrappers.

    Raises:
      ValueError: targets that match nothing (listing the layers that exist), a duplicate adapter
        name, or ``modules_to_save`` naming no module.
    """
    if adapter_name in adapter_names_of(model):
        raise ValueError(
            f"adapter {adapter_name!r} already exists on this model; pick another adapter_name or "
            "delete_adapter it first"
        )
    if not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name={adapter_name!r}: use a non-empty name without dots")
    config = resolve_config(model, config)
    modules = _targets.named_modules(model)
    for name in config.modules_to_save or []:
        if not any(_targets.in_modules_to_save(p, [name]) for p in modules):
            raise ValueError(
                f"LoraConfig.modules_to_save names {name!r} but no module path ends with it; "
                f"top-level modules are {sorted({p.split('.')[0] for p in modules})}"
            )
    paths = _targets.find_targets(
        model,
        config.target_modules,
        exclude_modules=config.exclude_modules,
        layers_to_transform=config.layers_to_transform,
        layers_pattern=config.layers_pattern,
        modules_to_save=config.modules_to_save,
        module_types=(nnx.Linear, LoRALinear),
        what="LoraConfig.target_modules",
    )
    rngs = nnx.Rngs(0) if rngs is None else rngs
    deterministic = _is_deterministic(model)
    for path in paths:
        layer = modules[path]
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer)
            _targets.set_module_at(model, path, layer)
        r, _ = config.rank_and_alpha(path)
        layer.add_adapter(
            adapter_name,
            r=r,
            scaling=config.scaling(path),
            dropout=config.lora_dropout,
            init=config.init_lora_weights,
            rngs=rngs,
            deterministic=deterministic,
        )
    model._lora_configs = getattr(model, "_lora_configs", ()) + ((adapter_name, config.to_json()),)
    return model


def _is_deterministic(model: nnx.Module) -> bool:
    # New dropout layers follow the model's current train()/eval() mode.
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Dropout) and module.deterministic is not None:
            return bool(module.deterministic)
    return False


def set_adapter(model: nnx.Module, adapter_name: str | Sequence[str]) -> None:
    """Make ``adapter_name`` (or several names, summed; ``[]`` = none) the active adapter(s)."""
    names = (adapter_name,) if isinstance(adapter_name, str) else tuple(adapter_name)
    known = adapter_names_of(model)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"set_adapter: no adapter named {unknown}; this model has {list(known)}")
    for layer in lora_layers(model).values():
        layer.active_adapters = tuple(n for n in names if n in layer.lora_A)


def active_adapters(model: nnx.Module) -> tuple[str, ...]:
    """Names of the active adapters (union over layers, in adapter order)."""
    active = {n for layer in lora_layers(model).values() for n in layer.active_adapters}
    return tuple(n for n in adapter_names_of(model) if n in active)


def delete_adapter(model: nnx.Module, adapter_name: str) -> None:
    """Remove adapter ``adapter_name``; layers left without adapters get their plain Linear back.

    If it was the active adapter, the first remaining adapter becomes active (as in PEFT).
    """
    known = adapter_names_of(model)
    if adapter_name not in known:
        raise ValueError(
            f"delete_adapter: no adapter {adapter_name!r}; this model has {list(known)}"
        )
    was_active = adapter_name in active_adapters(model)
    for path, layer in lora_layers(model).items():
        if adapter_name in layer.lora_A:
            layer.delete_adapter(adapter_name)
        if not layer.lora_A:
            _targets.set_module_at(model, path, layer.base_layer)
    model._lora_configs = tuple((n, c) for n, c in model._lora_configs if n != adapter_name)
    remaining = adapter_names_of(model)
    if was_active and remaining and not active_adapters(model):
        set_adapter(model, remaining[0])


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


def merge_lora(model: nnx.Module, adapter_names: Sequence[str] | None = None) -> nnx.Module:
    """Fold ``scale * A @ B`` into each base kernel (default: the active adapters). In place.

    After merging, the forward pass skips the merged adapters (same outputs, base-layer cost).
    """
    for layer in lora_layers(model).values():
        names = layer.active_adapters if adapter_names is None else adapter_names
        for name in names:
            if name not in layer.lora_A or name in layer.merged_adapters:
                continue
            kernel = layer.base_layer.kernel
            kernel.value = _kernel_update(
                kernel.value,
                layer.lora_A[name].value,
                layer.lora_B[name].value,
                layer.scaling[name],
            )
            layer.merged_adapters = layer.merged_adapters + (name,)
    return model


def unmerge_lora(model: nnx.Module) -> nnx.Module:
    """Subtract every merged adapter from its base kernel again (in place)."""
    for layer in lora_layers(model).values():
        for name in layer.merged_adapters:
            kernel = layer.base_layer.kernel
            kernel.value = _kernel_update(
                kernel.value,
                layer.lora_A[name].value,
                layer.lora_B[name].value,
                -layer.scaling[name],
            )
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
                kernel = layer.base_layer.kernel
                kernel.value = _kernel_update(
                    kernel.value,
                    layer.lora_A[name].value,
                    layer.lora_B[name].value,
                    -layer.scaling[name],
                )
            layer.merged_adapters = already[path]


# --------------------------------------------------------------------------------------------------
# What trains


def _modules_to_save_and_bias(
    configs: Sequence[LoraConfig],
) -> tuple[list[str], set[str]]:
    saves = [m for c in configs for m in (resolve_peft_heads(c).modules_to_save or [])]
    return saves, {c.bias for c in configs}


def resolve_peft_heads(config: LoraConfig) -> LoraConfig:
    """Config-only resolution of task heads (PEFT adds ``classifier`` and ``score``)."""
    if config.task_type not in ("SEQ_CLS", "TOKEN_CLS"):
        return config
    saves = list(config.modules_to_save or [])
    if not saves:
        saves = list(_PEFT_CLS_HEADS)
    return dataclasses.replace(config, modules_to_save=saves)


def trainable_filter(
    model_or_config: nnx.Module | LoraConfig, adapter_name: str | None = None
) -> nnx.filterlib.Filter:
    """The NNX filter of what trains: ``LoRAParam`` + ``modules_to_save`` params (+ biases).

    Args:
      model_or_config: an adapted model (uses every adapter's resolved config) or a ``LoraConfig``
        (task heads resolved as PEFT does: ``classifier``/``score``).
      adapter_name: restrict the LoRA factors to one adapter (default: all adapters train; an
        adapter that is not in the forward pass gets zero gradient).

    Returns:
      A filter for ``nnx.Optimizer(model, tx, wrt=...)``, ``nnx.DiffState(0, ...)``, ``nnx.state``.
    """
    if isinstance(model_or_config, LoraConfig):
        configs = [model_or_config]
    else:
        configs = [
            LoraConfig.from_json(t) for _, t in getattr(model_or_config, "_lora_configs", ())
        ]
        if not configs:
            raise ValueError(
                "trainable_filter: this model has no LoRA adapter; call apply_lora first"
            )
    saves, biases = _modules_to_save_and_bias(configs)
    save_re = [re.compile(rf"(^|.*\.){re.escape(m)}($|\..*)") for m in saves]

    def extra(path: tuple, value: Any) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        name = _targets.path_str(path)
        if any(r.match(name) for r in save_re):
            return True
        if path and path[-1] == "bias":
            if "all" in biases:
                return True
            if "lora_only" in biases and len(path) >= 2 and path[-2] == "base_layer":
                return True
        return False

    lora: Any = LoRAParam
    if adapter_name is not None:
        lora = nnx.All(LoRAParam, lambda path, _: len(path) >= 1 and path[-1] == adapter_name)
    return nnx.Any(lora, extra)


def trainable_summary(model: nnx.Module, filter: nnx.filterlib.Filter | None = None) -> str:
    """PEFT's ``print_trainable_parameters`` line for ``model``.

    Returns:
      ``"trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330"``; all params counts
      every ``nnx.Param`` and ``LoRAParam``.
    """
    filter = trainable_filter(model) if filter is None else filter
    trainable = _count(nnx.state(model, filter))
    total = _count(nnx.state(model, nnx.Any(nnx.Param, LoRAParam)))
    pct = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"


def _count(state: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(state)))
