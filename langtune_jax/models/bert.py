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

Layout (lowest first): ``bert_config`` (:class:`BertConfig`), ``bert_encoder`` (the layers and
:class:`BertModel` / ``RobertaModel``), ``bert_heads`` (task models). This module builds a model
for a task with :func:`from_hf_config` and re-exports the public names of the three.

References:
  Devlin et al., 2019, "BERT" (arXiv:1810.04805); Liu et al., 2019, "RoBERTa" (arXiv:1907.11692);
  Conneau et al., 2020, "XLM-R" (arXiv:1911.02116).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from langtune_jax.models.bert_config import MODEL_TYPES, BertConfig  # noqa: F401
from langtune_jax.models.bert_encoder import (  # noqa: F401
    BertAttention,
    BertEmbeddings,
    BertEncoder,
    BertIntermediate,
    BertLayer,
    BertModel,
    BertOutput,
    BertPooler,
    BertSelfAttention,
    BertSelfOutput,
    RobertaModel,
    XLMRobertaModel,
)
from langtune_jax.models.bert_heads import (  # noqa: F401
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLMPredictionHead,
    BertOnlyMLMHead,
    BertPredictionHeadTransform,
    RobertaClassificationHead,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaLMHead,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
)

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
