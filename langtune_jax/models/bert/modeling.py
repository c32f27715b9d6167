"""BERT-family encoder layers: embeddings, self-attention, feed-forward, pooler, ``BertModel``.

Attribute paths mirror the Hugging Face state-dict keys (see :mod:`langtune_jax.models.bert`). Also
holds the initialiser helpers (``linear``, ``layer_norm``) and the ``Block`` base the task heads
in :mod:`langtune_jax.models.bert.heads` reuse.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.models.bert.config import ACTIVATIONS, BertConfig
from langtune_jax.models.common import (
    BATCH,
    EMBED,
    HEADS,
    LENGTH,
    MLP,
    VOCAB,
    ModelOutput,
    attention,
    constrain,
    positions_from_mask,
    remat_layer,
    with_axes,
)

Array = jax.Array


def _normal(cfg: BertConfig, *names: str | None):
    return with_axes(nnx.initializers.normal(cfg.initializer_range), *names)


def linear(cfg, d_in, d_out, axes, *, dtype, param_dtype, rngs) -> nnx.Linear:
    """An ``nnx.Linear`` initialised like HF (normal(initializer_range), zero bias) with axes."""
    return nnx.Linear(
        d_in,
        d_out,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=_normal(cfg, *axes),
        bias_init=with_axes(nnx.initializers.zeros_init(), axes[1]),
        rngs=rngs,
    )


def layer_norm(cfg, *, param_dtype, rngs) -> nnx.LayerNorm:
    # dtype=float32: statistics and output in float32 whatever the compute dtype.
    return nnx.LayerNorm(
        cfg.hidden_size,
        epsilon=cfg.layer_norm_eps,
        dtype=jnp.float32,
        param_dtype=param_dtype,
        scale_init=with_axes(nnx.initializers.ones_init(), EMBED),
        bias_init=with_axes(nnx.initializers.zeros_init(), EMBED),
        rngs=rngs,
    )


class Block(nnx.Module):
    """Base for the sub-layers: remembers the compute dtype."""

    def _init(self, cfg, dtype, param_dtype):
        self.dtype = dtype if dtype is not None else param_dtype

    def _norm(self, norm: nnx.LayerNorm, x: Array) -> Array:
        return norm(x).astype(self.dtype)


class BertEmbeddings(Block):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        self.config = cfg
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        d = cfg.hidden_size
        self.word_embeddings = nnx.Embed(
            cfg.vocab_size, d, embedding_init=_normal(cfg, VOCAB, EMBED), **kw
        )
        self.position_embeddings = nnx.Embed(
            cfg.max_position_embeddings, d, embedding_init=_normal(cfg, None, EMBED), **kw
        )
        self.token_type_embeddings = nnx.Embed(
            cfg.type_vocab_size, d, embedding_init=_normal(cfg, None, EMBED), **kw
        )
        self.LayerNorm = layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

    def position_ids(self, input_ids: Array, segment_ids: Array | None = None) -> Array:
        """HF's default position ids for ``input_ids`` ``[B, T]``; with packed ``segment_ids``
        ``[B, T]`` they restart in every segment (as if each example were its own row)."""
        cfg = self.config
        if segment_ids is not None:
            pos = positions_from_mask(segment_ids)  # [B, T] 0, 1, ... per segment
            if cfg.is_roberta:  # fairseq: tokens count from pad + 1, pads sit at pad
                return jnp.where(segment_ids > 0, pos + cfg.pad_token_id + 1, cfg.pad_token_id)
            return pos
        if cfg.is_roberta:
            # fairseq make_positions: non-pad tokens count from pad+1, pads stay at pad.
            mask = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(mask, axis=1) * mask + cfg.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)

    def __call__(
        self, input_ids, token_type_ids=None, position_ids=None, segment_ids=None
    ) -> Array:
        cfg = self.config
        if input_ids.shape[1] > cfg.max_length:
            raise ValueError(
                f"input length {input_ids.shape[1]} exceeds this {cfg.model_type} model's position "
                f"table (max {cfg.max_length} tokens, max_position_embeddings="
                f"{cfg.max_position_embeddings}); truncate inputs to {cfg.max_length} tokens"
            )
        if position_ids is None:
            position_ids = self.position_ids(input_ids, segment_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.word_embeddings(input_ids)  # [B, T, D]
        x = x + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self._norm(self.LayerNorm, x))


class BertSelfAttention(Block):
    """Multi-head self-attention: ``query``/``key``/``value`` projections, masked softmax."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = d // cfg.num_attention_heads
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = linear(cfg, d, d, (EMBED, HEADS), **kw)
        self.key = linear(cfg, d, d, (EMBED, HEADS), **kw)
        self.value = linear(cfg, d, d, (EMBED, HEADS), **kw)
        self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)

    def __call__(self, x: Array, keep: Array | None) -> Array:
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.query(x).reshape(shape)  # [B, T, N, H]
        k = self.key(x).reshape(shape)
        v = self.value(x).reshape(shape)
        out = attention(q, k, v, keep, dropout=self.dropout, dtype=self.dtype)  # [B, T, N, H]
        return out.reshape(b, t, -1)


