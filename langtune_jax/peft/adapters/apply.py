"""Bottleneck adapters on a model: apply, remove, save and load them (see the package docstring)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.models.hub_files import host_array
from langtune_jax.peft import targets as _targets
from langtune_jax.peft.adapters.config import (
    LIBRARY_FILE,
    PLACEMENT_SITES,
    AdapterConfig,
    get_adapter_config,
)
from langtune_jax.peft.adapters.io import CONFIG_FILE, WEIGHTS_FILE, read_folder, write_folder
from langtune_jax.peft.adapters.layer import (
    AdapterWrapper,
    BottleneckAdapter,
    InvertibleAdapter,
    InvertibleEmbeddings,
    LanguageAdapterParam,
    trainable_variables,
)
from langtune_jax.peft.adapters.library import (
    ADAPTER_WEIGHTS,
    INV_WEIGHTS,
    LIBRARY_FORMAT,
    LibraryStack,
    library_stack,
    single_language_config,
)

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
# A layer container: BERT ``<prefix>.encoder.layer.<i>``, Llama ``<prefix>.layers.<i>``.
_LAYER_PATH = {
    "bert": re.compile(r"^(?:.*\.)?encoder\.layer\.\d+$"),
    "llama": re.compile(r"^(?:.*\.)?layers\.\d+$"),
}


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


def invertible_embeddings(model: nnx.Module) -> tuple[str, InvertibleEmbeddings] | None:
    """``(path, wrapper)`` of the model's invertible adapters at the embeddings, or None."""
    for path, module in _targets.named_modules(model).items():
        if isinstance(module, InvertibleEmbeddings):
            return path, module
    return None


def _embeddings_path(layer_paths: list[str]) -> str:
    """``<prefix>.embeddings`` beside ``<prefix>.encoder`` (a BERT layer is ``...encoder.layer.i``)."""
    parent = layer_paths[0].rsplit(".", 2)[0].rpartition(".")[0]  # "<prefix>.encoder" -> prefix
    return f"{parent}.embeddings" if parent else "embeddings"


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


def _resolve_modules_to_save(model: nnx.Module, config: AdapterConfig) -> list[str]:
    modules = _targets.named_modules(model)
    if config.modules_to_save is None:
        # The task head, and whatever from_pretrained initialised freshly (a pooler the MLM
        # checkpoint lacks): a frozen random layer is never the intent.
        heads = [h for h in getattr(model, "head_modules", ()) or () if h in modules]
        fresh = [m for m in getattr(model, "fresh_modules", ()) or () if m in modules]
        return heads + [m for m in fresh if m not in heads]
    for name in config.modules_to_save:
        if not any(_targets.in_modules_to_save(p, [name]) for p in modules):
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
    if config.inv_adapter is not None and family != "bert":
        raise ValueError(
            f"AdapterConfig.inv_adapter={config.inv_adapter!r}: invertible adapters sit at a "
            f"BERT-family encoder's embeddings; {type(model).__name__} is a {family}-family model "
            "(drop inv_adapter)"
        )
    config = config.resolve_language_adapters()  # reads the library's folders (MAD-X)
    config = dataclasses.replace(config, modules_to_save=_resolve_modules_to_save(model, config))
    m = config.bottleneck_size(hidden)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    deterministic = _targets.is_deterministic(model)
    sites = _sites(config, family, layer_paths)
    stack = None
    if config.language_adapters is not None:
        inv_site = _embeddings_path(layer_paths) if family == "bert" else None
        stack = library_stack(config, [p for p, _ in sites], hidden, len(layer_paths), inv_site)
    inverse = _invertible(config, stack, hidden, model, layer_paths, rngs)
    for path, mode in sites:
        base = _targets.module_at(model, path)
        shared, per_lang = _site_adapters(config, base, (hidden, m), stack, path, rngs)
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
    if inverse is not None:
        _targets.set_module_at(model, *inverse)
    model._adapter_config_json = config.to_json()
    return model


def _invertible(
    config: AdapterConfig,
    stack: LibraryStack | None,
    hidden: int,
    model: nnx.Module,
    layer_paths: list[str],
    rngs: nnx.Rngs,
) -> tuple[str, InvertibleEmbeddings] | None:
    """``(embeddings path, wrapper)`` when the config (or the MAD-X library) has invertible
    adapters: one per language with ``languages`` (frozen library rows when stacking), else one."""
    factor = stack.inv_reduction_factor if stack is not None else None
    if config.inv_adapter is not None:
        factor = config.inv_adapter_reduction_factor
    if factor is None:
        return None
    path = _embeddings_path(layer_paths)
    base = _targets.module_at(model, path)
    kw = dict(
        non_linearity=stack.non_linearity if stack is not None else config.non_linearity,
        init=config.init,
        param_dtype=_param_dtype(base),
        rngs=rngs,
    )
    if config.languages is None:
        return path, InvertibleEmbeddings(
            base, adapter=InvertibleAdapter(hidden, factor, **kw), language_adapters=None
        )
    if stack is not None:
        kw["param_type"] = LanguageAdapterParam
    block = InvertibleAdapter(hidden, factor, num=len(config.languages), **kw)
    for name, value in (stack.inv_rows if stack is not None else {}).items():
        var = block.weight(name)
        var[...] = jnp.asarray(value, var[...].dtype)
    return path, InvertibleEmbeddings(base, adapter=None, language_adapters=block)


