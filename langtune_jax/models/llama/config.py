"""Llama-family configuration: :class:`LlamaConfig`, read from and written to config.json.

The lowest module of the Llama family (it imports nothing else from it); the variants and the
switches that tell them apart are described in :mod:`langtune_jax.models.llama`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ARCH = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
LayerType = Literal["full_attention", "sliding_attention"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama-family decoder (defaults: Llama-2-7B).

    Build it from a Hugging Face ``config.json`` with :meth:`from_hf`; :meth:`to_hf` writes it back.
    ``qkv_bias``/``o_bias`` are Llama's ``attention_bias`` (both) or Qwen2's fixed q/k/v bias;
    ``qk_norm`` is Qwen3's per-head RMSNorm. ``layer_types`` says which layers use
    ``sliding_window`` (``None``: all full attention).
    """

    model_type: Literal["llama", "mistral", "qwen2", "qwen3"] = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 128
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: Literal["default", "linear", "llama3"] = "default"
    # Rope scaling (``linear``: factor; ``llama3``: all four; ignored for ``default``).
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    layer_types: list[LayerType] | None = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: list[int] | None = None
    # Classification heads only: label names by class index (``num_labels`` = its length) and the
    # dropout before the token-classification ``score`` (transformers' default is 0.1).
    id2label: dict[str, str] | None = None
    classifier_dropout: float = 0.1

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r}: supported are {MODEL_TYPES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads} (grouped-query attention)"
            )
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        if self.rope_type not in ("default", "linear", "llama3"):
            raise ValueError(
                f"rope_type={self.rope_type!r} is not supported; use default, linear or llama3"
            )
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(
                    f"layer_types has {len(self.layer_types)} entries, expected "
                    f"num_hidden_layers={self.num_hidden_layers}"
                )
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise ValueError("layer_types has sliding_attention layers but sliding_window=None")

    def __hash__(self) -> int:
        # Lists and dicts make the generated hash fail; NNX needs a hashable static config for jit.
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True))

    @property
    def num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 2

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer`` in tokens, or ``None`` for full causal attention."""
        if self.layer_types is None or self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    @classmethod
    def from_hf(cls, hf_config: dict[str, Any]) -> LlamaConfig:
        """Reads a Hugging Face config dict (old ``rope_scaling`` or v5 ``rope_parameters``)."""
        model_type = _model_type(hf_config)
        hf = _with_defaults(model_type, hf_config)
        rope = _rope_fields(hf)
        window = _window_fields(model_type, hf)
        heads = hf["num_attention_heads"]
        attention_bias = bool(hf.get("attention_bias", False))
        eos = hf.get("eos_token_id")
        dropout = next(
            (hf[k] for k in ("classifier_dropout", "hidden_dropout") if hf.get(k) is not None), 0.1
        )
        return cls(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            max_position_embeddings=hf["max_position_embeddings"],
            rms_norm_eps=hf["rms_norm_eps"],
            **rope,
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            **window,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=None if eos is None else list(eos) if isinstance(eos, list) else [eos],
            id2label={str(k): str(v) for k, v in hf["id2label"].items()}
            if hf.get("id2label")
            else None,
            classifier_dropout=float(dropout),
        )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` dict that ``transformers`` loads into the same model."""
        rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type in ("linear", "llama3"):
            rope["factor"] = self.rope_factor
        if self.rope_type == "llama3":
            rope["low_freq_factor"] = self.rope_low_freq_factor
            rope["high_freq_factor"] = self.rope_high_freq_factor
            rope["original_max_position_embeddings"] = self.rope_original_max_position_embeddings
        eos = self.eos_token_id
        out: dict[str, Any] = {
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos[0] if eos is not None and len(eos) == 1 else eos,
        }
        if self.model_type in ("llama", "qwen3"):
            out["attention_bias"] = self.qkv_bias
        if self.model_type == "llama":
            out["mlp_bias"] = self.mlp_bias
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        if self.model_type in ("qwen2", "qwen3"):
            out["use_sliding_window"] = self.sliding_window is not None
            out["sliding_window"] = self.sliding_window
            out["layer_types"] = list(
                self.layer_types or ["full_attention"] * self.num_hidden_layers
            )
        out["classifier_dropout"] = self.classifier_dropout
        if self.id2label:
            out["id2label"] = dict(self.id2label)
            out["label2id"] = {v: int(k) for k, v in self.id2label.items()}
        return out


def _model_type(hf_config: dict[str, Any]) -> str:
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"config.json model_type={model_type!r} is not a Llama-family decoder; "
            f"supported: {', '.join(MODEL_TYPES)}"
        )
    return model_type


def _with_defaults(model_type: str, hf_config: dict[str, Any]) -> dict[str, Any]:
    """``hf_config`` completed by transformers (its defaults; old rope keys standardised)."""
    import transformers

    fields = {k: v for k, v in hf_config.items() if k != "model_type"}
    hf = transformers.AutoConfig.for_model(model_type, **fields).to_dict()
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}: only 'silu' exists here")
    return hf


def _rope_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """The ``rope_*`` fields of :class:`LlamaConfig` from ``rope_parameters`` (or the old keys)."""
    rope = hf.get("rope_parameters") or {}
    if any(isinstance(v, dict) for v in rope.values()):
        raise ValueError("config.json rope_parameters per layer type are not supported")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(
            f"config.json rope_parameters.rope_type={rope_type!r} is not supported "
            "(supported: default, linear, llama3)"
        )
    return dict(
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rope_type=rope_type,
        rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_position_embeddings=int(
            rope.get("original_max_position_embeddings", hf["max_position_embeddings"])
        ),
    )


def _window_fields(model_type: str, hf: dict[str, Any]) -> dict[str, Any]:
    """``sliding_window`` and ``layer_types``: Mistral slides in every layer, Qwen2/3 where
    ``layer_types`` says so; ``None`` for both when no layer slides."""
    window, layer_types = None, None
    if model_type == "mistral" and hf.get("sliding_window"):
        window = hf["sliding_window"]
        layer_types = ["sliding_attention"] * hf["num_hidden_layers"]
    elif model_type in ("qwen2", "qwen3") and hf.get("sliding_window"):
        window, layer_types = hf["sliding_window"], list(hf["layer_types"])
        if "sliding_attention" not in layer_types:
            window, layer_types = None, None
    return dict(sliding_window=window, layer_types=layer_types)
