"""LoRA for any Flax NNX model, with Hugging Face PEFT's options and meanings.

LoRA (Hu et al., 2021) freezes a linear layer ``y = x W + b`` and learns a low-rank update:
``y = x W + b + dropout(x) A B * scale`` with ``A: [in, r]``, ``B: [r, out]`` and
``scale = lora_alpha / r`` (or ``lora_alpha / sqrt(r)`` with rsLoRA, Kalajdzievski 2023). ``B``
starts at zero, so the wrapped model equals the base model exactly until the first update.

Tree surgery
------------
``apply_lora`` finds the targets (``langtune_jax.peft.targets``, PEFT's matching rules) and replaces
each ``nnx.Linear`` in place by a ``LoRALinear`` that *holds* the original layer. Before and after,
for ``target_modules=["query", "value"]`` on BERT::

    attention.self                               attention.self
    ├── query: Linear                            ├── query: LoRALinear
    │   ├── kernel: Param [D, D]                 │   ├── base_layer: Linear      (frozen)
    │   └── bias:   Param [D]          ──►       │   │   ├── kernel: Param [D, D]
    ├── key:   Linear                            │   │   └── bias:   Param [D]
    └── value: Linear                            │   ├── lora_A: Dict{"default": LoRAParam [D, r]}
                                                 │   ├── lora_B: Dict{"default": LoRAParam [r, D]}
                                                 │   └── lora_dropout: Dict{"default": Dropout}
                                                 ├── key:   Linear                (untouched)
                                                 └── value: LoRALinear            (as query)

The names are PEFT's (``base_layer``, ``lora_A``, ``lora_B``), so a variable's path *is* its PEFT
state-dict key once the adapter name is dropped (``...query.lora_A.default`` <->
``base_model.model....query.lora_A.weight``, transposed) and ``peft_format`` needs no table.

- **Trainable set.** ``LoRAParam`` is its own ``nnx.Variable`` type; ``trainable_filter`` is that
  type plus the ``nnx.Param``s of ``modules_to_save`` (and biases per ``bias``). Use it as
  ``nnx.Optimizer(model, tx, wrt=filter)`` and ``nnx.DiffState(0, filter)``: frozen weights get no
  gradient and no optimizer state.
- **Layout.** ``A`` inherits the base kernel's input logical axis, ``B`` its output axis (and, when
  the kernel is already placed on a mesh, the matching ``NamedSharding``), so a tensor-parallel layer
  stays tensor-parallel.
- **Named adapters.** Each wrapper keeps one ``A``/``B`` per adapter name. ``apply_lora(...,
  adapter_name=...)`` on an adapted model adds an adapter (inactive unless it is the first, as in
  PEFT's ``add_adapter``); ``set_adapter`` picks the active one(s); ``delete_adapter`` removes one
  (unwrapping layers left without adapters).
- **Per-example adapters.** Inside ``with adapter_routing(model, adapter_ids):`` (``adapter_ids``
  ``[B]`` int, indices into the model's adapter names, ``-1`` = base model only) every wrapper
  stacks its adapters' ``A``/``B`` (``[N, in, r]``, ``[N, r, out]``, ranks zero-padded to the
  largest), gathers one pair per example and applies it with a batched ``einsum``: one program for
  any mix of languages, no Python branch per language, no recompilation when the mix changes. Enter
  the context *inside* the jitted function, where ``adapter_ids`` is a traced argument (a concrete
  array closed over by a traced function would be frozen into the compiled program; the wrapper
  refuses that case).
- **Merge.** ``merge_lora`` adds ``scale * A @ B`` to the base kernel with ``jnp`` ops under ``jit``
  with the kernel's own ``out_shardings``: sharded kernels stay sharded and no host gathers a matrix.
  ``unmerge_lora`` subtracts it again. ``merge_and_unload`` removes the wrappers for export.

Package layout: ``config`` (``LoraConfig``, the adapters recorded on a model), ``layer``
(``LoRALinear``, ``LoRAParam``), ``routing`` (``adapter_routing``), ``merge`` (merge, unmerge,
``merged_view``), ``apply`` (apply LoRA, manage named adapters, say what trains) and
``peft_format`` (export to and import from the Hugging Face PEFT format). This ``__init__`` is the
package's public surface.

References:
  Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021, arXiv:2106.09685.
  Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023,
  arXiv:2312.03732. Meng et al., "PiSSA", 2024, arXiv:2404.02948. Hugging Face PEFT ``LoraConfig``.
"""

from langtune_jax.peft.lora.apply import (
    active_adapters,
    apply_lora,
    delete_adapter,
    resolve_config,
    set_adapter,
    trainable_filter,
    trainable_summary,
)
from langtune_jax.peft.lora.config import (
    DEFAULT_TARGET_MODULES,
    LoraConfig,
    TaskType,
    adapter_names_of,
    get_lora_config,
)
from langtune_jax.peft.lora.layer import (
    LoRALinear,
    LoRAParam,
    lora_layers,
)
from langtune_jax.peft.lora.merge import (
    merge_and_unload,
    merge_lora,
    merged_view,
    unmerge_lora,
)
from langtune_jax.peft.lora.peft_format import (
    export_peft,
    import_peft,
    merge_and_save,
    read_labels,
    write_labels,
)
from langtune_jax.peft.lora.routing import (
    adapter_routing,
)

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "LoRALinear",
    "LoRAParam",
    "LoraConfig",
    "TaskType",
    "active_adapters",
    "adapter_names_of",
    "adapter_routing",
    "apply_lora",
    "delete_adapter",
    "export_peft",
    "get_lora_config",
    "import_peft",
    "lora_layers",
    "merge_and_save",
    "merge_and_unload",
    "merge_lora",
    "merged_view",
    "read_labels",
    "write_labels",
    "resolve_config",
    "set_adapter",
    "trainable_filter",
    "trainable_summary",
    "unmerge_lora",
]
