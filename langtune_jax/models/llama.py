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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.models.common import (
    EMBED,
    HEADS,
    KV_HEADS,
    MLP,
    VOCAB,
    ModelOutput,
    with_axes,
)

Array = jax.Array
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
TASKS = (None, "causal-lm", "sequence-classification", "token-classification")
_ARCH = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
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
        model_type = hf_config.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"config.json model_type={model_type!r} is not a Llama-family decoder; "
                f"supported: {', '.join(MODEL_TYPES)}"
            )
        # transformers fills the defaults and standardises old rope keys for us.
        import transformers

        fields = {k: v for k, v in hf_config.items() if k != "model_type"}
        hf = transformers.AutoConfig.for_model(model_type, **fields).to_dict()
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(
                f"config.json hidden_act={hf['hidden_act']!r}: only 'silu' exists here"
            )
        rope = hf.get("rope_parameters") or {}
        if any(isinstance(v, dict) for v in rope.values()):
            raise ValueError("config.json rope_parameters per layer type are not supported")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise ValueError(
                f"config.json rope_parameters.rope_type={rope_type!r} is not supported "
                "(supported: default, linear, llama3)"
            )
        heads = hf["num_attention_heads"]
        n_layers = hf["num_hidden_layers"]
        window, layer_types = None, None
        if model_type == "mistral" and hf.get("sliding_window"):
            window, layer_types = hf["sliding_window"], ["sliding_attention"] * n_layers
        elif model_type in ("qwen2", "qwen3") and hf.get("sliding_window"):
            window, layer_types = hf["sliding_window"], list(hf["layer_types"])
            if "sliding_attention" not in layer_types:
                window, layer_types = None, None
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
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            max_position_embeddings=hf["max_position_embeddings"],
            rms_norm_eps=hf["rms_norm_eps"],
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_position_embeddings=int(
                rope.get("original_max_position_embeddings", hf["max_position_embeddings"])
            ),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_window=window,
            layer_types=layer_types,
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


# ----------------------------------------------------------------------------- masks and positions


