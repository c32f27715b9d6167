"""Decoding for Llama-family causal LMs: nucleus sampling, :func:`generate` and text completion.

:func:`generate` runs prefill and the whole token loop in one ``jax.jit`` over the KV cache of
:mod:`langtune_jax.models.llama.modeling` (``KVCache``, ``init_cache``).
:func:`generate_completions` is text in, text out: prompts are encoded the way the data pipeline
encodes training prompts (``<s>`` + prompt tokens, no other special tokens; for a run trained on
``messages`` the same chat formatting, ``langtune_jax.data.features.format_chat``, with the same
fallback when the tokenizer has no template), left-padded into one batch and decoded by
:func:`generate`: greedy by default, temperature + nucleus (top-p) sampling when
``temperature > 0``. Adapters are used as trained (un-merged LoRA, bottleneck adapters); with
per-language adapters each prompt runs through its language's adapter (``routing``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from langtune_jax.models.llama.heads import LlamaForCausalLM
from langtune_jax.models.llama.modeling import init_cache

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
    _check_sampling(temperature, top_p, rng)
    ids, mask = _prompt_arrays(input_ids, attention_mask)
    eos, pad = _stop_ids(model.config, eos_token_id, pad_token_id)
    rng = jax.random.key(0) if rng is None else rng
    graphdef, state = nnx.split(model)
    args = (ids, mask, rng, eos, pad, jnp.float32(temperature), jnp.float32(top_p), routing_inputs)
    greedy = temperature == 0
    return _generate(graphdef, state, *args, max_new_tokens=max_new_tokens, greedy=greedy,
                     routing=routing)  # fmt: skip


def _check_sampling(temperature: float, top_p: float, rng: Array | None) -> None:
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs rng=jax.random.key(seed)")


def _prompt_arrays(input_ids: Array, attention_mask: Array | None) -> tuple[Array, Array]:
    """``(input_ids, attention_mask)`` as int32 arrays ``[B, T]``; no mask means all ones."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    return input_ids, jnp.asarray(attention_mask, jnp.int32)


def _stop_ids(cfg, eos_token_id: int | list[int] | None, pad_token_id: int | None):
    """``(eos ids [E] int32, pad id)``: the given ids, else the config's (pad: else first eos, 0)."""
    if eos_token_id is None:
        eos_token_id = cfg.eos_token_id or []
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if pad_token_id is None:
        pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos or [0])[0]
    eos_arr = jnp.asarray(eos or [-1], jnp.int32)  # -1 never matches: no early stop
    return eos_arr, jnp.int32(pad_token_id)


# ------------------------------------------------------------------------------------------------
# Text in, text out


@dataclasses.dataclass
class Completion:
    """One generated continuation.

    Attributes:
      prompt: the prompt text as given.
      text: the decoded new tokens (special tokens skipped, stopped at end-of-sequence).
      token_ids: the new token ids, up to (not including) the first end-of-sequence id.
    """

    prompt: str
    text: str
    token_ids: list[int]


def encode_prompts(
    tokenizer, prompts: Sequence[str], *, chat: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize ``prompts`` as the causal-LM pipeline does and left-pad them into one batch.

    Args:
      tokenizer: the run's Hugging Face fast tokenizer.
      prompts: prompt texts.
      chat: wrap each prompt as one user message formatted as training on ``messages`` formats
        chats (``langtune_jax.data.features.format_chat``: the tokenizer's chat template, or
        the ``role: content`` fallback after ``<s>``); otherwise ``<s>`` + prompt tokens.

    Returns:
      ``(input_ids, attention_mask)``, both ``[B, T]`` int32; padding (mask 0) on the left.
    """
    if not prompts:
        raise ValueError("no prompts given: pass at least one --prompt")
    from langtune_jax.data.features import format_chat

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = []
    for prompt in prompts:
        templated = False
        if chat:  # as training on `messages` formats a chat (its fallback included)
            prompt, templated = format_chat(tokenizer, [{"role": "user", "content": prompt}])
        head = [] if templated else bos
        rows.append(head + tokenizer(prompt, add_special_tokens=False)["input_ids"])
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad, np.int32)  # [B, T]
    mask = np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :] = r
        mask[i, t - len(r) :] = 1
    return ids, mask


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool = False,
    routing=None,
    language_id: Sequence[int] | None = None,
) -> list[Completion]:
    """Complete a batch of prompts with a causal LM (ours, optionally PEFT-wrapped).

    Args:
      model: a ``langtune_jax.models.llama.LlamaForCausalLM`` (LoRA / adapters may wrap layers).
      tokenizer: its Hugging Face fast tokenizer.
      prompts: prompt texts (one batch).
      max_new_tokens: most tokens generated per prompt.
      temperature: 0 = greedy; > 0 samples from ``softmax(logits / temperature)``.
      top_p: nucleus sampling mass (only with ``temperature > 0``).
      seed: ``jax.random`` seed for sampling.
      chat: encode prompts through the tokenizer's chat template (see :func:`encode_prompts`).
      routing: per-language adapter routing, ``routing(model, {"language_id": ids})`` -> context
        manager (a training session's ``routing``); needs ``language_id``.
      language_id: one data-pipeline language id per prompt, for ``routing``.

    Returns:
      One :class:`Completion` per prompt, in order.
    """
    _check_generator(model, max_new_tokens)
    ids, mask = encode_prompts(tokenizer, prompts, chat=chat)
    inputs = _routing_inputs(routing, language_id, len(prompts))
    eos = model.config.eos_token_id
    if not eos and tokenizer.eos_token_id is not None:
        eos = [tokenizer.eos_token_id]
    eos = list(eos or [])
    model.eval()
    out = generate(
        model,
        ids,
        mask,
        max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        rng=jax.random.key(seed),
        eos_token_id=eos,
        routing=routing,
        routing_inputs=inputs,
    )
    new = np.asarray(jax.device_get(out))[:, ids.shape[1] :]  # [B, max_new_tokens]
    return [_completion(tokenizer, prompt, row, eos) for prompt, row in zip(prompts, new.tolist())]


def _check_generator(model, max_new_tokens: int) -> None:
    if not isinstance(model, LlamaForCausalLM):
        raise ValueError(
            f"generation needs a causal LM (model.task: causal-lm); this run's model is "
            f"{type(model).__name__}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def _routing_inputs(routing, language_id: Sequence[int] | None, n: int) -> dict | None:
    """``{"language_id": [B] int32}`` for per-language ``routing``, else ``None``."""
    if routing is None:
        return None
    if language_id is None or len(language_id) != n:
        raise ValueError("per-language routing needs one language id per prompt")
    return {"language_id": np.asarray(language_id, np.int32)}  # [B]


def _completion(tokenizer, prompt: str, row: list[int], eos: list[int]) -> Completion:
    """The :class:`Completion` of one generated ``row``, cut before its first eos id."""
    stop = next((i for i, tok in enumerate(row) if tok in eos), len(row))
    tokens = row[:stop]
    return Completion(prompt, tokenizer.decode(tokens, skip_special_tokens=True), tokens)
