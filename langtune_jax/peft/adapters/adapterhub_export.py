"""Export to AdapterHub's saved-adapter layout (the format: :mod:`.adapterhub`): one folder per
adapter that the ``adapters`` library's ``load_adapter`` reads, and one per language of a
per-language adapter run."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.models.hub_files import host_array, make_readable
from langtune_jax.peft.adapters.adapterhub import (
    HUB_CONFIG_FILE,
    HUB_HEAD_CONFIG_FILE,
    HUB_HEAD_WEIGHTS_FILE,
    HUB_TORCH_HEAD_WEIGHTS_FILE,
    HUB_TORCH_WEIGHTS_FILE,
    HUB_VERSION,
    HUB_WEIGHTS_FILE,
    bn_config,
    check_model,
    head_variables,
    hub_targets,
    layer_count,
    model_architecture,
)
from langtune_jax.peft.adapters.apply import adapter_layers, invertible_embeddings
from langtune_jax.peft.adapters.config import AdapterConfig, get_adapter_config
from langtune_jax.peft.adapters.layer import AdapterParam, BottleneckAdapter


def export_adapterhub(
    model: nnx.Module,
    folder: str | Path,
    *,
    adapter_name: str = "adapter",
    torch_bin: bool = False,
    label_names: Sequence[str] | None = None,
) -> Path:
    """Write ``model``'s bottleneck adapters (and task head) as an AdapterHub saved adapter.

    Load it with ``adapters.init(hf_model); hf_model.load_adapter(folder, use_safetensors=True);
    hf_model.set_active_adapters(adapter_name)`` on the transformers model of the same checkpoint
    (``BertModel`` or the task class, e.g. ``BertForSequenceClassification``, which then also loads
    the head). In eval mode its outputs equal ours (float32: within 1e-5).

    Args:
      model: a BERT-family model of ours with adapters from :func:`apply_adapters`.
      folder: output folder (created).
      adapter_name: the adapter's name in the library (its weight keys hold it).
      torch_bin: also write ``pytorch_adapter.bin`` (and ``pytorch_model_head.bin``) so a plain
        ``load_adapter(folder)`` works without ``use_safetensors``; needs torch at call time.
      label_names: class names in id order for the head's ``label2id`` (a training run's label
        vocabulary); default the model config's labels.

    Returns:
      The folder.

    Raises:
      ValueError: what the library cannot express (one line naming the option): per-language or
        stacked adapters, LoRA on the model, a Llama-family model, ``modules_to_save`` on a bare
        encoder, a bottleneck size no reduction factor gives.
    """
    who = "export_adapterhub"
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", adapter_name):
        raise ValueError(f"{who}: adapter_name={adapter_name!r}: use letters, digits, _ and -")
    prefix = check_model(model, who)
    config = get_adapter_config(model)
    if config.languages is not None or config.language_adapters is not None:
        raise ValueError(
            f"{who}: AdapterConfig.languages={config.languages}: per-language adapter sets (and "
            "MAD-X stacks) have no AdapterHub equivalent; export a single-adapter model"
        )
    hidden, num_layers = int(model.config.hidden_size), layer_count(model)
    bn = bn_config(config, hidden, num_layers)
    tensors = {
        key: _torch_layout(var[...], transpose)
        for key, (var, transpose) in hub_targets(model, prefix, adapter_name).items()
    }
    head = _head_tensors(model, config, who)
    labels = _head_labels(model, label_names, bool(head), who)
    if jax.process_index() == 0:  # every process gathered the arrays (host_array); one writes
        _write_hub_folder(Path(folder), model, adapter_name, bn, tensors, head, torch_bin, labels)
    return Path(folder)


def export_adapterhub_languages(
    model: nnx.Module,
    folder: str | Path,
    *,
    torch_bin: bool = False,
    label_names: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write each language adapter of a language-adapter model as its own AdapterHub adapter.

    For a model with per-language adapters and no shared task adapter (a MAD-X language-adapter
    run, e.g. masked LM on unlabelled text): ``folder/<language>/`` holds that language's
    adapters (and invertible adapter), named after the language, and the saved modules (a
    trained masked-LM head) beside them, so the ``adapters`` library loads each on its own and
    stacks it under a task adapter (``Stack("sw", "task")``).

    Returns:
      ``{language: its folder}``.

    Raises:
      ValueError: the model has no per-language adapters, or also a shared task adapter (a MAD-X
        task run: its language adapters come from the library run, export that one).
    """
    config = get_adapter_config(model)
    if config.languages is None:
        raise ValueError(
            "export_adapterhub_languages: the model has no per-language adapters "
            "(AdapterConfig.languages); use export_adapterhub"
        )
    if config.shared_task_adapter or config.language_adapters is not None:
        raise ValueError(
            "export_adapterhub_languages: the model also has a shared task adapter (a MAD-X task "
            "run); AdapterHub has no per-example language routing: export the language-adapter "
            "run (shared_task_adapter: false) instead"
        )
    out = {}
    for row, lang in enumerate(config.languages):
        single = _language_row_model(model, config, row)
        out[lang] = export_adapterhub(
            single, Path(folder) / lang, adapter_name=lang, torch_bin=torch_bin,
            label_names=label_names,
        )  # fmt: skip
    return out


