"""Bottleneck adapters in AdapterHub's saved-adapter layout (the ``adapters`` library, 1.x).

``export_adapterhub`` (:mod:`.adapterhub_export`) writes a folder that
``model.load_adapter(folder, use_safetensors=True)`` loads on the transformers PyTorch model after
``adapters.init(model)``; ``import_adapterhub`` (:mod:`.adapterhub_import`) reads such a folder
(written by us or by the library's ``save_adapter``) back into one of our models. This module is
the format both share: file names, the config translation, where the adapters sit in the model.

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

import math
import re
from pathlib import Path
from typing import Any

from flax import nnx

from langtune_jax.models.hub_files import hf_key
from langtune_jax.peft.adapters.apply import adapter_layers, invertible_embeddings
from langtune_jax.peft.adapters.config import AdapterConfig
from langtune_jax.peft.adapters.layer import AdapterParam, trainable_variables
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


def bn_config(config: AdapterConfig, hidden: int, num_layers: int) -> dict[str, Any]:
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


def config_from_hub(bn: dict[str, Any], hidden: int, num_layers: int, where: Path) -> AdapterConfig:
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


def check_model(model: nnx.Module, who: str) -> str:
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


def hub_targets(model: nnx.Module, prefix: str, name: str) -> dict[str, tuple[Any, bool]]:
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


def head_variables(model: nnx.Module) -> dict[str, tuple[nnx.Variable, bool]]:
    """``{transformers key: (variable, transpose)}`` of the saved modules (head, fresh pooler)."""
    out = {}
    for key, var in trainable_variables(model).items():
        if not isinstance(var, AdapterParam):
            parts = tuple(key.split("."))
            out[hf_key(parts)] = (var, parts[-1] == "kernel")
    return out


def layer_count(model: nnx.Module) -> int:
    return int(model.config.num_hidden_layers)


def model_architecture(model: nnx.Module) -> str:
    return getattr(model, "hf_architecture", None) or type(model).__name__
