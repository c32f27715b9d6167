"""Llama-family decoder: masks and positions, rope, the KV cache, the layers and ``LlamaModel``.

The mask, position, cache and dtype conventions are described in :mod:`langtune_jax.models.llama`;
the task heads over :class:`LlamaModel` are in :mod:`langtune_jax.models.llama.heads` and decoding
in :mod:`langtune_jax.models.llama.generate`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.models.common import (
    BATCH,
    EMBED,
    HEADS,
    KV_HEADS,
    LENGTH,
    MLP,
    VOCAB,
    ModelOutput,
    constrain,
    positions_from_mask,
    remat_layer,
    with_axes,
)
from langtune_jax.models.llama.config import ARCH, LlamaConfig

Array = jax.Array


# ----------------------------------------------------------------------------- masks and positions


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


def linear(cfg, d_in, d_out, axes, bias, *, dtype, param_dtype, rngs) -> nnx.Linear:
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
        self.q_proj = linear(cfg, d, h * hd, (EMBED, HEADS), cfg.qkv_bias, **kw)
        self.k_proj = linear(cfg, d, kv * hd, (EMBED, KV_HEADS), cfg.qkv_bias, **kw)
        self.v_proj = linear(cfg, d, kv * hd, (EMBED, KV_HEADS), cfg.qkv_bias, **kw)
        self.o_proj = linear(cfg, h * hd, d, (HEADS, EMBED), cfg.o_bias, **kw)
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
        self.gate_proj = linear(cfg, d, m, (EMBED, MLP), cfg.mlp_bias, **kw)
        self.up_proj = linear(cfg, d, m, (EMBED, MLP), cfg.mlp_bias, **kw)
        self.down_proj = linear(cfg, m, d, (MLP, EMBED), cfg.mlp_bias, **kw)

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
        return ARCH[self.config.model_type] + "Model"

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
        self.remat = "none"  # per-layer jax.checkpoint policy (models.common.set_remat)

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
                x, (k, v) = remat_layer(layer, self.remat)(x, cos, sin, slots, seg, kv)
                x = constrain(x, BATCH, LENGTH, EMBED)
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
