"""Bottleneck adapters and per-language (MAD-X style) adapters, wired into the forward pass.

A bottleneck adapter (Houlsby et al., 2019) is a small residual MLP on a sub-layer's output ``y``:
``adapter(y) = y + s * up(f(down(y)))`` with ``down: [D, m]``, ``up: [m, D]``, ``m << D``. With the
up-projection initialised to zero it is the identity, so the adapted model starts equal to the base.

Tree surgery
------------
``apply_adapters`` replaces the sub-module that produces the adapted output by an ``AdapterWrapper``
that *holds* it and calls it, so the adapter is on the computation path by construction (the
wrapper's ``__call__`` is the only way the model reaches the original layer). For a BERT layer with
``placement="houlsby"``::

    encoder.layer.3                              encoder.layer.3
    ├── attention.output                         ├── attention.output
    │   ├── dense: Linear                ──►     │   ├── dense: AdapterWrapper  adapter(dense(h))
    │   └── LayerNorm                            │   │   ├── base_layer: Linear        (frozen)
    ├── intermediate.dense                       │   │   └── adapter: BottleneckAdapter
    └── output                                   │   │       ├── down_kernel: AdapterParam [D, m]
        ├── dense: Linear                        │   │       ├── down_bias:   AdapterParam [m]
        └── LayerNorm                            │   │       ├── up_kernel:   AdapterParam [m, D]
                                                 │   │       └── up_bias:     AdapterParam [D]
                                                 │   └── LayerNorm
                                                 └── output.dense: AdapterWrapper (as above)

Placements (``AdapterConfig.placement``), per adapted layer:

========  =====================================================================================
pfeiffer  one adapter after the feed-forward block (Pfeiffer et al., 2020/2021; the MAD-X site):
          BERT ``output.dense``, Llama ``mlp.down_proj``
houlsby   two: after attention and after the feed-forward block (Houlsby et al., 2019): BERT
          ``attention.output.dense`` + ``output.dense``; Llama ``self_attn.o_proj`` +
          ``mlp.down_proj``
parallel  one adapter reading the feed-forward *input* and adding to its output (He et al., 2022):
          Llama ``mlp(x) + s * adapter(x)``; BERT ``LayerNorm(ffn(x) + x + s * adapter(x))``
========  =====================================================================================

Serial adapters sit on the projection output *before* the residual add (and, for BERT, before the
residual LayerNorm), as in Houlsby's design; BERT's hidden dropout follows the adapter instead of
preceding it. The ``adapters`` library's Pfeiffer config additionally re-uses the layer's LayerNorm
around the adapter; we keep the simpler Houlsby-style position for both (same parameter count).

Invertible adapters (MAD-X)
---------------------------
``inv_adapter="nice"`` also wraps the encoder's ``embeddings`` in an ``InvertibleEmbeddings``: a
NICE coupling block (``InvertibleAdapter``) transforms the embedding output, and a masked-LM head
reads its hidden states through the exact inverse before the tied decoder, so a language adapter
learns a token-level transform for its language at both ends (Pfeiffer et al., 2020, section 3.2).
With ``languages`` each language has its own block (routed per example like the language
adapters), a language library saves it with each language, and a MAD-X stack loads it frozen with
the language adapters. Off by default.

Per-language adapters
---------------------
With ``languages=[...]`` every adapted site holds a *stack* of language adapters (``[L, D, m]`` ...,
row ``i`` = ``languages[i]``) plus, with ``shared_task_adapter``, a shared task adapter applied after
it (MAD-X: ``task(lang(y))``; parallel placement sums both branches). Each example picks its row by
a ``[B]`` int array: the wrapper gathers the rows (``jnp.take``) and applies them with a batched
``einsum``. One compiled program serves any mix of languages; row ``-1`` means "no language
adapter" (only the shared adapter, or the base model when there is none).

The rows reach the wrappers through a context, not through the model's call signature, so the models
need no ``language_id`` argument::

    @nnx.jit
    def forward(model, batch):
        with with_routing(model, batch["language_id"], table=rows):   # rows: language_rows(...)
            return model(batch["input_ids"], batch["attention_mask"]).logits

Open it *inside* the traced function, with the ids a traced argument (a concrete array would be
frozen into the compiled program; the wrapper refuses that case). Nothing is stored on the model, so
``nnx.split`` / checkpoints never see the routing. :func:`language_rows` maps language names to rows
and implements the evaluation fallback for languages without their own adapter (``fallback`` names
one, else ``default_fallback``: ``"shared"`` or a language).

Trainable set: ``AdapterParam`` plus the ``nnx.Param``s of ``modules_to_save`` (the task head by
default): :func:`adapter_trainable_filter`. LoRA composes: ``apply_lora`` then ``apply_adapters``
keeps LoRA's paths PEFT-exact (recommended); the reverse order gives the same function, but LoRA on a
layer the adapters already wrap must then name its ``base_layer`` path.

Package layout: ``config`` (``AdapterConfig``), ``layer`` (the adapter modules and the trainable
filter), ``routing`` (``with_routing``, ``language_rows``), ``apply`` (the tree surgery and the
adapter-only checkpoints), ``io`` (the saved-adapter folder), ``library`` (the language-adapter
library that MAD-X stacking reads) and ``adapterhub`` (export to / import from the ``adapters``
library's saved-adapter layout). This ``__init__`` is the package's public surface.

References:
  Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019, arXiv:1902.00751.
  Pfeiffer et al., "MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer",
  EMNLP 2020, arXiv:2005.00052; "AdapterFusion", EACL 2021, arXiv:2005.00247.
  He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022,
  arXiv:2110.04366.
"""

from langtune_jax.peft.adapters.adapterhub_export import (
    export_adapterhub,
    export_adapterhub_languages,
)
from langtune_jax.peft.adapters.adapterhub_import import import_adapterhub
from langtune_jax.peft.adapters.apply import (
    adapter_layers,
    apply_adapters,
    invertible_embeddings,
    load_adapters,
    remove_adapters,
    save_adapters,
    save_language_library,
)
from langtune_jax.peft.adapters.config import (
    DEFAULT_REDUCTION_FACTOR,
    LIBRARY_FILE,
    AdapterConfig,
    count_adapter_params,
    get_adapter_config,
    has_language_adapters,
    resolve_library,
)
from langtune_jax.peft.adapters.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
)
from langtune_jax.peft.adapters.layer import (
    AdapterParam,
    AdapterWrapper,
    BottleneckAdapter,
    InvertibleAdapter,
    InvertibleEmbeddings,
    LanguageAdapterParam,
    adapter_summary,
    adapter_trainable_filter,
)
from langtune_jax.peft.adapters.routing import (
    language_rows,
    with_routing,
)

__all__ = [
    "AdapterConfig",
    "AdapterParam",
    "AdapterWrapper",
    "BottleneckAdapter",
    "CONFIG_FILE",
    "DEFAULT_REDUCTION_FACTOR",
    "InvertibleAdapter",
    "InvertibleEmbeddings",
    "LIBRARY_FILE",
    "LanguageAdapterParam",
    "WEIGHTS_FILE",
    "adapter_layers",
    "adapter_summary",
    "adapter_trainable_filter",
    "apply_adapters",
    "count_adapter_params",
    "export_adapterhub",
    "export_adapterhub_languages",
    "get_adapter_config",
    "has_language_adapters",
    "import_adapterhub",
    "invertible_embeddings",
    "language_rows",
    "load_adapters",
    "remove_adapters",
    "resolve_library",
    "save_adapters",
    "save_language_library",
    "with_routing",
]
