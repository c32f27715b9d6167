"""The files of an adapter-only folder: ``adapters_config.json`` + ``adapters.safetensors``.

One folder holds the adapters of one model (``save_adapters``) or one language's adapter of a
language adapter library (``save_language_library``); both are read back by :func:`read_folder`.
Only file I/O lives here, so the modules that build adapters and the library both use it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from langtune_jax.peft.adapters.config import AdapterConfig, count_adapter_params

#: File names of an adapter-only checkpoint folder.
CONFIG_FILE = "adapters_config.json"
WEIGHTS_FILE = "adapters.safetensors"
FORMAT = "langtune_jax.bottleneck_adapters"


def write_folder(
    folder: Path,
    config: AdapterConfig,
    tensors: dict[str, np.ndarray],
    *,
    hidden_size: int,
    num_layers: int,
    model_class: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` (dotted variable path -> array) and the config metadata to ``folder``."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": 1,
        "config": dataclasses.asdict(config),
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "model_class": model_class,
        "num_adapter_params": count_adapter_params(config, hidden_size, num_layers),
        **(extra or {}),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    return folder


def read_meta(folder: str | Path, who: str = "load_adapters") -> dict[str, Any]:
    """The metadata of an adapter folder (``config`` is a plain dict); one-line errors."""
    folder = Path(folder)
    cfg_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise ValueError(f"{who}: {f} does not exist (write it with save_adapters)")
    meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{who}: {cfg_file} is not a {FORMAT} config")
    return meta


def read_folder(
    folder: str | Path, who: str = "load_adapters"
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(metadata, tensors)`` of an adapter folder written by :func:`write_folder`."""
    from safetensors.numpy import load_file

    meta = read_meta(folder, who)
    return meta, load_file(str(Path(folder) / WEIGHTS_FILE))
