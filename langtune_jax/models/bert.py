"""BERT-family encoders in Flax NNX: BERT / mBERT and RoBERTa / XLM-RoBERTa.

Attribute paths mirror the Hugging Face PyTorch state-dict keys (see ``hub.py``), so
``bert.encoder.layer.0.attention.self.query.weight`` is ``model.bert.encoder.layer[0]
.attention.self.query.kernel`` here (transposed to ``[in, out]``). The two families share every
layer; they differ only in

* position ids: BERT counts ``0..T-1``; RoBERTa counts non-pad tokens starting at
  ``pad_token_id + 1`` (pads keep ``pad_token_id``), as fairseq did;
* the attribute holding the encoder (``bert`` vs ``roberta``) and the heads: BERT classifies the
  tanh-pooled ``[CLS]``; RoBERTa has its own ``classifier.dense``/``classifier.out_proj`` head over
  ``<s>`` and no pooler in task models; the MLM heads are ``cls.predictions.*`` vs ``lm_head.*``.

The MLM decoder is tied to the word embeddings (as every released checkpoint is); only its bias is
a parameter (``cls.predictions.bias`` / ``lm_head.bias``).

Numerics: matmuls run in the compute ``dtype`` (e.g. bfloat16) over ``param_dtype`` weights;
attention softmax and LayerNorm statistics run in float32.

References:
  Devlin et al., 2019, "BERT" (arXiv:1810.04805); Liu et al., 2019, "RoBERTa" (arXiv:1907.11692);
  Conneau et al., 2020, "XLM-R" (arXiv:1911.02116).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.models.common import EMBED, HEADS, MLP, VOCAB, ModelOutput, with_axes

Array = jax.Array

#: Tasks ``from_hf_config`` builds (``None`` is the bare encoder).
TASKS = (None, "sequence-classification", "token-classification", "masked-lm")
#: ``model_type`` values this module implements.
MODEL_TYPES = ("bert", "roberta", "xlm-roberta")

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

# Keys of config.json that we model explicitly; everything else is kept verbatim for ``to_hf``.
_HF_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "initializer_range",
    "tie_word_embeddings",
)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT-family encoder (the fields of HF ``BertConfig``/``XLMRobertaConfig``).

    Frozen and hashable: it is static metadata of the NNX graph. Defaults are mBERT-base.

    Attributes:
      model_type: ``"bert"``, ``"roberta"`` or ``"xlm-roberta"``; RoBERTa types offset positions.
      labels: class names in id order (HF ``id2label``); its length is the number of labels.
      classifier_dropout: dropout before task heads; ``None`` means ``hidden_dropout_prob``.
      extra_json: the other config.json keys (bos/eos ids, ...) as sorted JSON, kept for round trips.
    """

    model_type: Literal["bert", "roberta", "xlm-roberta"] = "bert"
    vocab_size: int = 119547
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    classifier_dropout: float | None = None
    labels: tuple[str, ...] = ("LABEL_0", "LABEL_1")
    extra_json: str = "{}"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r}: expected one of {MODEL_TYPES}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
            )
        for name in ("vocab_size", "num_hidden_layers", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")

    @property
    def is_roberta(self) -> bool:
        return self.model_type in ("roberta", "xlm-roberta")

    @property
    def head_dropout(self) -> float:
        """Dropout rate before task heads (HF: ``classifier_dropout`` or the hidden rate)."""
        if self.classifier_dropout is not None:
            return self.classifier_dropout
        return self.hidden_dropout_prob

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def max_length(self) -> int:
        """Longest input the position table allows (RoBERTa spends ``pad_token_id + 1`` slots)."""
        if self.is_roberta:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf: dict[str, Any], num_labels: int | None = None) -> BertConfig:
        """Build from a config.json dict; ``num_labels`` (if given) overrides its label set."""
        kwargs = {k: hf[k] for k in _HF_FIELDS if k in hf and hf[k] is not None}
        kwargs["model_type"] = hf.get("model_type", "bert")
        kwargs["classifier_dropout"] = hf.get("classifier_dropout")
        id2label = hf.get("id2label")
        if num_labels is not None:
            labels = tuple(f"LABEL_{i}" for i in range(num_labels))
            if id2label and len(id2label) == num_labels:
                labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        elif id2label:
            labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        else:
            labels = tuple(f"LABEL_{i}" for i in range(int(hf.get("num_labels", 2))))
        known = set(_HF_FIELDS) | {"model_type", "classifier_dropout", "id2label", "label2id"}
        known |= {"num_labels", "architectures", "dtype", "torch_dtype", "transformers_version"}
        extra = {k: v for k, v in hf.items() if k not in known}
        return cls(labels=labels, extra_json=json.dumps(extra, sort_keys=True), **kwargs)

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict transformers reads (without ``architectures``)."""
        out = dict(json.loads(self.extra_json))
        out.update({k: getattr(self, k) for k in _HF_FIELDS})
        out["model_type"] = self.model_type
        out["classifier_dropout"] = self.classifier_dropout
        out["id2label"] = {str(i): name for i, name in enumerate(self.labels)}
        out["label2id"] = {name: i for i, name in enumerate(self.labels)}
        return out


def _normal(cfg: BertConfig, *names: str | None):
    return with_axes(nnx.initializers.normal(cfg.initializer_range), *names)


def _linear(cfg, d_in, d_out, axes, *, dtype, param_dtype, rngs) -> nnx.Linear:
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


def _layer_norm(cfg, *, param_dtype, rngs) -> nnx.LayerNorm:
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


class _Block(nnx.Module):
    """Base for the sub-layers: remembers the compute dtype."""

    def _init(self, cfg, dtype, param_dtype):
        self.dtype = dtype if dtype is not None else param_dtype

    def _norm(self, norm: nnx.LayerNorm, x: Array) -> Array:
        return norm(x).astype(self.dtype)


class BertEmbeddings(_Block):
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
        self.LayerNorm = _layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

    def position_ids(self, input_ids: Array) -> Array:
        """HF's default position ids for ``input_ids`` ``[B, T]``."""
        cfg = self.config
        if cfg.is_roberta:
            # fairseq make_positions: non-pad tokens count from pad+1, pads stay at pad.
            mask = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(mask, axis=1) * mask + cfg.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)

    def __call__(self, input_ids, token_type_ids=None, position_ids=None) -> Array:
        cfg = self.config
        if input_ids.shape[1] > cfg.max_length:
            raise ValueError(
                f"input length {input_ids.shape[1]} exceeds this {cfg.model_type} model's position "
                f"table (max {cfg.max_length} tokens, max_position_embeddings="
                f"{cfg.max_position_embeddings}); truncate inputs to {cfg.max_length} tokens"
            )
        if position_ids is None:
            position_ids = self.position_ids(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.word_embeddings(input_ids)  # [B, T, D]
        x = x + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self._norm(self.LayerNorm, x))


