"""Per-example routing of per-language bottleneck adapters: each example runs through its language's adapter.

As for LoRA (:mod:`langtune_jax.peft.lora.routing`), the adapter rows reach the ``AdapterWrapper``
layers (:mod:`langtune_jax.peft.adapters.layer`) through a ``contextvars.ContextVar``: the models
need no extra argument and nothing is stored on the model. Open :func:`with_routing` inside the
jitted function with the ids a traced argument; :func:`language_rows` maps language names to
rows with the configured fallbacks.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.peft.adapters.config import AdapterConfig, config_of, has_language_adapters

Array = jax.Array
# The logger name language_rows has always logged under (users may configure it).
_log = logging.getLogger("langtune_jax.peft.adapters")


_LANGUAGE_ROUTING: contextvars.ContextVar[Array | None] = contextvars.ContextVar(
    "langtune_adapter_routing", default=None
)


def active_rows() -> Array | None:
    """The ``[B]`` adapter rows of the innermost open :func:`with_routing` context, or None."""
    return _LANGUAGE_ROUTING.get()


@contextlib.contextmanager
def with_routing(
    model: nnx.Module, language_id: Array, table: Array | np.ndarray | None = None
) -> Iterator[nnx.Module]:
    """Route each example to its language adapter while the context is open.

    Args:
      model: a model with per-language adapters (``AdapterConfig.languages``).
      language_id: ``[B]`` integer array. Without ``table`` these are adapter rows (indices into
        ``AdapterConfig.languages``, ``-1`` = no language adapter); with ``table`` they index it.
      table: optional ``[num_data_languages]`` int array mapping a data pipeline's language id to
        an adapter row, e.g. ``language_rows(model, data_languages)`` (fallbacks included); ids
        outside the table run without a language adapter.

    Yields:
      ``model`` (call it inside the block, inside the jitted function).

    Raises:
      ValueError: the model has no per-language adapters, or ``language_id`` is not ``[B]`` ints.
    """
    if not has_language_adapters(model):
        raise ValueError(
            "with_routing: this model has no per-language adapters; apply_adapters with "
            "AdapterConfig(languages=[...]) first (or call the model without routing)"
        )
    rows = jnp.asarray(language_id)
    if rows.ndim != 1 or not jnp.issubdtype(rows.dtype, jnp.integer):
        raise ValueError(
            f"with_routing: language_id must be a [batch] integer array, got shape {rows.shape} "
            f"dtype {rows.dtype}"
        )
    if table is not None:
        rows = jnp.take(jnp.asarray(table, jnp.int32), rows, axis=0)  # [B]
    token = _LANGUAGE_ROUTING.set(rows.astype(jnp.int32))
    try:
        yield model
    finally:
        _LANGUAGE_ROUTING.reset(token)


def language_rows(
    model_or_config: nnx.Module | AdapterConfig, languages: Sequence[str]
) -> np.ndarray:
    """Adapter row per language name, with the configured fallbacks.

    A language in ``config.languages`` gets its own row; otherwise ``config.fallback[lang]``'s row;
    otherwise ``config.default_fallback``'s row, or ``-1`` for ``"shared"`` (no language adapter).

    Args:
      model_or_config: an adapted model or its ``AdapterConfig``.
      languages: language names, e.g. the data pipeline's languages in id order.

    Returns:
      ``[len(languages)]`` int32 rows, usable as ``with_routing(..., table=rows)``.
    """
    config = config_of(model_or_config)
    if config.languages is None:
        raise ValueError(
            "language_rows: AdapterConfig.languages is None (no per-language adapters)"
        )
    index = {lang: i for i, lang in enumerate(config.languages)}
    default = -1 if config.default_fallback == "shared" else index[config.default_fallback]
    rows = []
    for lang in languages:
        if lang in index:
            rows.append(index[lang])
            continue
        target = config.fallback.get(lang, config.default_fallback)
        rows.append(index[target] if target in index else default)
        how = f"{target!r}'s adapter" if target in index else "the shared task adapter only"
        _log.info("language %r has no adapter of its own: it uses %s (fallback)", lang, how)
    return np.asarray(rows, np.int32)
