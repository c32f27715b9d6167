"""Language adapter libraries (MAD-X): one adapter folder per language, stacked under a task adapter.

A run with per-language adapters (``AdapterConfig.languages``, e.g. masked-LM on unlabelled text)
writes its language rows as a library (``save_language_library`` in
:mod:`langtune_jax.peft.adapters`)::

    language_adapters/
      library.json            {"format": ..., "languages": ["en", "es", ...]}
      en/adapters_config.json one single-adapter folder: loadable on its own with load_adapters
      en/adapters.safetensors
      es/...

A task run names it in ``peft.adapters.language_adapters`` (the folder, or ``{language: folder}``):
``apply_adapters`` then builds the frozen language stack from these folders (:func:`library_stack`)
and one trainable task adapter after it at every adapted site.

References:
  Pfeiffer et al., "MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer",
  EMNLP 2020, arXiv:2005.00052.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from langtune_jax.peft.adapters.config import AdapterConfig
from langtune_jax.peft.adapters.io import read_folder

LIBRARY_FORMAT = "langtune_jax.language_adapter_library"
#: The weights of one bottleneck adapter, as ``BottleneckAdapter`` names them.
ADAPTER_WEIGHTS = ("down_kernel", "down_bias", "up_kernel", "up_bias")


@dataclasses.dataclass
class LibraryStack:
    """The frozen language stack read from a library.

    Attributes:
      bottleneck: the language adapters' width ``m`` (may differ from the task adapter's).
      non_linearity: the language adapters' activation.
      rows: ``{site path: {weight name: [L, ...] array}}``, rows in ``config.languages`` order.
    """

    bottleneck: int
    non_linearity: str
    rows: dict[str, dict[str, np.ndarray]]
    inv_reduction_factor: float | None = None
    inv_rows: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


#: The weights of an invertible adapter, as ``InvertibleAdapter`` names them.
INV_WEIGHTS = tuple(f"{sub}.{w}" for sub in ("F", "G") for w in ADAPTER_WEIGHTS)


def single_language_config(
    config: AdapterConfig, bottleneck: int, non_linearity: str, inv_factor: float | None = None
):
    """The config of one language's folder: one adapter per site (and its invertible adapter at
    the embeddings when ``inv_factor`` is set), nothing else saved."""
    return AdapterConfig(
        placement=config.placement,
        adapter_size=bottleneck,
        non_linearity=non_linearity,
        dropout=config.dropout,
        scaling=config.scaling,
        layers=config.layers,
        init=config.init,
        modules_to_save=[],
        inv_adapter=None if inv_factor is None else "nice",
        inv_adapter_reduction_factor=2.0 if inv_factor is None else inv_factor,
    )


def library_stack(
    config: AdapterConfig,
    sites: list[str],
    hidden_size: int,
    num_layers: int,
    inv_site: str | None = None,
) -> LibraryStack:
    """Read and check every language folder of ``config.language_adapters``.

    Args:
      config: the task run's adapter config (``language_adapters`` resolved, ``languages`` set).
      sites: the adapted site paths of the model, e.g. ``bert.encoder.layer.0.output.dense``.
      hidden_size, num_layers: the model's width and depth.
      inv_site: the embeddings path where invertible adapters go (``bert.embeddings``), or None
        for a model that cannot carry them.

    Raises:
      ValueError: a folder whose model size, placement, layers or scaling differ from the task
        run's, languages whose adapters differ in size (or in having invertible adapters), or
        missing weights (one line each).
    """
    found: dict[str, dict[str, np.ndarray]] = {s: {w: [] for w in ADAPTER_WEIGHTS} for s in sites}
    inv_found: dict[str, list[np.ndarray]] = {w: [] for w in INV_WEIGHTS}
    shape = None
    for lang in config.languages:
        folder = config.language_adapters[lang]
        meta, tensors = read_folder(folder, who=f"language_adapters[{lang!r}]")
        saved = AdapterConfig(**meta["config"])
        mine = (hidden_size, num_layers, config.placement, config.layer_indices(num_layers))
        theirs = (
            meta["hidden_size"],
            meta["num_layers"],
            saved.placement,
            saved.layer_indices(meta["num_layers"]),
        )
        if mine != theirs or saved.scaling != config.scaling or saved.languages is not None:
            raise ValueError(
                f"language_adapters[{lang!r}]: {folder} was trained for (hidden, layers, placement, "
                f"adapted layers) {theirs}, scaling {saved.scaling}; this run has {mine}, scaling "
                f"{config.scaling}: use the same model, placement, layers and scaling"
            )
        inv = saved.inv_adapter_reduction_factor if saved.inv_adapter else None
        this = (saved.bottleneck_size(hidden_size), saved.non_linearity, inv)
        if shape is not None and this != shape:
            raise ValueError(
                f"language_adapters[{lang!r}]: {folder} has bottleneck/activation/invertible "
                f"reduction {this}, the other languages {shape}; a stack needs one kind"
            )
        if inv is not None and inv_site is None:
            raise ValueError(
                f"language_adapters[{lang!r}]: {folder} has invertible adapters, which only "
                "BERT-family encoders carry"
            )
        shape = this
        who = f"language_adapters[{lang!r}]: {folder}"
        for site in sites:
            for w in ADAPTER_WEIGHTS:
                found[site][w].append(_saved(tensors, f"{site}.adapter.{w}", who))
        for w in INV_WEIGHTS if inv is not None else ():
            inv_found[w].append(_saved(tensors, f"{inv_site}.adapter.{w}", who))
    rows = {s: {w: np.stack(v) for w, v in ws.items()} for s, ws in found.items()}
    inv_rows = {w: np.stack(v) for w, v in inv_found.items() if v}
    return LibraryStack(shape[0], shape[1], rows, shape[2], inv_rows)


def _saved(tensors: dict[str, np.ndarray], key: str, who: str) -> np.ndarray:
    if key not in tensors:
        raise ValueError(f"{who} lacks {key}")
    return tensors[key]
