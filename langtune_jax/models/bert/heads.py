"""BERT-family task models: sequence / token classification and masked-LM heads.

Each task model holds the encoder under ``base_model_prefix`` (``bert`` or ``roberta``) and a head
named as in Hugging Face checkpoints; the RoBERTa classes differ from BERT's only in that prefix and
in their heads, and the XLM-RoBERTa names are aliases of the RoBERTa classes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.models.bert.config import ACTIVATIONS, BertConfig
from langtune_jax.models.bert.modeling import (
    BertModel,
    Block,
    RobertaModel,
    first_tokens,
    layer_norm,
    linear,
)
from langtune_jax.models.common import EMBED, VOCAB, ModelOutput, with_axes

Array = jax.Array


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

    #: the train step passes packed ``segment_ids`` / ``segment_starts`` as such.
    takes_segments = True

    def _head(self, out: ModelOutput, segment_starts: Array | None) -> Array:
        raise NotImplementedError

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
        out = self.encoder_model(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            segment_ids=segment_ids,
            segment_starts=segment_starts,
            cache=cache,
            output_hidden_states=output_hidden_states,
        )
        out.logits = self._head(out, segment_starts)
        return out

    def _tied_logits(self, h: Array, bias: nnx.Param) -> Array:
        """``h @ word_embeddings.T + bias``: the MLM decoder shares the input embedding.

        An embeddings wrapper that transforms its output (MAD-X's invertible adapters,
        ``peft.adapters.InvertibleEmbeddings``) provides ``invert_output``; the decoder reads
        ``h`` through that inverse, as in MAD-X.
        """
        embeddings = self.encoder_model.embeddings
        invert = getattr(embeddings, "invert_output", None)
        if invert is not None:
            h = invert(h)
        logits = embeddings.word_embeddings.attend(h)  # [B, T, V]
        return logits + bias[...].astype(logits.dtype)


class BertForSequenceClassification(_EncoderTask):
    """BERT + dropout + ``classifier`` over the pooled [CLS]; ``.logits`` is ``[B, num_labels]``
    (packed rows: ``[B, S, num_labels]``, one row per segment)."""

    head_modules = ("classifier",)
    _arch = "ForSequenceClassification"

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(cfg, True, kw)
        self.dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
        self.classifier = linear(cfg, cfg.hidden_size, cfg.num_labels, (EMBED, None), **kw)

    def _head(self, out: ModelOutput, segment_starts: Array | None) -> Array:
        return self.classifier(self.dropout(out.logits))  # pooled [B, (S,) D] -> [B, (S,) C]


class BertForTokenClassification(_EncoderTask):
    """BERT (no pooler) + dropout + per-token ``classifier``; ``.logits`` is ``[B, T, C]``."""

    head_modules = ("classifier",)
    _arch = "ForTokenClassification"

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(cfg, False, kw)
        self.dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
        self.classifier = linear(cfg, cfg.hidden_size, cfg.num_labels, (EMBED, None), **kw)

    def _head(self, out: ModelOutput, segment_starts: Array | None) -> Array:
        return self.classifier(self.dropout(out.last_hidden_state))  # [B, T, C]


class BertPredictionHeadTransform(Block):
    """``LayerNorm(act(dense(h)))`` before the tied vocabulary projection."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense = linear(cfg, cfg.hidden_size, cfg.hidden_size, (EMBED, None), **kw)
        self.LayerNorm = layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
        self.act = ACTIVATIONS[cfg.hidden_act]

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

    def _head(self, out: ModelOutput, segment_starts: Array | None) -> Array:
        pred = self.cls.predictions
        return self._tied_logits(pred.transform(out.last_hidden_state), pred.bias)  # [B, T, V]


class RobertaClassificationHead(Block):
    """``out_proj(dropout(tanh(dense(dropout(first)))))`` over the ``<s>`` token states
    (``[B, D]``, or ``[B, S, D]`` per packed segment)."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        d = cfg.hidden_size
        self.dense = linear(cfg, d, d, (EMBED, None), **kw)
        self.dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
        self.out_proj = linear(cfg, d, cfg.num_labels, (None, None), **kw)

    def __call__(self, first: Array) -> Array:
        x = jnp.tanh(self.dense(self.dropout(first)))  # [B, (S,) D]
        return self.out_proj(self.dropout(x))  # [B, (S,) C]


class RobertaForSequenceClassification(_EncoderTask):
    """RoBERTa/XLM-R (no pooler) + ``classifier`` head; ``.logits`` is ``[B, num_labels]``."""

    base_model_prefix = "roberta"
    head_modules = ("classifier",)
    _arch = "ForSequenceClassification"

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(cfg, False, kw)
        self.classifier = RobertaClassificationHead(cfg, **kw)

    def _head(self, out: ModelOutput, segment_starts: Array | None) -> Array:
        return self.classifier(first_tokens(out.last_hidden_state, segment_starts))  # [B, (S,) C]


class RobertaForTokenClassification(BertForTokenClassification):
    """RoBERTa/XLM-R (no pooler) + dropout + per-token ``classifier``."""

    base_model_prefix = "roberta"


class RobertaLMHead(Block):
    """``layer_norm(gelu(dense(h)))`` + tied decoder + ``bias`` (always exact gelu, as HF)."""

    def __init__(self, cfg: BertConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self._init(cfg, dtype, param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense = linear(cfg, cfg.hidden_size, cfg.hidden_size, (EMBED, None), **kw)
        self.layer_norm = layer_norm(cfg, param_dtype=param_dtype, rngs=rngs)
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

    def _head(self, out: ModelOutput, segment_starts: Array | None) -> Array:
        h = self.lm_head.transform(out.last_hidden_state)  # [B, T, D]
        return self._tied_logits(h, self.lm_head.bias)  # [B, T, V]


# XLM-RoBERTa is architecturally RoBERTa; the config's model_type tells them apart.
XLMRobertaForSequenceClassification = RobertaForSequenceClassification
XLMRobertaForTokenClassification = RobertaForTokenClassification
XLMRobertaForMaskedLM = RobertaForMaskedLM

#: Tasks ``from_hf_config`` builds (``None`` is the bare encoder).
TASKS = (None, "sequence-classification", "token-classification", "masked-lm")

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
