"""Hugging Face PEFT's on-disk LoRA format, both ways, and merged full checkpoints.

A PEFT adapter folder holds ``adapter_config.json`` (the ``LoraConfig`` fields plus
``peft_type: "LORA"``) and ``adapter_model.safetensors`` with torch layouts and these keys (what
``peft`` 0.21 writes; the adapter name is dropped)::

    base_model.model.<module path>.lora_A.weight      [r, in]     (ours: lora_A.<name>  [in, r])
    base_model.model.<module path>.lora_B.weight      [out, r]    (ours: lora_B.<name>  [r, out])
    base_model.model.<module path>.base_layer.bias    [out]       (bias="all" / "lora_only")
    base_model.model.<head path>.weight / .bias                   (modules_to_save, e.g. classifier)

Because our module paths are the Hugging Face module names (the model contract) and ``LoRALinear``
uses PEFT's attribute names, each key is the variable's path with ``hf_key`` leaf renames; the only
work is transposing. ``import_peft`` also accepts the older spellings PEFT reads
(``...modules_to_save.<name>.weight``, ``lora_A.<name>.weight``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.models.hub_files import hf_key, host_array, make_readable, save_pretrained
from langtune_jax.peft import targets as _targets
from langtune_jax.peft.lora.apply import apply_lora
from langtune_jax.peft.lora.config import LoraConfig, adapter_names_of, get_lora_config
from langtune_jax.peft.lora.layer import lora_layers
from langtune_jax.peft.lora.merge import merged_view

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: Beside the adapter: ``{"labels": [...], "id2label": {...}, "label2id": {...}}`` (PEFT's own
#: loader ignores unknown files, while unknown ``adapter_config.json`` keys may break it).
LABELS_NAME = "labels.json"
# LoraConfig fields of PEFT we do not implement, with the value that means "not used".
_UNSUPPORTED = {
    "use_dora": False,
    "lora_bias": False,
    "fan_in_fan_out": False,
    "layer_replication": None,
    "target_parameters": None,
    "trainable_token_indices": None,
    "use_qalora": False,
    "alora_invocation_tokens": None,
    "use_bdlora": None,
}


def peft_config_dict(
    model: nnx.Module, adapter_name: str = "default", base_model_name_or_path: str | None = None
) -> dict[str, Any]:
    """The ``adapter_config.json`` contents PEFT reads for adapter ``adapter_name``."""
    config = get_lora_config(model, adapter_name)
    if config.init_lora_weights == "pissa":
        raise ValueError(
            f"adapter {adapter_name!r} was initialised with PiSSA, which also changed the base "
            "kernels; a PEFT adapter folder cannot carry that. Export the merged model instead "
            "(merge_and_save / `langtune export --format merged`)."
        )
    target_modules: Any = config.target_modules
    if isinstance(target_modules, str) and target_modules.lower() == _targets.ALL_LINEAR:
        # PEFT would re-expand "all-linear" on the torch model by its own head rules; name the
        # wrapped layers exactly so both sides wrap the same set.
        target_modules = sorted(
            p for p, layer in lora_layers(model).items() if adapter_name in layer.lora_A
        )
    d = {k: v for k, v in json.loads(config.to_json()).items() if k != "target_modules"}
    d.update(
        peft_type="LORA",
        target_modules=target_modules,
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
        revision=None,
        **_UNSUPPORTED,
    )
    return dict(sorted(d.items()))


def lora_config_from_peft(d: dict[str, Any], source: str = CONFIG_NAME) -> LoraConfig:
    """Our ``LoraConfig`` from a PEFT ``adapter_config.json`` dict (unused PEFT fields ignored)."""
    if d.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{source}: peft_type={d.get('peft_type')!r}; only LORA adapters import")
    for key, off in _UNSUPPORTED.items():
        if d.get(key, off) not in (off, None, False, [], {}):
            raise ValueError(
                f"{source}: {key}={d[key]!r} is a PEFT feature langtune_jax does not implement; "
                "re-create the adapter without it"
            )
    fields = {f for f in LoraConfig.__dataclass_fields__}
    kwargs = {k: v for k, v in d.items() if k in fields}
    if isinstance(kwargs.get("target_modules"), list | set | tuple):
        kwargs["target_modules"] = sorted(kwargs["target_modules"])
    # The weights come from the file: never re-run a data-dependent initialisation on import.
    kwargs["init_lora_weights"] = True
    for key in ("rank_pattern", "alpha_pattern"):
        kwargs[key] = dict(kwargs.get(key) or {})
    return LoraConfig(**kwargs)


def peft_state_dict(model: nnx.Module, adapter_name: str = "default") -> dict[str, np.ndarray]:
    """Adapter ``adapter_name`` as PEFT's state dict (torch layouts, host numpy arrays)."""
    config = get_lora_config(model, adapter_name)
    out: dict[str, np.ndarray] = {}
    lora_paths = []
    for path, layer in lora_layers(model).items():
        if adapter_name not in layer.lora_A:
            continue
        lora_paths.append(path)
        out[f"{PREFIX}{path}.lora_A.weight"] = host_array(
            layer.lora_A[adapter_name].value
        ).T  # [r, in]
        out[f"{PREFIX}{path}.lora_B.weight"] = host_array(
            layer.lora_B[adapter_name].value
        ).T  # [out, r]
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        keep = _targets.in_modules_to_save(_targets.path_str(path), config.modules_to_save)
        if path[-1] == "bias" and config.bias == "all":
            keep = True
        if path[-1] == "bias" and config.bias == "lora_only":
            keep = keep or (len(path) >= 2 and path[-2] == "base_layer" and
                            _targets.path_str(path[:-2]) in lora_paths)  # fmt: skip
        if keep:
            arr = host_array(var.get_value())
            out[PREFIX + hf_key(tuple(path))] = arr.T if path[-1] == "kernel" else arr
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def export_peft(
    model: nnx.Module,
    folder: str | Path,
    *,
    adapter_name: str = "default",
    base_model_name_or_path: str | None = None,
    label_names: list[str] | None = None,
) -> Path:
    """Write adapter ``adapter_name`` as a PEFT folder that ``PeftModel.from_pretrained`` loads.

    Args:
      model: a model adapted with ``apply_lora`` (ours: BERT/XLM-R, Llama family).
      folder: output folder (created).
      adapter_name: which adapter to write.
      base_model_name_or_path: recorded in ``adapter_config.json`` for PEFT's ``AutoPeftModel``.
      label_names: class (tag) names in label-id order, written to ``labels.json``
        (:func:`read_labels`; ``import_peft`` puts them on the model as ``label_names``).

    Returns:
      ``folder`` as a ``Path``. With several JAX processes every process must call this.
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    config = peft_config_dict(model, adapter_name, base_model_name_or_path)
    tensors = peft_state_dict(model, adapter_name)
    if jax.process_index() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        if label_names:
            write_labels(folder, label_names)
        make_readable(folder)
    return folder


def write_labels(folder: str | Path, label_names: Sequence[str]) -> Path:
    """Write ``labels.json`` (names in label-id order, ``id2label``, ``label2id``) into an adapter
    folder; :func:`read_labels` reads it back."""
    names = [str(n) for n in label_names]
    labels = {
        "labels": names,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }
    path = Path(folder) / LABELS_NAME
    path.write_text(json.dumps(labels, indent=2) + "\n")
    return path


def read_labels(folder: str | Path) -> list[str] | None:
    """The label names an adapter folder carries (``labels.json``), in label-id order, or ``None``."""
    path = Path(folder) / LABELS_NAME
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if isinstance(data.get("labels"), list):
        return [str(x) for x in data["labels"]]
    id2label = data.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)] or None


def _normalise_key(key: str, adapter_name: str) -> str | None:
    """PEFT's older/alternative spellings -> the canonical key; ``None`` for keys to skip."""
    if ".original_module." in key:
        return None  # PEFT's frozen copy of a modules_to_save module
    for infix in (
        f".modules_to_save.{adapter_name}.",
        ".modules_to_save.default.",
        ".modules_to_save.",
    ):
        key = key.replace(infix, ".")
    key = re.sub(rf"\.(lora_[AB])\.{re.escape(adapter_name)}\.weight$", r".\1.weight", key)
    key = re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1.weight", key)
    if not key.startswith(PREFIX):
        key = PREFIX + key
    return key