def _sites(config: AdapterConfig, family: str, layer_paths: list[str]) -> list[tuple[str, str]]:
    """``(module path, mode)`` of every adapted site, layer by layer in placement order."""
    return [
        (f"{layer_paths[i]}.{_SITES[family][site][0]}", _SITES[family][site][1])
        for i in config.layer_indices(len(layer_paths))
        for site in PLACEMENT_SITES[config.placement]
    ]


def _site_adapters(
    config: AdapterConfig,
    base: nnx.Module,
    sizes: tuple[int, int],
    stack: LibraryStack | None,
    path: str,
    rngs: nnx.Rngs,
) -> tuple[BottleneckAdapter | None, BottleneckAdapter | None]:
    """``(shared task adapter, per-language adapters)`` of the site ``path``; either may be None.

    ``sizes`` is ``(hidden, bottleneck)``. With a language library (``stack``, MAD-X) the
    per-language rows are its frozen, pretrained ones; otherwise they are new and train.
    """
    hidden, m = sizes
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
    if stack is not None:  # frozen, pretrained rows from the library (MAD-X)
        kw.update(non_linearity=stack.non_linearity, param_type=LanguageAdapterParam)
        per_lang = BottleneckAdapter(hidden, stack.bottleneck, num=len(config.languages), **kw)
        for w, value in stack.rows[path].items():
            var = getattr(per_lang, w)
            var[...] = jnp.asarray(value, var[...].dtype)
    elif config.languages is not None:
        per_lang = BottleneckAdapter(hidden, m, num=len(config.languages), **kw)
    return shared, per_lang


def remove_adapters(model: nnx.Module) -> nnx.Module:
    """Take the adapters out again (in place): every wrapper is replaced by its ``base_layer``.

    Bottleneck adapters are non-linear, so unlike LoRA they cannot be merged into the base weights;
    this restores the base model (e.g. to load other adapters or to export the base weights).
    """
    for path, wrapper in adapter_layers(model).items():
        _targets.set_module_at(model, path, wrapper.base_layer)
    if (found := invertible_embeddings(model)) is not None:
        _targets.set_module_at(model, found[0], found[1].base_layer)
    del model._adapter_config_json
    return model


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
    config = get_adapter_config(model)
    _, layer_paths = _find_layers(model)
    tensors = {key: host_array(var[...]) for key, var in trainable_variables(model).items()}
    folder = Path(folder)
    if jax.process_index() == 0:
        write_folder(
            folder,
            config,
            tensors,
            hidden_size=_hidden_size(model),
            num_layers=len(layer_paths),
            model_class=type(model).__name__,
        )
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
    weights_file = Path(folder) / WEIGHTS_FILE
    meta, tensors = read_folder(folder)
    saved = AdapterConfig(**meta["config"])
    if getattr(model, "_adapter_config_json", None):
        if get_adapter_config(model) != saved:
            raise ValueError(
                f"load_adapters: the model's adapters were built with {get_adapter_config(model)} "
                f"but {Path(folder) / CONFIG_FILE} holds {saved}; load into a model without adapters instead"
            )
    else:
        apply_adapters(model, saved, rngs=rngs)
    variables = trainable_variables(model)
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


def save_language_library(model: nnx.Module, folder: str | Path) -> Path:
    """Write each language's adapter as its own folder: a library of language adapters.

    ``folder/<language>/`` is a single-adapter folder (``adapters_config.json`` +
    ``adapters.safetensors``, the language's row at every site, no ``modules_to_save``), loadable on
    its own with :func:`load_adapters` into a fresh model; ``folder/library.json`` lists the
    languages. A task run stacks on it with ``AdapterConfig(language_adapters=folder)``. Call it on
    every process (sharded arrays are gathered), process 0 writes.

    Raises:
      ValueError: the model has no per-language adapters.
    """
    config = get_adapter_config(model)
    if config.languages is None:
        raise ValueError(
            "save_language_library: this model has no per-language adapters "
            "(AdapterConfig.languages); there is no language row to save"
        )
    _, layer_paths = _find_layers(model)
    wrappers = adapter_layers(model)
    stacks = {p: w.language_adapters for p, w in wrappers.items()}
    first = next(iter(stacks.values()))
    m, act = first.down_kernel[...].shape[-1], first.non_linearity
    weights = {
        f"{p}.adapter.{w}": host_array(getattr(a, w)[...])
        for p, a in stacks.items()
        for w in ADAPTER_WEIGHTS
    }
    inv_factor = None
    if (found := invertible_embeddings(model)) is not None:
        path, block = found[0], found[1].language_adapters
        inv_factor = block.reduction_factor
        for name in INV_WEIGHTS:
            weights[f"{path}.adapter.{name}"] = host_array(block.weight(name)[...])
    folder = Path(folder)
    if jax.process_index() == 0:
        single = single_language_config(config, m, act, inv_factor)
        for i, lang in enumerate(config.languages):
            write_folder(
                folder / lang,
                single,
                {k: np.ascontiguousarray(v[i]) for k, v in weights.items()},
                hidden_size=_hidden_size(model),
                num_layers=len(layer_paths),
                model_class=type(model).__name__,
                extra={"language": lang},
            )
        listing = {"format": LIBRARY_FORMAT, "languages": list(config.languages)}
        (folder / LIBRARY_FILE).write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")
    return folder