def positions_from_mask(mask: Array) -> Array:
    """Position ids ``[B, T]`` from a ``[B, T]`` padding/segment mask.

    Positions count the non-zero tokens of each segment from 0 (left padding does not shift them;
    a new segment id restarts them). Padding gets the position of its predecessor (or 0).
    """
    valid = mask != 0
    count = jnp.cumsum(valid, axis=1, dtype=jnp.int32)  # [B, T] tokens so far, this one included
    # Segment id of the previous *non-pad* token (0 if none), so pads inside a row never restart.
    last = jax.lax.cummax(jnp.where(valid, jnp.arange(mask.shape[1]), -1), axis=1)
    prev_last = jnp.pad(last[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    prev = jnp.where(prev_last >= 0, jnp.take_along_axis(mask, jnp.maximum(prev_last, 0), 1), 0)
    starts = valid & (mask != prev)  # first token of each segment
    offset = jax.lax.cummax(jnp.where(starts, count - 1, 0), axis=1)
    return jnp.maximum(count - 1 - offset, 0)


def _attention_bias(
    q_slots: Array, k_slots: Array, q_seg: Array, k_seg: Array, window: int | None
) -> Array:
    """Boolean ``[B, 1, 1, T, S]`` mask: causal, same segment, key not padding, inside window."""
    causal = k_slots[None, :] <= q_slots[:, None]  # [T, S]
    if window is not None:
        causal &= k_slots[None, :] > q_slots[:, None] - window
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)  # [B, T, S]
    return (causal[None] & same)[:, None, None]


# ----------------------------------------------------------------------------- rope


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """Rope inverse frequencies ``[head_dim // 2]`` (float32), with Llama 3 or linear scaling.

    References: Su et al. 2021, "RoFormer" (arXiv:2104.09864); Llama 3.1 frequency smoothing as in
    ``transformers.modeling_rope_utils._compute_llama3_parameters``.
    """
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    inv = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
    if cfg.rope_type == "linear":
        return (inv / np.float32(cfg.rope_factor)).astype(np.float32)
    if cfg.rope_type == "llama3":
        factor, lo, hi = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old = cfg.rope_original_max_position_embeddings
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def _apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """``x * cos + rotate_half(x) * sin`` on ``x [B, T, N, H]`` with ``cos, sin [B, T, H]``."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos[:, :, None] + rotated * sin[:, :, None]


# ----------------------------------------------------------------------------- cache


@dataclasses.dataclass
class KVCache:
    """Preallocated keys/values for decoding (a pytree; pass it in and take it back out).

    Attributes:
      keys, values: one ``[B, S, kv_heads, head_dim]`` array per layer.
      mask: ``[B, S]`` int32 segment ids of the written slots (0: empty or padding).
      index: ``[]`` int32, the next slot to write.
    """

    keys: list[Array]
    values: list[Array]
    mask: Array
    index: Array


jax.tree_util.register_dataclass(
    KVCache, data_fields=["keys", "values", "mask", "index"], meta_fields=[]
)


def init_cache(cfg: LlamaConfig, batch_size: int, max_length: int, dtype: Any = jnp.float32):
    """An empty :class:`KVCache` for ``batch_size`` rows of up to ``max_length`` tokens.

    Writing past ``max_length`` is not checked inside jit (slots would be clamped): size the cache
    for prompt plus new tokens, as :func:`generate` does.
    """
    shape = (batch_size, max_length, cfg.num_key_value_heads, cfg.head_dim)
    zeros = [jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers)]
    return KVCache(
        keys=zeros,
        values=[jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers)],
        mask=jnp.zeros((batch_size, max_length), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


# ----------------------------------------------------------------------------- modules


class RMSNorm(nnx.RMSNorm):
    """``nnx.RMSNorm`` with Hugging Face's rounding order: ``scale * (x * rsqrt(ms)).astype(dtype)``.

    Statistics are float32; the normalised value is cast to the compute dtype *before* the scale
    multiplies it, exactly like ``LlamaRMSNorm`` (flax scales in float32 first).
    """

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        dtype = self.dtype or x.dtype
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return self.scale[...].astype(dtype) * y.astype(dtype)


def _linear(cfg, d_in, d_out, axes, bias, *, dtype, param_dtype, rngs) -> nnx.Linear:
    init = nnx.initializers.normal(cfg.initializer_range)
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=bias,
        kernel_init=with_axes(init, *axes),
        bias_init=with_axes(nnx.initializers.zeros_init(), axes[1]),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class LlamaAttention(nnx.Module):
    """Grouped-query self-attention with rope (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``)."""

    def __init__(self, cfg: LlamaConfig, layer: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, h, kv, hd = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = _linear(cfg, d, h * hd, (EMBED, HEADS), cfg.qkv_bias, **kw)
        self.k_proj = _linear(cfg, d, kv * hd, (EMBED, KV_HEADS), cfg.qkv_bias, **kw)
        self.v_proj = _linear(cfg, d, kv * hd, (EMBED, KV_HEADS), cfg.qkv_bias, **kw)
        self.o_proj = _linear(cfg, h * hd, d, (HEADS, EMBED), cfg.o_bias, **kw)
        if cfg.qk_norm:
            norm = dict(epsilon=cfg.rms_norm_eps, scale_init=with_axes(nnx.initializers.ones, None))
            self.q_norm = RMSNorm(hd, **norm, **kw)
            self.k_norm = RMSNorm(hd, **norm, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd
        self.qk_norm, self.window = cfg.qk_norm, cfg.window(layer)

    def __call__(self, x, cos, sin, q_slots, q_seg, kv=None):
        """``x [B, T, D]``; ``kv`` is ``(keys, values, k_seg, index)`` of a cache layer or None.

        Returns ``(out [B, T, D], (keys, values))`` with the keys/values to store in the cache.
        """
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)  # [B, T, N, H]
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)  # [B, T, K, H]
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if kv is None:
            keys, values, k_seg, k_slots = k, v, q_seg, q_slots
        else:
            cache_k, cache_v, k_seg, index = kv
            keys = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
            values = jax.lax.dynamic_update_slice(
                cache_v, v.astype(cache_v.dtype), (0, index, 0, 0)
            )
            k_slots = jnp.arange(keys.shape[1])
        groups = self.num_heads // self.num_kv_heads
        q = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)  # [B, T, K, G, H]
        scores = jnp.einsum("btkgh,bskh->bkgts", q, keys.astype(q.dtype))  # [B, K, G, T, S]
        scores = scores.astype(jnp.float32) * self.head_dim**-0.5
        allowed = _attention_bias(q_slots, k_slots, q_seg, k_seg, self.window)
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)  # float32 softmax
        out = jnp.einsum("bkgts,bskh->btkgh", probs, values.astype(q.dtype))
        return self.o_proj(out.reshape(b, t, -1)), (keys, values)


class LlamaMLP(nnx.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (Shazeer 2020, arXiv:2002.05202)."""

    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, m = cfg.hidden_size, cfg.intermediate_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = _linear(cfg, d, m, (EMBED, MLP), cfg.mlp_bias, **kw)
        self.up_proj = _linear(cfg, d, m, (EMBED, MLP), cfg.mlp_bias, **kw)
        self.down_proj = _linear(cfg, m, d, (MLP, EMBED), cfg.mlp_bias, **kw)

    def __call__(self, x: Array) -> Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))  # [B, T, D]


