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

Package layout (lowest first): ``config`` (:class:`BertConfig`), ``modeling`` (the layers and
:class:`BertModel` / ``RobertaModel``), ``heads`` (the task models and :func:`from_hf_config`, which
builds the model for a task). This ``__init__`` is the package's public surface.

References:
  Devlin et al., 2019, "BERT" (arXiv:1810.04805); Liu et al., 2019, "RoBERTa" (arXiv:1907.11692);
  Conneau et al., 2020, "XLM-R" (arXiv:1911.02116).
"""

from langtune_jax.models.bert.config import (
    MODEL_TYPES,
    BertConfig,
)
from langtune_jax.models.bert.heads import (
    TASKS,
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
    from_hf_config,
)
from langtune_jax.models.bert.modeling import (
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

__all__ = [
    "BertAttention",
    "BertConfig",
    "BertEmbeddings",
    "BertEncoder",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertIntermediate",
    "BertLMPredictionHead",
    "BertLayer",
    "BertModel",
    "BertOnlyMLMHead",
    "BertOutput",
    "BertPooler",
    "BertPredictionHeadTransform",
    "BertSelfAttention",
    "BertSelfOutput",
    "MODEL_TYPES",
    "RobertaClassificationHead",
    "RobertaForMaskedLM",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "RobertaLMHead",
    "RobertaModel",
    "TASKS",
    "XLMRobertaForMaskedLM",
    "XLMRobertaForSequenceClassification",
    "XLMRobertaForTokenClassification",
    "XLMRobertaModel",
    "from_hf_config",
]
