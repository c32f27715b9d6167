"""Text generation from a trained causal-LM run: ``langtune generate RUN_DIR --prompt ...``.

Prompts are encoded the way the data pipeline encodes training prompts (``langtune_jax.data``
features: ``<s>`` + prompt tokens, no other special tokens; for a run trained on ``messages``
the same chat formatting, ``format_chat``, with the same fallback when the tokenizer has no
template), left-padded into one batch, and decoded by ``langtune_jax.models.llama.generate``
(KV cache, one compiled loop): greedy by default, temperature + nucleus (top-p) sampling when
``temperature > 0``. The trained adapter is used as trained (un-merged LoRA, bottleneck adapters);
with per-language adapters each prompt runs through its language's adapter (``--language``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np


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
    from langtune_jax.models import llama

    if not isinstance(model, llama.LlamaForCausalLM):
        raise ValueError(
            f"generation needs a causal LM (model.task: causal-lm); this run's model is "
            f"{type(model).__name__}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids, mask = encode_prompts(tokenizer, prompts, chat=chat)
    inputs = None
    if routing is not None:
        if language_id is None or len(language_id) != len(prompts):
            raise ValueError("per-language routing needs one language id per prompt")
        inputs = {"language_id": np.asarray(language_id, np.int32)}  # [B]
    eos = model.config.eos_token_id
    if not eos and tokenizer.eos_token_id is not None:
        eos = [tokenizer.eos_token_id]
    model.eval()
    out = llama.generate(
        model,
        ids,
        mask,
        max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        rng=jax.random.key(seed),
        eos_token_id=list(eos or []),
        routing=routing,
        routing_inputs=inputs,
    )
    new = np.asarray(jax.device_get(out))[:, ids.shape[1] :]  # [B, max_new_tokens]
    completions = []
    for prompt, row in zip(prompts, new.tolist()):
        stop = next((i for i, tok in enumerate(row) if tok in (eos or [])), len(row))
        tokens = row[:stop]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        completions.append(Completion(prompt, text, tokens))
    return completions


def generate_run(
    run_dir: str | Path,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    languages: Sequence[str] | None = None,
    verbose: bool = True,
) -> list[Completion]:
    """``langtune generate``: complete prompts with a trained causal-LM run (newest checkpoint).

    Args:
      run_dir: the run folder (``config.yaml`` + ``checkpoints/``).
      prompts, max_new_tokens, temperature, top_p, seed: see :func:`generate_completions`.
      languages: for runs with per-language adapters, the language of the prompts: one name for
        all of them or one per prompt; each prompt then runs through its language's adapter
        (with the run's fallbacks), as in training.
      verbose: print each prompt and its completion.

    Returns:
      One :class:`Completion` per prompt.
    """
    from langtune_jax.train.runs import load_run

    cfg, session = load_run(Path(run_dir))
    if cfg.model.task != "causal-lm":
        raise ValueError(
            f"{run_dir} was trained with model.task={cfg.model.task}; generation needs causal-lm"
        )
    chat = any(s.messages_column for s in cfg.data.sources)
    language_id = _language_ids(session, prompts, languages, run_dir)
    completions = generate_completions(
        session.split.merge(),
        session.tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        chat=chat,
        routing=session.routing if language_id is not None else None,
        language_id=language_id,
    )
    if verbose and jax.process_index() == 0:
        for c in completions:
            print(f">>> {c.prompt}\n{c.text}\n")
    return completions


def _language_ids(session, prompts, languages, run_dir) -> list[int] | None:
    """Data-pipeline language ids of the prompts, or None for a run without language adapters."""
    known = list(session.dataset.languages)
    if session.routing is None:
        if languages:
            raise ValueError(
                f"{run_dir} has no per-language adapters, so --language has no effect; drop it"
            )
        return None
    if not languages:
        raise ValueError(
            f"{run_dir} has per-language adapters: give the prompts' language with --language "
            f"(once for all prompts or once per prompt; one of {', '.join(known)})"
        )
    names = list(languages) * len(prompts) if len(languages) == 1 else list(languages)
    if len(names) != len(prompts):
        raise ValueError(
            f"got {len(languages)} --language values for {len(prompts)} prompts: give one for "
            "all prompts or one per prompt"
        )
    unknown = sorted({n for n in names if n not in known})
    if unknown:
        raise ValueError(
            f"language(s) {', '.join(unknown)} not in the run's data (languages: {', '.join(known)})"
        )
    return [known.index(n) for n in names]