class BertSelfAttention(_Block):
    """Multi-head self-attention: ``query``/``key``/``value`` projections, masked softmax."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = d // cfg.num_attention_heads
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = _linear(cfg, d, d, (EMBED, HEADS), **kw)
        self.key = _linear(cfg, d, d, (EMBED, HEADS), **kw)
        self.value = _linear(cfg, d, d, (EMBED, HEADS), **kw)
        self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)

    def __call__(self, x: Array, mask_bias: Array | None) -> Array:
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.query(x).reshape(shape)  # [B, T, N, H]
        k = self.key(x).reshape(shape)
        v = self.value(x).reshape(shape)
        scores = jnp.einsum("bqnh,bknh->bnqk", q, k).astype(jnp.float32)  # [B, N, T, T]
        scores = scores * (self.head_dim**-0.5)
        if mask_bias is not None:
            scores = scores + mask_bias  # [B, 1, 1, T] float32
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        probs = self.dropout(probs)
        out = jnp.einsum("bnqk,bknh->bqnh", probs, v)  # [B, T, N, H]
        return out.reshape(b, t, -1)


class BertSelfOutput(_Block):
    """Attention output projection + dropout + residual LayerNorm."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        d = cfg.hidden_size
        self.dense = _linear(
            cfg, d, d, (HEADS, EMBED), dtype=self.dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.LayerNorm = _layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

    def __call__(self, h: Array, residual: Array) -> Array:
        return self._norm(self.LayerNorm, self.dropout(self.dense(h)) + residual)


class BertAttention(nnx.Module):
    """``self`` (the attention proper; HF's attribute name) and ``output``."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self = BertSelfAttention(cfg, **kw)
        self.output = BertSelfOutput(cfg, **kw)

    def __call__(self, x: Array, mask_bias: Array | None) -> Array:
        return self.output(self.self(x, mask_bias), x)


class BertIntermediate(_Block):
    """Feed-forward up-projection and activation."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        self.dense = _linear(
            cfg, cfg.hidden_size, cfg.intermediate_size, (EMBED, MLP),
            dtype=self.dtype, param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: Array) -> Array:
        return self.act(self.dense(x))  # [B, T, F]


