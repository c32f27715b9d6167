"""Parameter-efficient fine-tuning: LoRA (PEFT-compatible) and its target matching."""

from langtune_jax.peft.lora import (
    active_adapters,
    apply_lora,
    delete_adapter,
    set_adapter,
    trainable_filter,
    trainable_summary,
)
from langtune_jax.peft.lora_config import (
    DEFAULT_TARGET_MODULES,
    LoraConfig,
    adapter_names_of,
    get_lora_config,
)
from langtune_jax.peft.lora_linear import LoRALinear, LoRAParam, lora_layers
from langtune_jax.peft.lora_merge import merge_and_unload, merge_lora, merged_view, unmerge_lora
from langtune_jax.peft.peft_format import export_peft, import_peft, merge_and_save, read_labels
from langtune_jax.peft.routing import adapter_routing
from langtune_jax.peft.targets import find_targets, named_modules

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "LoRALinear",
    "LoRAParam",
    "LoraConfig",
    "active_adapters",
    "adapter_names_of",
    "adapter_routing",
    "apply_lora",
    "delete_adapter",
    "export_peft",
    "find_targets",
    "get_lora_config",
    "import_peft",
    "lora_layers",
    "merge_and_save",
    "read_labels",
    "merge_and_unload",
    "merge_lora",
    "merged_view",
    "named_modules",
    "set_adapter",
    "trainable_filter",
    "trainable_summary",
    "unmerge_lora",
]

# Bottleneck and per-language adapters (peft/adapters.py and the modules it re-exports).
from langtune_jax.peft.adapter_config import (  # noqa: E402
    AdapterConfig,
    count_adapter_params,
    get_adapter_config,
    has_language_adapters,
)
from langtune_jax.peft.adapters import (  # noqa: E402
    apply_adapters,
    load_adapters,
    remove_adapters,
    save_adapters,
    save_language_library,
)
from langtune_jax.peft.bottleneck import (  # noqa: E402
    AdapterParam,
    AdapterWrapper,
    LanguageAdapterParam,
    adapter_summary,
    adapter_trainable_filter,
)
from langtune_jax.peft.routing import language_rows, with_routing  # noqa: E402

__all__ += [
    "AdapterConfig",
    "AdapterParam",
    "AdapterWrapper",
    "LanguageAdapterParam",
    "adapter_summary",
    "adapter_trainable_filter",
    "apply_adapters",
    "count_adapter_params",
    "get_adapter_config",
    "has_language_adapters",
    "language_rows",
    "load_adapters",
    "remove_adapters",
    "save_adapters",
    "save_language_library",
    "with_routing",
]
