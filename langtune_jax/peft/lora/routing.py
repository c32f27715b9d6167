"""Per-example routing of LoRA's named adapters: each example of a batch runs through its own adapter.

The ids reach the ``LoRALinear`` wrappers (:mod:`langtune_jax.peft.lora.layer`) through a
``contextvars.ContextVar`` rather than through the models' call signatures, so the models need no
extra argument and nothing is stored on the model (``nnx.split`` and checkpoints never see the
routing). Open :func:`adapter_routing` *inside* the jitted function, with the ids a traced
argument: a concrete array would be frozen into the compiled program, and the wrappers refuse
that case (:func:`langtune_jax.peft.tracing.check_traced`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.peft.lora.config import adapter_names_of

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Routing:
    """The routing of an open :func:`adapter_routing` context."""

    adapter_ids: Array  # [B] int, -1 = no adapter
    names: tuple[str, ...]


_LORA_ROUTING: contextvars.ContextVar[Routing | None] = contextvars.ContextVar(
    "langtune_lora_routing", default=None
)


def active_routing() -> Routing | None:
    """The routing of the innermost open :func:`adapter_routing` context, or None."""
    return _LORA_ROUTING.get()


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
    token = _LORA_ROUTING.set(Routing(ids, names))
    try:
        yield
    finally:
        _LORA_ROUTING.reset(token)
