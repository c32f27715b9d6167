"""LoRA on a model: apply it, manage named adapters, and say what trains (see the package docstring)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from langtune_jax.peft import targets as _targets
from langtune_jax.peft.lora.config import (
    DEFAULT_TARGET_MODULES,
    PEFT_CLS_HEADS,
    LoraConfig,
    adapter_names_of,
)
from langtune_jax.peft.lora.layer import LoRALinear, LoRAParam, lora_layers

# --------------------------------------------------------------------------------------------------
# Model-level API


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


def infer_task_type(model: nnx.Module) -> str | None:
    """``SEQ_CLS`` / ``TOKEN_CLS`` for a sequence / token classification model, else ``None``."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    return None


def fresh_modules(model: nnx.Module) -> tuple[str, ...]:
    """Module paths ``from_pretrained`` initialised randomly (absent from the checkpoint)."""
    return tuple(getattr(model, "fresh_modules", ()) or ())


def resolve_config(model: nnx.Module, config: LoraConfig) -> LoraConfig:
    """``config`` with ``target_modules`` and task-head ``modules_to_save`` filled in for ``model``.

    With neither ``task_type`` nor ``modules_to_save`` given, a classification model gets the
    ``task_type`` of its class (as a PEFT user would set it), so its head trains; modules that
    ``from_pretrained`` initialised freshly (a pooler the MLM checkpoint lacks) train as well:
    a frozen random layer is never what a user wants.
    """
    target_modules = config.target_modules
    if target_modules is None:
        target_modules = default_target_modules(model)
    inferred = None
    if config.task_type is None and config.modules_to_save is None:
        inferred = infer_task_type(model)
        if inferred is not None:
            config = dataclasses.replace(config, task_type=inferred)
    modules_to_save = list(config.modules_to_save or [])
    if config.task_type in ("SEQ_CLS", "TOKEN_CLS"):
        heads = list(getattr(model, "head_modules", ()) or PEFT_CLS_HEADS)
        present = _targets.named_modules(model)
        # PEFT writes both of its guesses ("classifier", "score") into adapter_config.json and
        # ignores the one the model lacks; so do we.
        modules_to_save = [
            m
            for m in modules_to_save
            if m not in PEFT_CLS_HEADS or any(_targets.in_modules_to_save(p, [m]) for p in present)
        ]
        for head in heads:
            if head not in modules_to_save and any(
                _targets.in_modules_to_save(p, [head]) for p in present
            ):
                modules_to_save.append(head)
    if inferred is not None:
        modules_to_save += [m for m in fresh_modules(model) if m not in modules_to_save]
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
    _check_adapter_name(model, adapter_name)
    config = resolve_config(model, config)
    modules = _targets.named_modules(model)
    _check_modules_to_save(config.modules_to_save, modules)
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
    deterministic = _targets.is_deterministic(model)
    for path in paths:
        _wrapped(model, path, modules[path]).add_adapter(
            adapter_name,
            r=config.rank_and_alpha(path)[0],
            scaling=config.scaling(path),
            dropout=config.lora_dropout,
            init=config.init_lora_weights,
            rngs=rngs,
            deterministic=deterministic,
        )
    model._lora_configs = getattr(model, "_lora_configs", ()) + ((adapter_name, config.to_json()),)
    return model


def _check_adapter_name(model: nnx.Module, adapter_name: str) -> None:
    if adapter_name in adapter_names_of(model):
        raise ValueError(
            f"adapter {adapter_name!r} already exists on this model; pick another adapter_name or "
            "delete_adapter it first"
        )
    if not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name={adapter_name!r}: use a non-empty name without dots")


def _check_modules_to_save(
    modules_to_save: Sequence[str] | None, modules: dict[str, nnx.Module]
) -> None:
    for name in modules_to_save or []:
        if not any(_targets.in_modules_to_save(p, [name]) for p in modules):
            raise ValueError(
                f"LoraConfig.modules_to_save names {name!r} but no module path ends with it; "
                f"top-level modules are {sorted({p.split('.')[0] for p in modules})}"
            )


def _wrapped(model: nnx.Module, path: str, layer: nnx.Module) -> LoRALinear:
    """The ``LoRALinear`` at ``path``: ``layer`` itself, or a new wrapper put in its place."""
    if not isinstance(layer, LoRALinear):
        layer = LoRALinear(layer)
        _targets.set_module_at(model, path, layer)
    return layer


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
        saves = list(PEFT_CLS_HEADS)
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

    def extra(path: tuple, value: Any) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        if _targets.in_modules_to_save(_targets.path_str(path), saves):
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
      every weight of the model, frozen or trained (``nnx.Param``, ``LoRAParam``, bottleneck
      adapters' ``AdapterParam``; not the random-number state), as PEFT counts every parameter.
    """
    filter = trainable_filter(model) if filter is None else filter
    trainable = _count(nnx.state(model, filter))
    total = _count(nnx.state(model, nnx.Not(nnx.RngState)))
    pct = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"


def _count(state: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(state)))