def import_peft(
    model: nnx.Module,
    folder: str | Path,
    *,
    adapter_name: str = "default",
    rngs: nnx.Rngs | None = None,
) -> nnx.Module:
    """Load a PEFT LoRA folder (ours or one the ``peft`` library wrote) into ``model``.

    If ``model`` has no adapter ``adapter_name`` yet, LoRA is applied first with the folder's config.
    Every tensor in the file must find its variable with the same shape (torch layouts are
    transposed); LoRA factors the file lacks are an error.

    Returns:
      ``model`` (in place), with the adapter's ``A``/``B``, ``modules_to_save`` and bias weights set;
      when the folder carries ``labels.json``, ``model.label_names`` holds the class names in
      label-id order.
    """
    from safetensors.numpy import load_file

    folder = Path(folder)
    config_file, weights_file = _adapter_files(folder)
    config = lora_config_from_peft(json.loads(config_file.read_text()), str(config_file))
    if adapter_name not in adapter_names_of(model):
        apply_lora(model, config, rngs=rngs, adapter_name=adapter_name)
    expected, lora_keys = _expected_variables(model, adapter_name)
    tensors = load_file(str(weights_file))
    seen = _load_tensors(tensors, expected, adapter_name, weights_file, type(model).__name__)
    missing = sorted(lora_keys - seen)
    if missing:
        raise ValueError(
            f"{weights_file}: no weights for {len(missing)} LoRA factors, e.g. {missing[:3]}; "
            f"the file's keys look like {list(tensors)[:3]}"
        )
    labels = read_labels(folder)
    if labels is not None:
        model.label_names = tuple(labels)
    return model


