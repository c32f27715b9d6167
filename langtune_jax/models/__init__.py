"""NNX models and Hugging Face checkpoint conversion.

``from_pretrained`` builds the right model from a Hugging Face folder or Hub id and loads its
weights; ``save_pretrained`` writes a folder transformers loads back.
"""

from langtune_jax.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
    XLMRobertaModel,
)
from langtune_jax.models.common import DEFAULT_RULES, ModelOutput, logical_to_spec, with_axes
from langtune_jax.models.hub import from_pretrained
from langtune_jax.models.hub_files import (
    MODEL_TYPES,
    hf_key,
    load_tokenizer,
    module_at,
    resolve,
    save_pretrained,
)
from langtune_jax.models.llama import (
    KVCache,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
    generate,
    init_cache,
)

__all__ = [
    "DEFAULT_RULES",
    "MODEL_TYPES",
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "KVCache",
    "LlamaConfig",
    "LlamaForCausalLM",
    "LlamaForSequenceClassification",
    "LlamaForTokenClassification",
    "LlamaModel",
    "ModelOutput",
    "RobertaForMaskedLM",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "RobertaModel",
    "XLMRobertaForMaskedLM",
    "XLMRobertaForSequenceClassification",
    "XLMRobertaForTokenClassification",
    "XLMRobertaModel",
    "from_pretrained",
    "generate",
    "hf_key",
    "init_cache",
    "load_tokenizer",
    "logical_to_spec",
    "module_at",
    "resolve",
    "save_pretrained",
    "with_axes",
]
