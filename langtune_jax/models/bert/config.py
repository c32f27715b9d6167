"""BERT-family configuration: :class:`BertConfig`, the config.json fields it models, activations.

The lowest module of the BERT family (it imports nothing else from it); the family and how BERT and
RoBERTa / XLM-R differ are described in :mod:`langtune_jax.models.bert`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import jax
import jax.numpy as jnp

#: ``model_type`` values this module implements.
MODEL_TYPES = ("bert", "roberta", "xlm-roberta")

ACTIVATIONS = {
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
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}"
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
