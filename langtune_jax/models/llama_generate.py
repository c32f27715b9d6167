"""Decoding for Llama-family causal LMs: nucleus sampling and :func:`generate`.

:func:`generate` runs prefill and the whole token loop in one ``jax.jit`` over the KV cache of
:mod:`langtune_jax.models.llama_decoder` (``KVCache``, ``init_cache``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from langtune_jax.models.llama_decoder import init_cache
from langtune_jax.models.llama_heads import LlamaForCausalLM

Array = jax.Array


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


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "routing"))
def _generate(graphdef, state, input_ids, attention_mask, rng, eos, pad, temperature, top_p,
              routing_inputs, *, max_new_tokens, greedy, routing):  # fmt: skip
    model = nnx.merge(graphdef, state)
    b, t = input_ids.shape
    cfg = model.config

    def routed():  # opened around every model call, inside the trace (inputs are traced)
        if routing is None:
            return contextlib.nullcontext()
        return routing(model, routing_inputs)

    cache = init_cache(cfg, b, t + max_new_tokens, model.model.compute_dtype)
    with routed():
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
        with routed():
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
    routing: Callable[[nnx.Module, Any], contextlib.AbstractContextManager] | None = None,
    routing_inputs: Any = None,
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
      routing: per-example adapter routing, ``routing(model, routing_inputs)`` returning a context
        manager opened around every model call inside the compiled loop, e.g.
        ``lambda m, x: peft.with_routing(m, x["language_id"])`` for per-language adapters. It is
        a static argument: pass the same function object to reuse the compiled loop.
      routing_inputs: arrays ``routing`` reads (e.g. ``{"language_id": [B] int}``), passed into
        the compiled loop as traced arguments.

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
        routing_inputs,
        max_new_tokens=max_new_tokens,
        greedy=temperature == 0,
        routing=routing,
    )
