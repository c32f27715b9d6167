"""The guard shared by the per-example routing contexts of LoRA and of bottleneck adapters."""

from __future__ import annotations

import jax


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