class LlamaDecoderLayer(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: LlamaConfig, layer: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(epsilon=cfg.rms_norm_eps, scale_init=with_axes(nnx.initializers.ones, EMBED))
        self.self_attn = LlamaAttention(cfg, layer, **kw)
        self.mlp = LlamaMLP(cfg, **kw)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm, **kw)

    def __call__(self, x, cos, sin, q_slots, q_seg, kv=None):
        with jax.named_scope("attention"):
            h, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, q_slots, q_seg, kv)
        x = x + h
        with jax.named_scope("mlp"):
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_kv


class LlamaModel(nnx.Module):
    """The bare decoder: ``embed_tokens``, ``layers``, final ``norm``.

    Call: ``model(input_ids [B, T], attention_mask=None, position_ids=None, *, cache=None,
    output_hidden_states=False) -> ModelOutput`` with ``last_hidden_state [B, T, D]`` (after the
    final norm); ``hidden_states`` as in ``transformers`` (embeddings, each layer's output, the last
    one normed); ``cache`` the updated :class:`KVCache` when one was given.
    """

    head_modules: tuple[str, ...] = ()
    base_model_prefix = "model"  # checkpoint keys of the bare decoder start with "model."

    @property
    def hf_architecture(self) -> str:
        """The ``transformers`` class name written to ``config.json``'s ``architectures``."""
        return _ARCH[self.config.model_type] + "Model"

    def __init__(self, cfg: LlamaConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=with_axes(nnx.initializers.normal(cfg.initializer_range), VOCAB, EMBED),
            **kw,
        )
        self.layers = nnx.List(
            [LlamaDecoderLayer(cfg, i, **kw) for i in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(
            cfg.hidden_size,
            epsilon=cfg.rms_norm_eps,
            scale_init=with_axes(nnx.initializers.ones, EMBED),
            **kw,
        )
        # Keys/values of a cache are stored in the compute dtype (or the param dtype without one).
        self.compute_dtype = jnp.dtype(dtype or param_dtype)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        *,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        del token_type_ids  # decoders have none; accepted for the shared calling convention
        b, t = input_ids.shape
        seg = jnp.ones((b, t), jnp.int32) if attention_mask is None else attention_mask
        seg = seg.astype(jnp.int32)
        if cache is None:
            slots = jnp.arange(t)
            if position_ids is None:
                position_ids = positions_from_mask(seg)
        else:
            slots = cache.index + jnp.arange(t)
            full_mask = jax.lax.dynamic_update_slice(cache.mask, seg, (0, cache.index))
            if position_ids is None:  # count the whole cached row, then keep the new slots
                position_ids = jax.lax.dynamic_slice_in_dim(
                    positions_from_mask(full_mask), cache.index, t, axis=1
                )
        x = self.embed_tokens(input_ids)  # [B, T, D]
        inv_freq = rope_inv_freq(self.config)  # a numpy constant: folded into the program
        angles = position_ids[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
        angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, H]
        cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
        hidden = [x] if output_hidden_states else None
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.keys[i], cache.values[i], full_mask, cache.index)
            with jax.named_scope(f"layer_{i}"):
                x, (k, v) = layer(x, cos, sin, slots, seg, kv)
            new_keys.append(k)
            new_values.append(v)
            if hidden is not None:
                hidden.append(x)
        x = self.norm(x)
        if hidden is not None:
            hidden[-1] = x  # transformers reports the final layer after the norm
        new_cache = None
        if cache is not None:
            new_cache = KVCache(new_keys, new_values, full_mask, cache.index + t)
        return ModelOutput(
            last_hidden_state=x,
            hidden_states=None if hidden is None else tuple(hidden),
            cache=new_cache,
        )


class LlamaForCausalLM(nnx.Module):
    """Decoder + LM head (``lm_head``, or the transposed ``embed_tokens`` when tied).

    ``logits`` are ``[B, T, vocab]`` in the compute dtype. ``head_modules`` is empty: the LM head
    is pretrained, never a newly initialised task head.
    """

    head_modules: tuple[str, ...] = ()
    base_model_prefix = "model"  # checkpoint keys of the bare decoder start with "model."

    @property
    def hf_architecture(self) -> str:
        """The ``transformers`` class name written to ``config.json``'s ``architectures``."""
        return _ARCH[self.config.model_type] + "ForCausalLM"

    def __init__(self, cfg: LlamaConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.model = LlamaModel(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = _linear(
                cfg,
                cfg.hidden_size,
                cfg.vocab_size,
                (EMBED, VOCAB),
                False,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 *, cache=None, output_hidden_states=False) -> ModelOutput:  # fmt: skip
        out = self.model(
            input_ids,
            attention_mask,
            position_ids=position_ids,
            cache=cache,
            output_hidden_states=output_hidden_states,
        )
        return dataclasses.replace(out, logits=self.lm_logits(out.last_hidden_state))

    def lm_logits(self, hidden: Array) -> Array:
        """``[..., D]`` final hidden states -> ``[..., vocab]`` logits (tied or untied head)."""
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.attend(hidden)
        return self.lm_head(hidden)


class LlamaForSequenceClassification(nnx.Module):
    """Decoder + ``score`` (no bias) read at the last non-padding token of each row.

    ``logits`` are ``[B, num_labels]``. The last token is the rightmost non-zero position of
    ``attention_mask`` (``transformers`` looks for the rightmost non-``pad_token_id`` id, the same
    position whenever the mask marks the pad tokens); without a mask it is the last position.
    """

    head_modules: tuple[str, ...] = ("score",)
    base_model_prefix = "model"  # checkpoint keys of the bare decoder start with "model."

    @property
    def hf_architecture(self) -> str:
        """The ``transformers`` class name written to ``config.json``'s ``architectures``."""
        return _ARCH[self.config.model_type] + "ForSequenceClassification"

    def __init__(self, cfg: LlamaConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.model = LlamaModel(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.score = _linear(
            cfg,
            cfg.hidden_size,
            cfg.num_labels,
            (EMBED, None),
            False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 *, cache=None, output_hidden_states=False) -> ModelOutput:  # fmt: skip
        out = self.model(
            input_ids,
            attention_mask,
            position_ids=position_ids,
            cache=cache,
            output_hidden_states=output_hidden_states,
        )
        b, t = input_ids.shape
        if attention_mask is None:
            last = jnp.full((b,), t - 1)
        else:
            last = jnp.argmax(jnp.where(attention_mask != 0, jnp.arange(t), -1), axis=1)
        pooled = out.last_hidden_state[jnp.arange(b), last]  # [B, D]
        return dataclasses.replace(out, logits=self.score(pooled))


class LlamaForTokenClassification(nnx.Module):
    """Decoder + dropout + ``score`` (with bias): ``logits [B, T, num_labels]`` for every token.

    Mirrors ``transformers``' ``LlamaForTokenClassification``; the dropout rate is
    ``classifier_dropout`` and is active only after ``model.train()``.
    """

    head_modules: tuple[str, ...] = ("score",)
    base_model_prefix = "model"  # checkpoint keys of the bare decoder start with "model."

    @property
    def hf_architecture(self) -> str:
        """The ``transformers`` class name written to ``config.json``'s ``architectures``."""
        return _ARCH[self.config.model_type] + "ForTokenClassification"

    def __init__(self, cfg: LlamaConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.model = LlamaModel(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.classifier_dropout, rngs=rngs)
        self.score = _linear(
            cfg,
            cfg.hidden_size,
            cfg.num_labels,
            (EMBED, None),
            True,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 *, cache=None, output_hidden_states=False) -> ModelOutput:  # fmt: skip
        out = self.model(
            input_ids,
            attention_mask,
            position_ids=position_ids,
            cache=cache,
            output_hidden_states=output_hidden_states,
        )
        logits = self.score(self.dropout(out.last_hidden_state))  # [B, T, num_labels]
        return dataclasses.replace(out, logits=logits)


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


# ----------------------------------------------------------------------------- generation


def _sample(logits: Array, rng: Array, temperature: Array, top_p: Array, greedy: bool) -> Array:
    """Next token ``[B]`` from ``logits [B, V]``: argmax when ``greedy``, else nucleus sampling.

    ``temperature`` and ``top_p`` are traced scalars, so changing them does not recompile.
    Reference: Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration" (top-p).
    """

    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / temperature
    # Keep the smallest set of tokens whose probability reaches top_p (always the best one).
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]  # [B, V] descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep = jnp.maximum(jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1), 1)
    cutoff = jnp.take_along_axis(sorted_logits, keep[:, None] - 1, axis=-1)  # [B, 1]
    cutoff = jnp.where(top_p >= 1.0, -jnp.inf, cutoff)
    masked = jnp.where(scaled < cutoff, -jnp.inf, scaled)
    return jax.random.categorical(rng, masked, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy"))
def _generate(graphdef, state, input_ids, attention_mask, rng, eos, pad, temperature, top_p, *,
              max_new_tokens, greedy):  # fmt: skip
    model = nnx.merge(graphdef, state)
    b, t = input_ids.shape
    cfg = model.config
    cache = init_cache(cfg, b, t + max_new_tokens, model.model.compute_dtype)
    out = model.model(input_ids, attention_mask, cache=cache)  # prefill
    last = jnp.argmax(jnp.where(attention_mask != 0, jnp.arange(t), -1), axis=1)  # [B]
    # Only each row's last prompt token needs logits: [B, V], never [B, T, V].
    logits = model.lm_logits(out.last_hidden_state[jnp.arange(b), last])
    tokens = jnp.full((b, max_new_tokens), pad, jnp.int32)

    def body(carry):
        step, logits, cache, tokens, done, rng = carry
        rng, key = jax.random.split(rng)
        nxt = jnp.where(done, pad, _sample(logits, key, temperature, top_p, greedy))  # [B]
        tokens = tokens.at[:, step].set(nxt)
        done = done | jnp.any(nxt[:, None] == eos[None, :], axis=-1)
        out = model(nxt[:, None], jnp.ones((b, 1), jnp.int32), cache=cache)
        return step + 1, out.logits[:, -1], out.cache, tokens, done, rng

    def cond(carry):
        step, *_, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    done = jnp.zeros((b,), bool)
    carry = (jnp.int32(0), logits, out.cache, tokens, done, rng)
    tokens = jax.lax.while_loop(cond, body, carry)[3]
    return jnp.concatenate([input_ids.astype(jnp.int32), tokens], axis=1)


def generate(
    model: LlamaForCausalLM,
    input_ids: Array,
    attention_mask: Array | None = None,
    max_new_tokens: int = 32,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng: Array | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> Array:
    """Decodes ``max_new_tokens`` tokens after each prompt with the KV cache.

    Greedy when ``temperature == 0`` (the default), else temperature + nucleus (``top_p``)
    sampling with ``rng``. Prompts may be left-padded (recommended, as in ``transformers``) or
    right-padded: the mask keeps pads out of attention and position ids. Prefill and the whole
    token loop compile once per (model, batch, prompt length, max_new_tokens, greedy or not);
    temperature and top_p values are traced (changing them does not recompile).

    Args:
      model: a :class:`LlamaForCausalLM`.
      input_ids: ``[B, T]`` int prompts.
      attention_mask: ``[B, T]`` 1 for prompt tokens, 0 for padding (default: all ones).
      max_new_tokens: tokens to add per row.
      temperature, top_p: sampling settings (``temperature=0``: greedy, ``top_p`` unused).
      rng: a ``jax.random`` key, required when sampling.
      eos_token_id: id(s) that end a row (default: the config's); later slots get ``pad_token_id``.
      pad_token_id: filler after a row ended (default: config's pad id, else the first eos id, 0).

    Returns:
      ``[B, T + max_new_tokens]`` int32: the prompts followed by the new tokens, like
      ``transformers``' ``generate`` for decoder-only models.
    """
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs rng=jax.random.key(seed)")
    cfg = model.config
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    if eos_token_id is None:
        eos_token_id = cfg.eos_token_id or []
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if pad_token_id is None:
        pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos or [0])[0]
    eos_arr = jnp.asarray(eos or [-1], jnp.int32)  # -1 never matches: no early stop
    graphdef, state = nnx.split(model)
    return _generate(
        graphdef,
        state,
        input_ids,
        jnp.asarray(attention_mask, jnp.int32),
        jax.random.key(0) if rng is None else rng,
        eos_arr,
        jnp.int32(pad_token_id),
        jnp.float32(temperature),
        jnp.float32(top_p),
        max_new_tokens=max_new_tokens,
        greedy=temperature == 0,
    )
