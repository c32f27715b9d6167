"""Llama-family task models over :class:`LlamaModel`: causal LM, sequence / token classification.

Each holds the decoder as ``model`` (checkpoint keys ``model.*``) and a head named as in Hugging
Face checkpoints (``lm_head``, absent when tied, or ``score``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.models.common import EMBED, VOCAB, ModelOutput
from langtune_jax.models.llama.config import ARCH, LlamaConfig
from langtune_jax.models.llama.modeling import LlamaModel, linear

Array = jax.Array


class _DecoderTask(nnx.Module):
    """A task model: the decoder as ``model`` plus a head, built by ``_init_head``, read by ``_head``.

    Calling convention as ``LlamaModel``; ``.logits`` is the head's output.
    """

    head_modules: tuple[str, ...] = ()
    base_model_prefix = "model"  # checkpoint keys of the bare decoder start with "model."
    _arch = ""  # the transformers class name after the family's, e.g. "ForCausalLM"

    def __init__(self, cfg: LlamaConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.model = LlamaModel(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self._init_head(cfg, dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs))

    @property
    def hf_architecture(self) -> str:
        """The ``transformers`` class name written to ``config.json``'s ``architectures``."""
        return ARCH[self.config.model_type] + self._arch

    def _init_head(self, cfg: LlamaConfig, kw: dict[str, Any]) -> None:
        raise NotImplementedError

    def _head(self, hidden: Array, attention_mask: Array | None) -> Array:
        """``[B, T, D]`` final hidden states -> the task's logits."""
        raise NotImplementedError

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 *, cache=None, output_hidden_states=False) -> ModelOutput:  # fmt: skip
        out = self.model(
            input_ids,
            attention_mask,
            position_ids=position_ids,
            cache=cache,
            output_hidden_states=output_hidden_states,
        )
        return dataclasses.replace(out, logits=self._head(out.last_hidden_state, attention_mask))


class LlamaForCausalLM(_DecoderTask):
    """Decoder + LM head (``lm_head``, or the transposed ``embed_tokens`` when tied).

    ``logits`` are ``[B, T, vocab]`` in the compute dtype. ``head_modules`` is empty: the LM head
    is pretrained, never a newly initialised task head.
    """

    _arch = "ForCausalLM"

    def _init_head(self, cfg: LlamaConfig, kw: dict[str, Any]) -> None:
        if not cfg.tie_word_embeddings:
            self.lm_head = linear(cfg, cfg.hidden_size, cfg.vocab_size, (EMBED, VOCAB), False, **kw)

    def _head(self, hidden: Array, attention_mask: Array | None) -> Array:
        return self.lm_logits(hidden)

    def lm_logits(self, hidden: Array) -> Array:
        """``[..., D]`` final hidden states -> ``[..., vocab]`` logits (tied or untied head)."""
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.attend(hidden)
        return self.lm_head(hidden)


class LlamaForSequenceClassification(_DecoderTask):
    """Decoder + ``score`` (no bias) read at the last non-padding token of each row.

    ``logits`` are ``[B, num_labels]``. The last token is the rightmost non-zero position of
    ``attention_mask`` (``transformers`` looks for the rightmost non-``pad_token_id`` id, the same
    position whenever the mask marks the pad tokens); without a mask it is the last position.
    """

    head_modules = ("score",)
    _arch = "ForSequenceClassification"

    def _init_head(self, cfg: LlamaConfig, kw: dict[str, Any]) -> None:
        self.score = linear(cfg, cfg.hidden_size, cfg.num_labels, (EMBED, None), False, **kw)

    def _head(self, hidden: Array, attention_mask: Array | None) -> Array:
        b, t = hidden.shape[:2]
        if attention_mask is None:
            last = jnp.full((b,), t - 1)
        else:
            last = jnp.argmax(jnp.where(attention_mask != 0, jnp.arange(t), -1), axis=1)
        return self.score(hidden[jnp.arange(b), last])  # pooled [B, D] -> [B, num_labels]


class LlamaForTokenClassification(_DecoderTask):
    """Decoder + dropout + ``score`` (with bias): ``logits [B, T, num_labels]`` for every token.

    Mirrors ``transformers``' ``LlamaForTokenClassification``; the dropout rate is
    ``classifier_dropout`` and is active only after ``model.train()``.
    """

    head_modules = ("score",)
    _arch = "ForTokenClassification"

    def _init_head(self, cfg: LlamaConfig, kw: dict[str, Any]) -> None:
        self.dropout = nnx.Dropout(cfg.classifier_dropout, rngs=kw["rngs"])
        self.score = linear(cfg, cfg.hidden_size, cfg.num_labels, (EMBED, None), True, **kw)

    def _head(self, hidden: Array, attention_mask: Array | None) -> Array:
        return self.score(self.dropout(hidden))  # [B, T, num_labels]


TASKS = (None, "causal-lm", "sequence-classification", "token-classification")


def from_hf_config(
    hf_config: dict[str, Any],
    task: str | None,
    *,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
    num_labels: int | None = None,
) -> nnx.Module:
    """Builds the randomly initialised model for a Hugging Face ``config.json`` dict and ``task``.

    ``task``: ``None`` (bare :class:`LlamaModel`), ``"causal-lm"``, ``"sequence-classification"``
    or ``"token-classification"`` (``num_labels`` overrides the config's ``id2label``).
    ``langtune_jax.models.hub`` loads the weights.
    """
    if task not in TASKS:
        supported = ", ".join(repr(t) for t in TASKS)
        raise ValueError(f"task={task!r} is not available for Llama-family models; use {supported}")
    cfg = LlamaConfig.from_hf(hf_config)
    if task in ("sequence-classification", "token-classification") and num_labels is not None:
        if cfg.num_labels != num_labels or cfg.id2label is None:
            labels = {str(i): f"LABEL_{i}" for i in range(num_labels)}
            cfg = dataclasses.replace(cfg, id2label=labels)
    cls = {
        None: LlamaModel,
        "causal-lm": LlamaForCausalLM,
        "sequence-classification": LlamaForSequenceClassification,
        "token-classification": LlamaForTokenClassification,
    }[task]
    return cls(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