class BertOutput(_Block):
    """Feed-forward down-projection + dropout + residual LayerNorm."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        self.dense = _linear(
            cfg, cfg.intermediate_size, cfg.hidden_size, (MLP, EMBED),
            dtype=self.dtype, param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip
        self.LayerNorm = _layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
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

    def __call__(self, x: Array, mask_bias: Array | None) -> Array:
        with jax.named_scope("attention"):
            x = self.attention(x, mask_bias)
        with jax.named_scope("mlp"):
            return self.output(self.intermediate(x), x)


class BertEncoder(nnx.Module):
    """The stack of ``layer``s."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer = nnx.List([BertLayer(cfg, **kw) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask_bias, output_hidden_states=False):
        hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layer):
            with jax.named_scope(f"layer_{i}"):
                x = layer(x, mask_bias)  # [B, T, D]
            if hidden is not None:
                hidden.append(x)
        return x, (tuple(hidden) if hidden is not None else None)


class BertPooler(_Block):
    """``tanh(dense(h[:, 0]))``: the [CLS] summary BERT classifies."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        d = cfg.hidden_size
        self.dense = _linear(
            cfg, d, d, (EMBED, None), dtype=self.dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, h: Array) -> Array:
        return jnp.tanh(self.dense(h[:, 0]))  # [B, D]


class BertModel(nnx.Module):
    """The bare encoder: ``embeddings``, ``encoder`` and (optionally) ``pooler``.

    Call with ``input_ids`` ``[B, T]`` int; ``attention_mask`` ``[B, T]`` 1 = token, 0 = pad;
    ``token_type_ids`` ``[B, T]`` (segment ids, default 0); ``position_ids`` ``[B, T]`` (default as
    HF). Returns ``ModelOutput(last_hidden_state=[B, T, D], hidden_states=...)``; the pooled
    ``[B, D]`` output is ``.logits`` when the pooler exists, so callers get it without a second pass.
    """

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
        cache: Any = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        if cache is not None:
            raise ValueError("BERT-family encoders take no KV cache (cache must be None)")
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # [B, T, D]
        mask_bias = None
        if attention_mask is not None:
            # Additive bias, float32: 0 where attended, most negative float where padded.
            keep = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, T]
            mask_bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
        x, hidden = self.encoder(x, mask_bias, output_hidden_states)
        pooled = self.pooler(x) if self.pooler is not None else None
        return ModelOutput(logits=pooled, last_hidden_state=x, hidden_states=hidden)


def _vocab_bias(cfg: BertConfig, param_dtype, rngs: nnx.Rngs) -> nnx.Param:
    """The MLM output bias ``[V]`` (zeros, as HF initialises it)."""
    init = with_axes(nnx.initializers.zeros_init(), VOCAB)
    return nnx.Param(init(rngs.params(), (cfg.vocab_size,), param_dtype))


def _check_tied(cfg: BertConfig):
    if not cfg.tie_word_embeddings:
        raise ValueError(
            "masked-lm with tie_word_embeddings=False is not supported: the MLM decoder is tied to "
            "bert/roberta.embeddings.word_embeddings (set tie_word_embeddings=true in config.json)"
        )


class _EncoderTask(nnx.Module):
    """A task model: the encoder under ``base_model_prefix`` plus a head (``_head``).

    Calling convention as ``BertModel``; ``.logits`` is the head's output.
    """

    base_model_prefix = "bert"
    head_modules: tuple[str, ...] = ()
    _arch = ""

    def __init__(self, cfg: BertConfig, add_pooling_layer: bool, kw: dict[str, Any]):
        self.config = cfg
        encoder = BertModel(cfg, add_pooling_layer=add_pooling_layer, **kw)
        setattr(self, self.base_model_prefix, encoder)

    @property
    def encoder_model(self) -> BertModel:
        """The bare encoder (``self.bert`` or ``self.roberta``)."""
        return getattr(self, self.base_model_prefix)

    @property
    def init_if_missing(self) -> tuple[str, ...]:
        """Module paths freshly initialised when a checkpoint lacks them (heads, pooler)."""
        return self.head_modules + (f"{self.base_model_prefix}.pooler",)

    @property
    def hf_architecture(self) -> str:
        family = {"bert": "Bert", "roberta": "Roberta"}.get(self.config.model_type, "XLMRoberta")
        return family + self._arch

    def _head(self, out: ModelOutput) -> Array:
        raise NotImplementedError

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        *,
        cache: Any = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        out = self.encoder_model(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            cache=cache,
            output_hidden_states=output_hidden_states,
        )
        out.logits = self._head(out)
        return out

    def _tied_logits(self, h: Array, bias: nnx.Param) -> Array:
        """``h @ word_embeddings.T + bias``: the MLM decoder shares the input embedding."""
        logits = self.encoder_model.embeddings.word_embeddings.attend(h)  # [B, T, V]
        return logits + bias[...].astype(logits.dtype)


class BertForSequenceClassification(_EncoderTask):
    """BERT + dropout + ``classifier`` over the pooled [CLS]; ``.logits`` is ``[B, num_labels]``."""

    head_modules = ("classifier",)
    _arch = "ForSequenceClassification"

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(cfg, True, kw)
        self.dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
        self.classifier = _linear(cfg, cfg.hidden_size, cfg.num_labels, (EMBED, None), **kw)

    def _head(self, out: ModelOutput) -> Array:
        return self.classifier(self.dropout(out.logits))  # pooled [B, D] -> [B, C]


class BertForTokenClassification(_EncoderTask):
    """BERT (no pooler) + dropout + per-token ``classifier``; ``.logits`` is ``[B, T, C]``."""

    head_modules = ("classifier",)
    _arch = "ForTokenClassification"

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(cfg, False, kw)
        self.dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
        self.classifier = _linear(cfg, cfg.hidden_size, cfg.num_labels, (EMBED, None), **kw)

    def _head(self, out: ModelOutput) -> Array:
        return self.classifier(self.dropout(out.last_hidden_state))  # [B, T, C]


class BertPredictionHeadTransform(_Block):
    """``LayerNorm(act(dense(h)))`` before the tied vocabulary projection."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense = _linear(cfg, cfg.hidden_size, cfg.hidden_size, (EMBED, None), **kw)
        self.LayerNorm = _layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def __call__(self, h: Array) -> Array:
        return self._norm(self.LayerNorm, self.act(self.dense(h)))


