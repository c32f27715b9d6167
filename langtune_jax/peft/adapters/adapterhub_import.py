"""Import from AdapterHub's saved-adapter layout (the format: :mod:`.adapterhub`): a folder the
``adapters`` library's ``save_adapter`` (or :func:`.adapterhub_export.export_adapterhub`) wrote,
applied and loaded into one of our models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.models.hub_files import host_array
from langtune_jax.peft.adapters.adapterhub import (
    HUB_CONFIG_FILE,
    HUB_HEAD_CONFIG_FILE,
    HUB_HEAD_WEIGHTS_FILE,
    HUB_TORCH_HEAD_WEIGHTS_FILE,
    HUB_TORCH_WEIGHTS_FILE,
    HUB_WEIGHTS_FILE,
    check_model,
    config_from_hub,
    head_variables,
    hub_targets,
    layer_count,
    model_architecture,
)
from langtune_jax.peft.adapters.apply import apply_adapters


def import_adapterhub(model: nnx.Module, folder: str | Path, *, rngs: nnx.Rngs | None = None):
    """Apply and load an AdapterHub saved adapter (bottleneck) into one of our models.

    The folder is one that the library's ``model.save_adapter(folder, name)`` writes (either
    weights file: ``adapter.safetensors``, or ``pytorch_adapter.bin``, which needs torch) or that
    :func:`export_adapterhub` writes. A ``head_config.json`` + head weights beside it are loaded
    into the model's task head (its ``model_class`` must be the model's).

    Args:
      model: a BERT-family model of ours without adapters (same architecture as the adapter's).
      folder: the saved adapter.
      rngs: as for :func:`apply_adapters` (only dropout streams matter: every weight is loaded).

    Returns:
      ``model`` with the adapters applied and their weights (and the head's) loaded.

    Raises:
      ValueError: a config whose function differs from ours (naming the field, e.g. the library's
        default Pfeiffer ``original_ln_before=True``), another model type or width, missing,
        unexpected or misshapen keys.
    """
    who = "import_adapterhub"
    folder = Path(folder)
    prefix = check_model(model, who)
    if getattr(model, "_adapter_config_json", None):
        raise ValueError(f"{who}: the model already has adapters; import into a fresh model")
    meta = _read_json(folder / HUB_CONFIG_FILE, who)
    hidden, num_layers = int(model.config.hidden_size), layer_count(model)
    for field, ours in (("model_type", model.config.model_type), ("hidden_size", hidden)):
        if meta.get(field) != ours:
            raise ValueError(
                f"{who}: {folder / HUB_CONFIG_FILE} is for {field}={meta.get(field)!r}, the model "
                f"has {ours!r}"
            )
    config = config_from_hub(meta.get("config") or {}, hidden, num_layers, folder / HUB_CONFIG_FILE)
    saved = _saved_modules(model, folder, prefix, who)
    apply_adapters(model, dataclasses.replace(config, modules_to_save=saved), rngs=rngs)
    targets = hub_targets(model, prefix, str(meta["name"]))
    tensors = _read_tensors(folder, HUB_WEIGHTS_FILE, HUB_TORCH_WEIGHTS_FILE, who)
    _assign(_with_prefix(tensors, prefix), targets, folder, who)
    if (folder / HUB_HEAD_CONFIG_FILE).is_file():
        head = _read_tensors(folder, HUB_HEAD_WEIGHTS_FILE, HUB_TORCH_HEAD_WEIGHTS_FILE, who)
        _assign(_untie_decoder(head, model, folder, who), head_variables(model), folder, who)
    return model


def _untie_decoder(head: dict, model: nnx.Module, folder: Path, who: str) -> dict:
    """A masked-LM head file without its tied decoder keys (the library saves them).

    transformers ties ``cls.predictions.decoder.weight`` (``lm_head.decoder.weight``) to the word
    embeddings and its ``.bias`` to ``cls.predictions.bias``: they are the same tensors here, so
    they are checked against those and dropped. An untied decoder is refused (ours is tied).
    """
    head = dict(head)
    for stem in ("cls.predictions", "lm_head"):
        weight, bias = (
            head.pop(f"{stem}.decoder.weight", None),
            head.pop(f"{stem}.decoder.bias", None),
        )
        if weight is not None:
            table = np.asarray(
                host_array(model.encoder_model.embeddings.word_embeddings.embedding[...])
            )
            if weight.shape != table.shape or not np.allclose(weight, table, atol=1e-6):
                raise ValueError(
                    f"{who}: {folder} has a masked-LM decoder ({stem}.decoder.weight) that differs "
                    "from the model's word embeddings; ours is tied to them (use the checkpoint "
                    "the adapter was trained on)"
                )
        if (
            bias is not None
            and f"{stem}.bias" in head
            and not np.array_equal(bias, head[f"{stem}.bias"])
        ):
            raise ValueError(
                f"{who}: {folder} has {stem}.decoder.bias != {stem}.bias; ours ties them (one bias)"
            )
    return head


def _saved_modules(model: nnx.Module, folder: Path, prefix: str, who: str) -> list[str]:
    """``modules_to_save`` for an import: the task head, plus encoder modules the head file holds
    (our exports carry a pooler the checkpoint lacked; the library's own files never do)."""
    heads = list(getattr(model, "head_modules", ()) or ())
    if not (folder / HUB_HEAD_CONFIG_FILE).is_file():
        return heads
    meta = _read_json(folder / HUB_HEAD_CONFIG_FILE, who)
    if meta.get("model_class") != model_architecture(model):
        raise ValueError(
            f"{who}: {folder / HUB_HEAD_CONFIG_FILE} is a head of {meta.get('model_class')!r}, "
            f"the model is {model_architecture(model)!r}; import into that task model"
        )
    keys = _read_tensors(folder, HUB_HEAD_WEIGHTS_FILE, HUB_TORCH_HEAD_WEIGHTS_FILE, who)
    inside = sorted({k.rpartition(".")[0] for k in keys if k.startswith(f"{prefix}.")})
    return heads + inside


def _with_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    # A bare BertModel saves "encoder.layer..." keys; a task model "bert.encoder.layer...".
    return {(k if k.startswith(f"{prefix}.") else f"{prefix}.{k}"): v for k, v in tensors.items()}


def _assign(tensors: dict, targets: dict, folder: Path, who: str) -> None:
    """Copy ``tensors`` (torch layout) into ``targets`` (``{key: (variable, transpose)}``)."""
    missing, unexpected = sorted(set(targets) - set(tensors)), sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise ValueError(
            f"{who}: the weights in {folder} do not match the model: missing keys {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''}, unexpected keys {unexpected[:3]}"
            f"{' ...' if len(unexpected) > 3 else ''}"
        )
    for key, (var, transpose) in targets.items():
        value = np.asarray(tensors[key])
        value = value.T if transpose else value
        if value.shape != var[...].shape:
            raise ValueError(
                f"{who}: {key} has shape {value.shape} in {folder} (ours, transposed to [in, out]) "
                f"but {var[...].shape} in the model"
            )
        var[...] = jnp.asarray(value, var[...].dtype)


def _read_json(path: Path, who: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{who}: {path} does not exist (not an AdapterHub saved adapter)")
    return json.loads(path.read_text(encoding="utf-8"))


def _read_tensors(folder: Path, safe_name: str, torch_name: str, who: str) -> dict[str, Any]:
    if (folder / safe_name).is_file():
        from safetensors.numpy import load_file

        return load_file(str(folder / safe_name))
    if not (folder / torch_name).is_file():
        raise ValueError(f"{who}: {folder} has neither {safe_name} nor {torch_name}")
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"{who}: {folder / torch_name} is a torch pickle and torch is not installed; save the "
            "adapter with use_safetensors=True"
        ) from None
    state = torch.load(folder / torch_name, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
