"""langtune_jax: balanced multilingual parameter-efficient fine-tuning in JAX + Flax NNX.

The names most code needs are importable from here; each lives in its package
(``langtune_jax.data``, ``.models``, ``.peft``, ``.train``, ``.eval``), which is imported only when
one of its names is first used, so ``import langtune_jax`` stays cheap (the CLI's ``--help`` and
``langtune config`` do not load JAX's compiler for nothing)::

    import langtune_jax as lt

    model = lt.from_pretrained("bert-base-multilingual-cased", task="sequence-classification",
                               num_labels=3)
    model = lt.apply_lora(model, lt.LoraConfig(r=8, target_modules=["query", "value"]))
    probs = lt.language_weights({"en": 9000, "sw": 300}, "temperature", alpha=0.3)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the package that defines it (DESIGN.md's public surface).
_EXPORTS = {
    "RunConfig": "langtune_jax.config",
    "load_config": "langtune_jax.config",
    "language_weights": "langtune_jax.data",
    "LanguageMixture": "langtune_jax.data",
    "from_pretrained": "langtune_jax.models",
    "save_pretrained": "langtune_jax.models",
    "LoraConfig": "langtune_jax.peft",
    "apply_lora": "langtune_jax.peft",
    "merge_lora": "langtune_jax.peft",
    "export_peft": "langtune_jax.peft",
    "import_peft": "langtune_jax.peft",
    "AdapterConfig": "langtune_jax.peft",
    "apply_adapters": "langtune_jax.peft",
    "make_mesh": "langtune_jax.train",
    "per_language_report": "langtune_jax.eval",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Imports the package behind a public name on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'langtune_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