def _adapter_files(folder: Path) -> tuple[Path, Path]:
    """``(adapter_config.json, adapter_model.safetensors)`` of ``folder``, both present."""
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing; a PEFT adapter folder needs {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME} (folder: {folder})")  # fmt: skip
    return config_file, weights_file


def _expected_variables(
    model: nnx.Module, adapter_name: str
) -> tuple[dict[str, tuple[nnx.Variable, bool]], set[str]]:
    """``({PEFT key: (variable, transpose)}, the keys of adapter_name's LoRA factors)``."""
    expected: dict[str, tuple[nnx.Variable, bool]] = {}
    lora_keys = set()
    for path, layer in lora_layers(model).items():
        if adapter_name in layer.lora_A:
            for which in ("lora_A", "lora_B"):
                key = f"{PREFIX}{path}.{which}.weight"
                expected[key] = (getattr(layer, which)[adapter_name], True)
                lora_keys.add(key)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        expected[PREFIX + hf_key(tuple(path))] = (var, path[-1] == "kernel")
    return expected, lora_keys


def _load_tensors(
    tensors: dict[str, np.ndarray],
    expected: dict[str, tuple[nnx.Variable, bool]],
    adapter_name: str,
    weights_file: Path,
    model_name: str,
) -> set[str]:
    """Set each expected variable from its tensor (torch layouts transposed); the keys set.

    Raises:
      ValueError: a shape that does not fit, or tensors that match no variable.
    """
    unknown, seen = [], set()
    for raw_key, arr in tensors.items():
        key = _normalise_key(raw_key, adapter_name)
        if key is None:
            continue
        if key not in expected:
            unknown.append(raw_key)
            continue
        var, transpose = expected[key]
        value = arr.T if transpose else arr
        old = var.get_value()
        if value.shape != old.shape:
            raise ValueError(
                f"{weights_file}: {raw_key} has shape {tuple(arr.shape)} but the model expects "
                f"{tuple(old.shape[::-1] if transpose else old.shape)}; was the adapter made for "
                "another model size or rank (rank_pattern)?"
            )
        new = jnp.asarray(value, dtype=old.dtype)
        if isinstance(old, jax.Array):
            new = jax.device_put(new, old.sharding)
        var.set_value(new)
        seen.add(key)
    if unknown:
        raise ValueError(
            f"{weights_file}: {len(unknown)} tensors match no variable of {model_name}, "
            f"e.g. {unknown[:5]}; is this adapter for another architecture or task head?"
        )
    return seen


def merge_and_save(
    model: nnx.Module, folder: str | Path, *, label_names: list[str] | None = None
) -> Path:
    """Write a plain Hugging Face checkpoint of ``model`` with its active LoRA adapters merged.

    ``transformers``' ``from_pretrained`` loads the folder without ``peft``. The model itself is
    left as it was (adapters un-merged and wrapped again afterwards). ``label_names`` go into
    ``config.json`` as ``id2label`` / ``label2id``.
    """
    with merged_view(model):
        return save_pretrained(model, folder, label_names=label_names)