class BertLMPredictionHead(nnx.Module):
    """``transform`` + the output-only ``bias`` (the decoder weight is the word embedding)."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.transform = BertPredictionHeadTransform(cfg, **kw)
        self.bias = _vocab_bias(cfg, param_dtype, rngs)


class BertOnlyMLMHead(nnx.Module):
    """HF's ``cls`` wrapper around ``predictions``."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.predictions = BertLMPredictionHead(cfg, **kw)


class BertForMaskedLM(_EncoderTask):
    """BERT (no pooler) + ``cls.predictions``; ``.logits`` is ``[B, T, vocab_size]``."""

    head_modules = ("cls",)
    _arch = "ForMaskedLM"

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        _check_tied(cfg)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(cfg, False, kw)
        self.cls = BertOnlyMLMHead(cfg, **kw)

    def _head(self, out: ModelOutput) -> Array:
        pred = self.cls.predictions
        return self._tied_logits(pred.transform(out.last_hidden_state), pred.bias)  # [B, T, V]


class RobertaClassificationHead(_Block):
    """``out_proj(dropout(tanh(dense(dropout(h[:, 0])))))`` over the ``<s>`` token."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        d = cfg.hidden_size
        self.dense = _linear(cfg, d, d, (EMBED, None), **kw)
        self.dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
        self.out_proj = _linear(cfg, d, cfg.num_labels, (None, None), **kw)

    def __call__(self, h: Array) -> Array:
        x = jnp.tanh(self.dense(self.dropout(h[:, 0])))  # [B, D]
        return self.out_proj(self.dropout(x))  # [B, C]


class RobertaForSequenceClassification(_EncoderTask):
    """RoBERTa/XLM-R (no pooler) + ``classifier`` head; ``.logits`` is ``[B, num_labels]``."""

    base_model_prefix = "roberta"
    head_modules = ("classifier",)
    _arch = "ForSequenceClassification"

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(cfg, False, kw)
        self.classifier = RobertaClassificationHead(cfg, **kw)

    def _head(self, out: ModelOutput) -> Array:
        return self.classifier(out.last_hidden_state)  # [B, C]


class RobertaForTokenClassification(BertForTokenClassification):
    """RoBERTa/XLM-R (no pooler) + dropout + per-token ``classifier``."""

    base_model_prefix = "roberta"


class RobertaLMHead(_Block):
    """``layer_norm(gelu(dense(h)))`` + tied decoder + ``bias`` (always exact gelu, as HF)."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense = _linear(cfg, cfg.hidden_size, cfg.hidden_size, (EMBED, None), **kw)
        self.layer_norm = _layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
        self.bias = _vocab_bias(cfg, param_dtype, rngs)

    def transform(self, h: Array) -> Array:
        return self._norm(self.layer_norm, jax.nn.gelu(self.dense(h), approximate=False))


