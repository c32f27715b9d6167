"""Per-example routing: each example of a batch runs through its own adapter.

Two contexts, one idea. The ids reach the wrappers through a ``contextvars.ContextVar`` rather than
through the models' call signatures, so the models need no extra argument, and nothing is stored
on the model (``nnx.split`` and checkpoints never see the routing):

- :func:`adapter_routing`: LoRA's named adapters, ``[B]`` indices into adapter names (read by
  ``LoRALinear``, :mod:`langtune_jax.peft.lora_linear`).
- :func:`with_routing`: per-language bottleneck adapters, ``[B]`` adapter rows (read by
  ``AdapterWrapper``, :mod:`langtune_jax.peft.bottleneck`); :func:`language_rows` maps language
  names to rows with the configured fallbacks.

Open either context *inside* the jitted function, with the ids a traced argument: a concrete array
would be frozen into the compiled program, and the wrappers refuse that case.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.peft.adapter_config import AdapterConfig, _config_of, has_language_adapters
from langtune_jax.peft.lora_config import adapter_names_of

Array = jax.Array
# The logger name language_rows has always logged under (users may configure it).
_log = logging.getLogger("langtune_jax.peft.adapters")


# --------------------------------------------------------------------------------------------------
# LoRA: named adapters per example


@dataclasses.dataclass(frozen=True)
class _Routing:
    adapter_ids: Array  # [B] int, -1 = no adapter
    names: tuple[str, ...]


_LORA_ROUTING: contextvars.ContextVar[_Routing | None] = contextvars.ContextVar(
    "langtune_lora_routing", default=None
)


def check_traced(x: jax.Array, ids: jax.Array, opener: str, ids_name: str) -> None:
    """Refuse routing ids that are concrete while the layer input ``x`` is traced.

    Such ids were given to a context opened outside the jitted function: they would be frozen into
    the compiled program. ``opener`` / ``ids_name`` name the context and its argument.
    """
    if isinstance(x, jax.core.Tracer) and not isinstance(ids, jax.core.Tracer):
        raise ValueError(
            f"{opener} was opened outside the traced (jitted) function, so its {ids_name} "
            f"would be baked into the compiled program as a constant. Open `with "
            f"{opener}(model, {ids_name}):` inside the jitted function and pass {ids_name} as an "
            "argument."
        )


@contextlib.contextmanager
def adapter_routing(
    model: nnx.Module, adapter_ids: Array, adapter_names: Sequence[str] | None = None
) -> Iterator[None]:
    """Route each example of the batch to its own adapter while the context is open.

    Args:
      model: a model with LoRA adapters (used to check the names).
      adapter_ids: ``[B]`` integers indexing ``adapter_names``; ``-1`` means "no adapter" (the base
        model) for that example.
      adapter_names: the adapters the indices refer to; default: every adapter of ``model`` in the
        order they were added (``adapter_names(model)``).

    Open it inside the jitted function, with ``adapter_ids`` a traced argument::

        @nnx.jit
        def forward(model, input_ids, adapter_ids):
            with adapter_routing(model, adapter_ids, ["sw", "yo", "ha"]):
                return model(input_ids).logits
    """
    known = adapter_names_of(model)
    names = tuple(known if adapter_names is None else adapter_names)
    missing = [n for n in names if n not in known]
    if missing or not names:
        raise ValueError(
            f"adapter_routing: adapters {missing or '[]'} are not on this model; it has {known}"
        )
    ids = jnp.asarray(adapter_ids)
    if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(
            f"adapter_routing: adapter_ids must be a [batch] integer array, got shape {ids.shape} "
            f"dtype {ids.dtype}"
        )
    token = _LORA_ROUTING.set(_Routing(ids, names))
    try:
        yield
    finally:
        _LORA_ROUTING.reset(token)


# --------------------------------------------------------------------------------------------------
# Bottleneck adapters: language rows per example


_LANGUAGE_ROUTING: contextvars.ContextVar[Array | None] = contextvars.ContextVar(
    "langtune_adapter_routing", default=None
)


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
    config = _config_of(model_or_config)
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