def _language_row_model(model: nnx.Module, config: AdapterConfig, row: int) -> nnx.Module:
    """A copy of ``model`` whose per-language adapters are replaced by row ``row`` of each."""
    single = nnx.clone(model)
    for wrapper in adapter_layers(single).values():
        wrapper.adapter = nnx.data(_row_copy(wrapper.language_adapters, row))  # was None
        wrapper.language_adapters = None
    found = invertible_embeddings(single)
    if found is not None:
        found[1].adapter = nnx.data(_row_copy(found[1].language_adapters, row))
        found[1].language_adapters = None
    alone = dataclasses.replace(config, languages=None, fallback={}, default_fallback="shared")
    single._adapter_config_json = alone.to_json()
    return single


def _row_copy(stack: Any, row: int) -> Any:
    """Row ``row`` of a stacked (``num``) adapter module as a single one, weights copied."""
    single = nnx.clone(stack)
    for _, node in nnx.iter_graph(single):
        if isinstance(node, BottleneckAdapter):  # the stack itself, or F and G of a NICE block
            node.num = None
        elif isinstance(node, AdapterParam):
            node.value = node.value[row]
    return single


def _head_tensors(model: nnx.Module, config: AdapterConfig, who: str) -> dict[str, np.ndarray]:
    """The head file's tensors: the task head and any other saved module (a pooler the
    checkpoint lacked); the library's head loader loads every key that names a module."""
    head = {k: _torch_layout(v[...], t) for k, (v, t) in head_variables(model).items()}
    if head and not getattr(model, "head_modules", ()):
        raise ValueError(
            f"{who}: AdapterConfig.modules_to_save={config.modules_to_save} on a bare encoder: the "
            "library loads saved modules with a task model's head only; export a task model"
        )
    return head


def _head_labels(model: nnx.Module, label_names, has_head: bool, who: str) -> list[str]:
    """The head's class names: ``label_names`` (checked against the head) or the config's."""
    labels = list(model.config.labels) if label_names is None else list(label_names)
    if has_head and len(labels) != model.config.num_labels:
        raise ValueError(
            f"{who}: {len(labels)} label_names for a head of {model.config.num_labels} classes"
        )
    return labels


def _write_hub_folder(
    folder: Path,
    model: nnx.Module,
    name: str,
    bn: dict,
    tensors: dict,
    head: dict,
    torch_bin: bool,
    labels: list[str],
) -> None:
    """The files the library's ``AdapterLoader`` and ``PredictionHeadLoader`` read."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "model_type": model.config.model_type,
        "hidden_size": int(model.config.hidden_size),
        "name": name,
        "model_name": "",
        "model_class": model_architecture(model),
        "version": HUB_VERSION,
    }
    _write_json(folder / HUB_CONFIG_FILE, {**meta, "config": bn})
    _write_tensors(folder / HUB_WEIGHTS_FILE, tensors, folder / HUB_TORCH_WEIGHTS_FILE, torch_bin)
    if head:
        head_meta = {**meta, "config": None, "num_labels": len(labels)}
        head_meta["label2id"] = {label: i for i, label in enumerate(labels)}
        _write_json(folder / HUB_HEAD_CONFIG_FILE, head_meta)
        torch_head = folder / HUB_TORCH_HEAD_WEIGHTS_FILE
        _write_tensors(folder / HUB_HEAD_WEIGHTS_FILE, head, torch_head, torch_bin)
    make_readable(folder)


def _torch_layout(value: Any, transpose: bool) -> np.ndarray:
    arr = host_array(value).astype(np.float32) if value.dtype == jnp.bfloat16 else host_array(value)
    return np.ascontiguousarray(arr.T if transpose else arr)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_tensors(path: Path, tensors: dict, torch_path: Path, torch_bin: bool) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    if torch_bin:  # optional: the library's default (non-safetensors) file; torch only here
        import torch

        torch.save({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, torch_path)