class RobertaForMaskedLM(_EncoderTask):
    """RoBERTa/XLM-R (no pooler) + ``lm_head``; ``.logits`` is ``[B, T, vocab_size]``."""

    base_model_prefix = "roberta"
    head_modules = ("lm_head",)
    _arch = "ForMaskedLM"

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        _check_tied(cfg)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(cfg, False, kw)
        self.lm_head = RobertaLMHead(cfg, **kw)

    def _head(self, out: ModelOutput) -> Array:
        h = self.lm_head.transform(out.last_hidden_state)  # [B, T, D]
        return self._tied_logits(h, self.lm_head.bias)  # [B, T, V]


class RobertaModel(BertModel):
    """The bare RoBERTa/XLM-R encoder (same layers as BERT; positions from the pad offset)."""

    base_model_prefix = "roberta"


# XLM-RoBERTa is architecturally RoBERTa; the config's model_type tells them apart.
XLMRobertaModel = RobertaModel
XLMRobertaForSequenceClassification = RobertaForSequenceClassification
XLMRobertaForTokenClassification = RobertaForTokenClassification
XLMRobertaForMaskedLM = RobertaForMaskedLM

_CLASSES = {
    False: {
        None: BertModel,
        "sequence-classification": BertForSequenceClassification,
        "token-classification": BertForTokenClassification,
        "masked-lm": BertForMaskedLM,
    },
    True: {
        None: RobertaModel,
        "sequence-classification": RobertaForSequenceClassification,
        "token-classification": RobertaForTokenClassification,
        "masked-lm": RobertaForMaskedLM,
    },
}


def from_hf_config(
    hf_config: dict[str, Any],
    task: str | None,
    *,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
    num_labels: int | None = None,
) -> nnx.Module:
    """Build a randomly initialised model for ``task`` from a config.json dict.

    Args:
      hf_config: the parsed config.json (``model_type`` one of ``MODEL_TYPES``).
      task: one of ``TASKS`` (``None``: the bare encoder with pooler).
      dtype: compute dtype (``None``: ``param_dtype``); param_dtype: storage dtype of weights.
      rngs: ``nnx.Rngs`` with ``params`` (and ``dropout``) streams.
      num_labels: number of classes of a classification head (default: from the config).
    """
    if task not in TASKS:
        raise ValueError(
            f"task={task!r} is not supported by BERT-family models; use one of {TASKS}"
        )
    cfg = BertConfig.from_hf(hf_config, num_labels=num_labels)
    cls = _CLASSES[cfg.is_roberta][task]
    return cls(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
