"""Llama-family decoders in Flax NNX: Llama 2/3, Mistral, Qwen2 and Qwen3, with a KV cache.

One pre-norm decoder block covers the whole family; the variants differ only in switches read
from the Hugging Face ``config.json``:

=========  ==================================================================================
llama      RMSNorm, SwiGLU, grouped-query attention, rope (``default``, ``linear``, ``llama3``)
mistral    llama + a sliding attention window on every layer (``sliding_window``)
qwen2      llama + bias on q/k/v (not on o); optional sliding window on upper layers
qwen3      llama + RMSNorm over each head of q and k before rope (``q_norm``, ``k_norm``)
=========  ==================================================================================

Attribute paths mirror the PyTorch state-dict keys (``model.layers.0.self_attn.q_proj.weight`` is
``model.model.layers[0].self_attn.q_proj.kernel``), so ``langtune_jax.models.hub`` converts
checkpoints generically. A tied LM head has no ``lm_head`` module at all: the logits reuse
``model.embed_tokens``.

Masks: ``attention_mask`` is ``[B, T]`` with 0 for padding. Any positive value is a *segment id*:
a token attends causally to earlier tokens with the same id only, so ``1/0`` masks give ordinary
left or right padding and ``1,1,2,2,2,0`` packs two examples into one row. Position ids, when not
given, are derived from the mask (they restart at 0 at the first token of every segment), which is
what ``transformers``' ``generate`` does for left-padded prompts. Sliding windows count slots
(cache indices), as in ``transformers``.

Decoding: :func:`init_cache` preallocates ``[B, S, kv_heads, head_dim]`` keys and values per
layer; a call with ``cache=`` writes the new tokens at ``cache.index`` and returns the updated
cache in ``ModelOutput.cache``. :func:`generate` runs prefill and then the whole token loop inside
one ``jax.jit`` (a ``lax.while_loop``), so nothing recompiles per token.

Dtypes: ``dtype`` is the compute dtype (e.g. bfloat16), ``param_dtype`` the storage dtype;
attention softmax, RMSNorm statistics and rope angles are float32 whatever ``dtype`` is.

Limits, stated rather than checked: rope has no position table, so sequences longer than
``max_position_embeddings`` run (and extrapolate) exactly as in ``transformers``; a cache must be
sized for prompt plus new tokens (slots past its end are clamped inside jit); the decoder has no
dropout (``attention_dropout``, 0 in every released checkpoint, is not read); rope types other than
``default``, ``linear`` and ``llama3`` are rejected when the config is read.

Package layout (lowest first): ``config`` (:class:`LlamaConfig`), ``modeling`` (masks, rope, the
KV cache and :class:`LlamaModel`), ``heads`` (the task models and :func:`from_hf_config`, which
builds the model for a task), ``generate`` (:func:`generate`, KV-cache decoding, and
:func:`generate_completions`, text in, text out). This ``__init__`` is the package's public surface.
"""

from langtune_jax.models.llama.config import (
    MODEL_TYPES,
    LayerType,
    LlamaConfig,
)
from langtune_jax.models.llama.generate import (
    Completion,
    encode_prompts,
    generate,
    generate_completions,
)
from langtune_jax.models.llama.heads import (
    TASKS,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    from_hf_config,
)
from langtune_jax.models.llama.modeling import (
    KVCache,
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaModel,
    RMSNorm,
    init_cache,
    positions_from_mask,
    rope_inv_freq,
)

__all__ = [
    "KVCache",
    "LayerType",
    "LlamaAttention",
    "LlamaConfig",
    "LlamaDecoderLayer",
    "LlamaForCausalLM",
    "LlamaForSequenceClassification",
    "LlamaForTokenClassification",
    "LlamaMLP",
    "LlamaModel",
    "MODEL_TYPES",
    "RMSNorm",
    "TASKS",
    "from_hf_config",
    "Completion",
    "encode_prompts",
    "generate",
    "generate_completions",
    "init_cache",
    "positions_from_mask",
    "rope_inv_freq",
]
