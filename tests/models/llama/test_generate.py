"""Generation: greedy tokens with the KV cache equal transformers', cached decoding equals the full
forward, sampling is seeded."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from langtune_jax.models import llama
from tests.models.llama.helpers import (
    TOL,
    T,
    cases,
    forward,
    make_batch,
    max_diff,
)


@pytest.mark.parametrize("case", cases("llama3", "qwen2"), indirect=True)
def test_greedy_generation_matches_transformers(case, ours):
    name, hf_model, _ = case
    model = ours
    ids, mask = make_batch()
    ids, mask = ids[:2], mask[:2]  # generation prompts are left-padded (row 1) or unpadded
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        free = hf_model.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask), eos_token_id=None, **kwargs
        ).numpy()
    ours = llama.generate(model, ids, mask, 6, eos_token_id=[])
    np.testing.assert_array_equal(np.asarray(ours), free, err_msg=name)
    # Make row 0's third new token the EOS: row 0 must stop there and pad, row 1 goes on.
    eos = int(free[0, T + 2])
    with torch.no_grad():
        stopped = hf_model.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask), eos_token_id=eos, **kwargs
        ).numpy()
    ours = llama.generate(model, ids, mask, 6, eos_token_id=eos, pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(ours)[:, : stopped.shape[1]], stopped, err_msg=name)
    assert np.all(np.asarray(ours)[0, T + 3 :] == 0)


def test_cached_decoding_equals_full_forward(case, ours):
    name, model = case[0], ours
    ids, mask = make_batch()  # the right-padded row decodes pad slots too: they must stay masked
    prompt = 5  # prefill the first 5 slots, then decode the last 3 one at a time
    full = forward(model, jnp.asarray(ids), jnp.asarray(mask)).logits
    cache = llama.init_cache(model.config, 3, T)
    out = forward(model, jnp.asarray(ids[:, :prompt]), jnp.asarray(mask[:, :prompt]), cache)
    steps = [out.logits]
    cache = out.cache
    for t in range(prompt, T):
        out = forward(model, jnp.asarray(ids[:, t : t + 1]), jnp.asarray(mask[:, t : t + 1]), cache)
        steps.append(out.logits)
        cache = out.cache
    assert int(cache.index) == T
    assert max_diff(jnp.concatenate(steps, axis=1), full, mask) < TOL, name


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(tiny):
    model = tiny
    ids = jnp.array([[5, 6, 7, 8]])
    greedy = llama.generate(model, ids, max_new_tokens=5, eos_token_id=[])
    key = jax.random.key(3)
    s1 = llama.generate(model, ids, max_new_tokens=5, temperature=1.0, rng=key, eos_token_id=[])
    s2 = llama.generate(model, ids, max_new_tokens=5, temperature=1.0, rng=key, eos_token_id=[])
    np.testing.assert_array_equal(s1, s2)
    nucleus = llama.generate(
        model, ids, max_new_tokens=5, temperature=1.0, top_p=1e-6, rng=key, eos_token_id=[]
    )
    np.testing.assert_array_equal(nucleus, greedy)  # a vanishing nucleus keeps only the argmax
    # A right-padded prompt continues exactly like the same prompt left-padded.
    left = llama.generate(model, jnp.array([[0, 5, 6, 7]]), jnp.array([[0, 1, 1, 1]]), 5)
    right = llama.generate(model, jnp.array([[5, 6, 7, 0]]), jnp.array([[1, 1, 1, 0]]), 5)
    np.testing.assert_array_equal(left[:, 4:], right[:, 4:])
    with pytest.raises(ValueError, match="rng"):
        llama.generate(model, ids, max_new_tokens=2, temperature=0.7)
