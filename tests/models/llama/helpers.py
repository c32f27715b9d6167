"""Shared pieces of the Llama-family tests: the tiny architectures, one compiled forward, the transformers
reference forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx

TOL = 1e-4


T = 8


BASE = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    # Wide enough weights that greedy argmaxes are far apart (no float ties between frameworks).
    initializer_range=0.2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


CASES = {
    # Llama 3: llama3 rope scaling with a short original context so every branch is exercised.
    "llama3": dict(
        model_type="llama",
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=500000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    # Llama 2 style with linear rope, biases everywhere and a tied head.
    "llama_tied": dict(
        model_type="llama",
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
    ),
    # A window shorter than the sequence, so the sliding mask matters.
    "mistral": dict(model_type="mistral", sliding_window=4, head_dim=16),
    "qwen2": dict(
        model_type="qwen2",
        tie_word_embeddings=True,
        use_sliding_window=True,
        sliding_window=3,
        max_window_layers=1,
    ),
    "qwen3": dict(model_type="qwen3", head_dim=16, tie_word_embeddings=False),
}


@nnx.jit
def forward(model, ids, mask=None, cache=None):
    """One compiled forward (much cheaper than op-by-op dispatch on a busy CPU)."""
    return model(ids, attention_mask=mask, cache=cache, output_hidden_states=cache is None)


def make_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 100, size=(3, T))
    mask = np.ones((3, T), np.int64)
    mask[1, :3] = 0  # left padding
    mask[2, -2:] = 0  # right padding
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


def cases(*default):
    """All CASES, those not in ``default`` marked slow (run with ``-m slow``) to keep CI quick."""
    return [pytest.param(n, marks=() if n in default else pytest.mark.slow) for n in CASES]


def hf_forward(hf_model, ids, mask, position_ids):
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.asarray(position_ids)),
            output_hidden_states=True,
        )
    return [h.numpy() for h in out.hidden_states], out.logits.numpy()


def max_diff(a, b, mask):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))[mask.astype(bool)]))