class BertSelfOutput(Block):
    """Attention output projection + dropout + residual LayerNorm."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        d = cfg.hidden_size
        self.dense = linear(
            cfg, d, d, (HEADS, EMBED), dtype=self.dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.LayerNorm = layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

    def __call__(self, h: Array, residual: Array) -> Array:
        return self._norm(self.LayerNorm, self.dropout(self.dense(h)) + residual)


class BertAttention(nnx.Module):
    """``self`` (the attention proper; HF's attribute name) and ``output``."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self = BertSelfAttention(cfg, **kw)
        self.output = BertSelfOutput(cfg, **kw)

    def __call__(self, x: Array, keep: Array | None) -> Array:
        return self.output(self.self(x, keep), x)


class BertIntermediate(Block):
    """Feed-forward up-projection and activation."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        self.dense = linear(
            cfg, cfg.hidden_size, cfg.intermediate_size, (EMBED, MLP),
            dtype=self.dtype, param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip
        self.act = ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: Array) -> Array:
        return self.act(self.dense(x))  # [B, T, F]


class BertOutput(Block):
    """Feed-forward down-projection + dropout + residual LayerNorm."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        self.dense = linear(
            cfg, cfg.intermediate_size, cfg.hidden_size, (MLP, EMBED),
            dtype=self.dtype, param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip
        self.LayerNorm = layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

    def __call__(self, h: Array, residual: Array) -> Array:
        return self._norm(self.LayerNorm, self.dropout(self.dense(h)) + residual)


class BertLayer(nnx.Module):
    """One post-LayerNorm transformer block."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention = BertAttention(cfg, **kw)
        self.intermediate = BertIntermediate(cfg, **kw)
        self.output = BertOutput(cfg, **kw)

    def __call__(self, x: Array, keep: Array | None) -> Array:
        with jax.named_scope("attention"):
            x = self.attention(x, keep)
        with jax.named_scope("mlp"):
            return self.output(self.intermediate(x), x)


class BertEncoder(nnx.Module):
    """The stack of ``layer``s.

    ``remat`` (``none`` / ``dots-saveable`` / ``full``) recomputes each layer's activations in
    the backward pass by that ``jax.checkpoint`` policy; set it with
    :func:`langtune_jax.models.common.set_remat`. Hidden states are constrained to
    ``(batch, length, embed)`` between layers (a no-op without a mesh).
    """

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer = nnx.List([BertLayer(cfg, **kw) for _ in range(cfg.num_hidden_layers)])
        self.remat = "none"

    def __call__(self, x, keep, output_hidden_states=False):
        hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layer):
            with jax.named_scope(f"layer_{i}"):
                x = remat_layer(layer, self.remat)(x, keep)  # [B, T, D]
                x = constrain(x, BATCH, LENGTH, EMBED)
            if hidden is not None:
                hidden.append(x)
        return x, (tuple(hidden) if hidden is not None else None)


class BertPooler(Block):
    """``tanh(dense(first))`` over the first-token states (``[B, D]``, or ``[B, S, D]`` for the
    segments of packed rows): the [CLS] summary BERT classifies."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        d = cfg.hidden_size
        self.dense = linear(
            cfg, d, d, (EMBED, None), dtype=self.dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, first: Array) -> Array:
        return jnp.tanh(self.dense(first))  # [B, D] or [B, S, D]


def first_tokens(h: Array, segment_starts: Array | None) -> Array:
    """The states classification heads pool: ``h[:, 0]`` ``[B, D]``, or with packed rows each
    segment's first token ``[B, S, D]`` (``segment_starts`` ``[B, S]`` token positions)."""
    if segment_starts is None:
        return h[:, 0]
    return jnp.take_along_axis(h, segment_starts[..., None].astype(jnp.int32), axis=1)


def attention_keep(attention_mask: Array | None, segment_ids: Array | None) -> Array | None:
    """Boolean attention mask, True = attend: ``[B, 1, 1, T]`` from a padding mask, or
    block-diagonal ``[B, 1, T, T]`` from packed ``segment_ids`` (a query sees only keys of its own
    segment; padding queries see every real key, as HF's padding mask lets them)."""
    if segment_ids is not None:
        q, k = segment_ids[:, None, :, None], segment_ids[:, None, None, :]
        return (k != 0) & ((q == k) | (q == 0))
    if attention_mask is not None:
        return attention_mask.astype(bool)[:, None, None, :]
    return None


class BertModel(nnx.Module):
    """The bare encoder: ``embeddings``, ``encoder`` and (optionally) ``pooler``.

    Call with ``input_ids`` ``[B, T]`` int; ``attention_mask`` ``[B, T]`` 1 = token, 0 = pad;
    ``token_type_ids`` ``[B, T]`` (segment ids, default 0); ``position_ids`` ``[B, T]`` (default as
    HF). Packed rows add ``segment_ids`` ``[B, T]`` (1, 2, ... per example, 0 = padding:
    block-diagonal attention, positions restarting per segment) and, for pooling,
    ``segment_starts`` ``[B, S]`` (each segment's first token). Returns
    ``ModelOutput(last_hidden_state=[B, T, D], hidden_states=...)``; the pooled ``[B, D]`` (packed:
    ``[B, S, D]``) output is ``.logits`` when the pooler exists, so callers get it without a second
    pass.
    """

    #: the train step passes packed ``segment_ids`` / ``segment_starts`` as such (decoders take
    #: segments as ``attention_mask`` values instead).
    takes_segments = True

    base_model_prefix = "bert"
    head_modules: tuple[str, ...] = ()
    #: module paths a checkpoint may lack; they are freshly initialised (and logged) when missing.
    init_if_missing: tuple[str, ...] = ("pooler",)

    def __init__(
        self,
        cfg: BertConfig,
        *,
        add_pooling_layer: bool = True,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = cfg
        self.dtype = dtype if dtype is not None else param_dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embeddings = BertEmbeddings(cfg, **kw)
        self.encoder = BertEncoder(cfg, **kw)
        self.pooler = BertPooler(cfg, **kw) if add_pooling_layer else None

    @property
    def hf_architecture(self) -> str:
        return {"bert": "BertModel", "roberta": "RobertaModel"}.get(
            self.config.model_type, "XLMRobertaModel"
        )

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        *,
        segment_ids: Array | None = None,
        segment_starts: Array | None = None,
        cache: Any = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        if cache is not None:
            raise ValueError("BERT-family encoders take no KV cache (cache must be None)")
        x = self.embeddings(input_ids, token_type_ids, position_ids, segment_ids)  # [B, T, D]
        x = constrain(x, BATCH, LENGTH, EMBED)
        keep = attention_keep(attention_mask, segment_ids)
        x, hidden = self.encoder(x, keep, output_hidden_states)
        pooled = None
        if self.pooler is not None:
            pooled = self.pooler(first_tokens(x, segment_starts))
        return ModelOutput(logits=pooled, last_hidden_state=x, hidden_states=hidden)


class RobertaModel(BertModel):
    """The bare RoBERTa/XLM-R encoder (same layers as BERT; positions from the pad offset)."""

    base_model_prefix = "roberta"


# XLM-RoBERTa is architecturally RoBERTa; the config's model_type tells them apart.
XLMRobertaModel = RobertaModel
