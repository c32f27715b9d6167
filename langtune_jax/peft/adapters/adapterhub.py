"""Bottleneck adapters in AdapterHub's saved-adapter layout (the ``adapters`` library, 1.x).

``export_adapterhub`` writes a folder that ``model.load_adapter(folder, use_safetensors=True)``
loads on the transformers PyTorch model after ``adapters.init(model)``; ``import_adapterhub`` reads
such a folder (written by us or by the library's ``save_adapter``) back into one of our models.

The folder (names and keys as the library's ``AdapterLoader`` / ``PredictionHeadLoader`` use them)::

    adapter_config.json     {"config": {<every BnConfig field>}, "name", "model_type",
                             "model_class", "hidden_size", "version", ...}
    adapter.safetensors     bert.encoder.layer.N.attention.output.adapters.NAME.adapter_down.0.weight
                            [m, D] (torch Linear layout), ...adapter_down.0.bias [m],
                            ...adapter_up.weight [D, m], ...adapter_up.bias [D]; the feed-forward
                            site is ...layer.N.output.adapters.NAME...
    head_config.json        (task models only) the head's model_class and labels
    model_head.safetensors  the head weights under their transformers names (classifier.weight ...)
                            and any other saved module (a pooler the checkpoint lacked): the
                            library's head loader loads every key that names a module

The same function, field by field. The library's BERT layers call
``bottleneck_layer_forward(dropout(dense(h)), input_tensor, LayerNorm)``; with
``original_ln_before=False`` and ``residual_before_ln=True`` the adapter reads ``y = dense(h)``
and returns ``y + s * up(f(down(y)))``, and ``original_ln_after=True`` then applies
``LayerNorm(. + input_tensor)``: exactly our serial adapter (package docstring). Our placements:

=========  ===================================================================================
pfeiffer   ``mh_adapter=False, output_adapter=True``; ``original_ln_before=False`` (NOT the
           library's ``SeqBnConfig`` default ``True``, which re-applies the layer's LayerNorm
           before the adapter: a different function, refused on import)
houlsby    ``mh_adapter=True, output_adapter=True`` (the library's ``DoubleSeqBnConfig``)
parallel   ``is_parallel=True`` on the output site: the adapter reads the feed-forward input
           and is added before the residual LayerNorm (``ParBnConfig``; ``scaling`` as ours)
=========  ===================================================================================

Invertible adapters (``inv_adapter: "nice"``, the library's ``SeqBnInvConfig``) travel too: our
``InvertibleEmbeddings`` block is its ``NICECouplingBlock`` (keys
``bert.invertible_adapters.NAME.F.0.weight`` ...); the library runs it on the embedding output and
its inverse before a masked-LM decoder, as we do.

Both sides: ``ln_before = ln_after = use_gating = phm_layer = False``, ``inv_adapter`` null or nice,
``scaling`` a float, ``reduction_factor`` with ``int(D // reduction_factor) == m``, ``leave_out``
the layers without adapters. ``architecture`` is ``null``: the library dispatches on it and treats
a missing/null value as a bottleneck adapter (``"bottleneck"`` is not one of its keys).

Refused (one line naming the option): per-language adapter sets and MAD-X stacks
(``AdapterConfig.languages`` / ``language_adapters``), models that also carry LoRA, Llama-family
models (not verified against the library), ``modules_to_save`` on a bare encoder (only a task
model's head loader reads saved modules); on import every config field whose value gives another
function.

References:
  adapters library: ``src/adapters/methods/modeling.py`` (``Adapter``, ``ParallelAdapter``),
  ``methods/bottleneck.py``, ``loading.py``, ``configuration/adapter_config.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.models.hub_files import hf_key, host_array, make_readable
from langtune_jax.peft.adapters.apply import adapter_layers, apply_adapters, invertible_embeddings
from langtune_jax.peft.adapters.config import AdapterConfig, get_adapter_config
from langtune_jax.peft.adapters.layer import AdapterParam, BottleneckAdapter, trainable_variables
from langtune_jax.peft.lora.layer import LoRAParam

#: File names of the library's saved-adapter folder (``adapters.utils``).
HUB_CONFIG_FILE = "adapter_config.json"
HUB_WEIGHTS_FILE = "adapter.safetensors"
HUB_TORCH_WEIGHTS_FILE = "pytorch_adapter.bin"
HUB_HEAD_CONFIG_FILE = "head_config.json"
HUB_HEAD_WEIGHTS_FILE = "model_head.safetensors"
HUB_TORCH_HEAD_WEIGHTS_FILE = "pytorch_model_head.bin"
#: The library version whose layout and semantics this module follows (recorded in the config).
HUB_VERSION = "adapters.1.3.0"

_PREFIX = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}
# Our wrapper's path relative to a layer -> the library's adapter-holding module in that layer.
_SITE = {"attention.output.dense": "attention.output", "output.dense": "output", "output": "output"}
_WRAPPER_RE = re.compile(
    r"^(?:(.*)\.)?encoder\.layer\.(\d+)\.(attention\.output\.dense|output\.dense|output)$"
)
# (our BottleneckAdapter field, the library's key suffix, transpose to torch's [out, in])
_WEIGHTS = (
    ("down_kernel", "adapter_down.0.weight", True),
    ("down_bias", "adapter_down.0.bias", False),
    ("up_kernel", "adapter_up.weight", True),
    ("up_bias", "adapter_up.bias", False),
)
# An invertible adapter's two MLPs (``NICECouplingBlock.F`` / ``.G``, each ``nn.Sequential(Linear,
# act, Linear)``): (our BottleneckAdapter field, the library's key suffix, transpose).
_INV_WEIGHTS = tuple(
    (f"{sub}.{field}", f"{sub}.{idx}.{kind}", transpose)
    for sub in ("F", "G")
    for field, idx, kind, transpose in (
        ("down_kernel", 0, "weight", True),
        ("down_bias", 0, "bias", False),
        ("up_kernel", 2, "weight", True),
        ("up_bias", 2, "bias", False),
    )
)
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}
_PLACEMENT = {  # (mh_adapter, output_adapter, is_parallel) -> our placement
    (False, True, False): "pfeiffer",
    (True, True, False): "houlsby",
    (False, True, True): "parallel",
}
# Fields that must hold exactly this value for the library's adapter to be our function.
_REQUIRED = {
    "original_ln_after": True,
    "ln_before": False,
    "ln_after": False,
    "use_gating": False,
    "phm_layer": False,
    "cross_adapter": False,
    "stochastic_depth": 0.0,
}


def _bn_config(config: AdapterConfig, hidden: int, num_layers: int) -> dict[str, Any]:
    """The library's full ``BnConfig`` dict for our ``config`` (every field, no defaults relied on)."""
    m = config.bottleneck_size(hidden)
    factor = float(config.reduction_factor or hidden / m)
    for _ in range(8):  # the library computes int(D // r): step below the float that rounds up
        if int(hidden // factor) >= m:
            break
        factor = math.nextafter(factor, 0.0)
    if int(hidden // factor) != m:
        raise ValueError(
            f"export_adapterhub: AdapterConfig.adapter_size={m} is not int({hidden} // r) for any "
            "reduction factor r the library can store; pick a size that divides hidden_size"
        )
    mh, out, par = {v: k for k, v in _PLACEMENT.items()}[config.placement]
    kept = set(config.layer_indices(num_layers))
    return {
        "architecture": None,
        "mh_adapter": mh,
        "output_adapter": out,
        "is_parallel": par,
        "reduction_factor": float(factor),
        "non_linearity": config.non_linearity,
        "original_ln_before": False,
        "original_ln_after": True,
        "residual_before_ln": True,
        "adapter_residual_before_ln": False,
        "ln_before": False,
        "ln_after": False,
        "init_weights": "bert" if config.init == "bert" else "mam_adapter",
        "init_weights_seed": None,
        "scaling": float(config.scaling),
        "use_gating": False,
        "inv_adapter": config.inv_adapter,
        "inv_adapter_reduction_factor": (
            float(config.inv_adapter_reduction_factor) if config.inv_adapter else None
        ),
        "cross_adapter": False,
        "leave_out": [i for i in range(num_layers) if i not in kept],
        "dropout": float(config.dropout),
        "phm_layer": False,
        "phm_dim": 4,
        "factorized_phm_W": True,
        "shared_W_phm": False,
        "shared_phm_rule": True,
        "factorized_phm_rule": False,
        "phm_c_init": "normal",
        "phm_init_range": 0.0001,
        "learn_phm": True,
        "hypercomplex_nonlinearity": "glorot-uniform",
        "phm_rank": 1,
        "phm_bias": True,
        "stochastic_depth": 0.0,
    }


def _config_from_hub(
    bn: dict[str, Any], hidden: int, num_layers: int, where: Path
) -> AdapterConfig:
    """Our ``AdapterConfig`` for the library's ``BnConfig`` dict ``bn``, or a one-line refusal."""

    def refuse(field: str, why: str) -> ValueError:
        return ValueError(f"import_adapterhub: {where} has {field}={bn.get(field)!r}: {why}")

    if bn.get("architecture") is not None:
        raise refuse("architecture", "only bottleneck adapters (architecture null) are supported")
    key = (bool(bn.get("mh_adapter")), bool(bn.get("output_adapter")), bool(bn.get("is_parallel")))
    if key not in _PLACEMENT:
        raise refuse(
            "mh_adapter", f"(mh_adapter, output_adapter, is_parallel)={key} is none of ours"
        )
    placement = _PLACEMENT[key]
    if placement != "parallel":  # ParallelAdapter.pre_forward ignores both fields
        if bn.get("original_ln_before", False) is not False:
            raise refuse(
                "original_ln_before",
                "the adapter would read LayerNorm(y + residual) (the library's Pfeiffer default); "
                "ours reads the sub-layer output y: a different function",
            )
        if bn.get("residual_before_ln", True) not in (True, False):
            raise refuse("residual_before_ln", "only true/false are ours")
    for field, want in _REQUIRED.items():
        if bn.get(field, want) != want:
            raise refuse(field, f"ours is {want!r}; this option has no equivalent here")
    factor, scaling = bn.get("reduction_factor"), bn.get("scaling", 1.0)
    if isinstance(factor, dict) or not isinstance(factor, int | float) or factor <= 0:
        raise refuse("reduction_factor", "per-layer sizes have no equivalent; one number is ours")
    if not isinstance(scaling, int | float) or isinstance(scaling, bool):
        raise refuse("scaling", "learned scalings have no equivalent; a number is ours")
    act = str(bn.get("non_linearity", "")).lower()
    if act not in _ACTIVATIONS:
        raise refuse("non_linearity", f"expected one of {sorted(_ACTIVATIONS)}")
    inv = bn.get("inv_adapter")
    if inv not in (None, "nice"):
        raise refuse("inv_adapter", "only NICE invertible adapters ('nice', MAD-X's) are ours")
    inv_factor = bn.get("inv_adapter_reduction_factor") or 2.0
    leave_out = {int(i) % num_layers for i in bn.get("leave_out") or []}
    layers = [i for i in range(num_layers) if i not in leave_out]
    if not layers:
        raise refuse("leave_out", "leaves out every layer")
    return AdapterConfig(
        placement=placement,
        adapter_size=max(1, int(hidden // factor)),  # the library's own rounding
        non_linearity=_ACTIVATIONS[act],
        dropout=float(bn.get("dropout", 0.0)),
        scaling=float(scaling),
        layers="all" if len(layers) == num_layers else layers,
        init="bert" if bn.get("init_weights") == "bert" else "identity",
        inv_adapter=inv,
        inv_adapter_reduction_factor=float(inv_factor),
    )


# --------------------------------------------------------------------------------------------------
# Where things are in the model


def _check_model(model: nnx.Module, who: str) -> str:
    """The library's base-model prefix (``bert`` / ``roberta``) of a supported model, or refuse."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _PREFIX:
        raise ValueError(
            f"{who}: {type(model).__name__} (model_type {model_type!r}) is not supported; "
            f"AdapterHub interop covers the BERT family ({sorted(_PREFIX)}), not Llama-family models"
        )
    if any(isinstance(v, LoRAParam) for _, v in nnx.iter_graph(model)):
        raise ValueError(
            f"{who}: the model also carries LoRA; AdapterHub export covers bottleneck adapters only "
            "(merge the LoRA weights first)"
        )
    return _PREFIX[model_type]


def _hub_sites(model: nnx.Module, prefix: str, name: str) -> dict[str, Any]:
    """``{library key prefix: our BottleneckAdapter}`` for every adapter of ``model``."""
    sites = {}
    for path, wrapper in adapter_layers(model).items():
        match = _WRAPPER_RE.match(path)
        if match is None or wrapper.adapter is None:
            raise ValueError(f"AdapterHub interop: no library site for the adapter at {path!r}")
        sites[f"{prefix}.encoder.layer.{match[2]}.{_SITE[match[3]]}.adapters.{name}."] = (
            wrapper.adapter
        )
    return sites


def _hub_targets(model: nnx.Module, prefix: str, name: str) -> dict[str, tuple[Any, bool]]:
    """``{library key: (our variable, transpose)}`` of every adapter weight of ``model``: the
    bottleneck adapters and, when present, the invertible adapter at the embeddings."""
    targets = {
        key + suffix: (getattr(adapter, field), transpose)
        for key, adapter in _hub_sites(model, prefix, name).items()
        for field, suffix, transpose in _WEIGHTS
    }
    found = invertible_embeddings(model)
    if found is not None:
        block = found[1].adapter
        for field, suffix, transpose in _INV_WEIGHTS:
            key = f"{prefix}.invertible_adapters.{name}.{suffix}"
            targets[key] = (block.weight(field), transpose)
    return targets


def _head_variables(model: nnx.Module) -> dict[str, tuple[nnx.Variable, bool]]:
    """``{transformers key: (variable, transpose)}`` of the saved modules (head, fresh pooler)."""
    out = {}
    for key, var in trainable_variables(model).items():
        if not isinstance(var, AdapterParam):
            parts = tuple(key.split("."))
            out[hf_key(parts)] = (var, parts[-1] == "kernel")
    return out


def _num_layers(model: nnx.Module) -> int:
    return int(model.config.num_hidden_layers)


def _architecture(model: nnx.Module) -> str:
    return getattr(model, "hf_architecture", None) or type(model).__name__


# --------------------------------------------------------------------------------------------------
# Export


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
    prefix = _check_model(model, who)
    config = get_adapter_config(model)
    if config.languages is not None or config.language_adapters is not None:
        raise ValueError(
            f"{who}: AdapterConfig.languages={config.languages}: per-language adapter sets (and "
            "MAD-X stacks) have no AdapterHub equivalent; export a single-adapter model"
        )
    hidden, num_layers = int(model.config.hidden_size), _num_layers(model)
    bn = _bn_config(config, hidden, num_layers)
    tensors = {
        key: _torch_layout(var[...], transpose)
        for key, (var, transpose) in _hub_targets(model, prefix, adapter_name).items()
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
    head = {k: _torch_layout(v[...], t) for k, (v, t) in _head_variables(model).items()}
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
        "model_class": _architecture(model),
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


# --------------------------------------------------------------------------------------------------
# Import


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
    prefix = _check_model(model, who)
    if getattr(model, "_adapter_config_json", None):
        raise ValueError(f"{who}: the model already has adapters; import into a fresh model")
    meta = _read_json(folder / HUB_CONFIG_FILE, who)
    hidden, num_layers = int(model.config.hidden_size), _num_layers(model)
    for field, ours in (("model_type", model.config.model_type), ("hidden_size", hidden)):
        if meta.get(field) != ours:
            raise ValueError(
                f"{who}: {folder / HUB_CONFIG_FILE} is for {field}={meta.get(field)!r}, the model "
                f"has {ours!r}"
            )
    config = _config_from_hub(
        meta.get("config") or {}, hidden, num_layers, folder / HUB_CONFIG_FILE
    )
    saved = _saved_modules(model, folder, prefix, who)
    apply_adapters(model, dataclasses.replace(config, modules_to_save=saved), rngs=rngs)
    targets = _hub_targets(model, prefix, str(meta["name"]))
    tensors = _read_tensors(folder, HUB_WEIGHTS_FILE, HUB_TORCH_WEIGHTS_FILE, who)
    _assign(_with_prefix(tensors, prefix), targets, folder, who)
    if (folder / HUB_HEAD_CONFIG_FILE).is_file():
        head = _read_tensors(folder, HUB_HEAD_WEIGHTS_FILE, HUB_TORCH_HEAD_WEIGHTS_FILE, who)
        _assign(_untie_decoder(head, model, folder, who), _head_variables(model), folder, who)
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
    if meta.get("model_class") != _architecture(model):
        raise ValueError(
            f"{who}: {folder / HUB_HEAD_CONFIG_FILE} is a head of {meta.get('model_class')!r}, "
            f"the model is {_architecture(model)!r}; import into that task model"
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
