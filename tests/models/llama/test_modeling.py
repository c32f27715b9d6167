"""Llama-family parity against transformers PyTorch on tiny random models (CPU, float32).

Each architecture is saved by transformers, loaded by us, and compared layer by layer on a batch
that holds an unpadded, a left-padded and a right-padded row (non-pad positions only). The
reverse trip saves our randomly initialised model and loads it with transformers.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from langtune_jax.models import from_pretrained, llama, save_pretrained
from tests.models.llama.helpers import (
    BASE,
    CASES,
    TOL,
    T,
    cases,
    forward,
    hf_forward,
    make_batch,
    max_diff,
)


def test_config_round_trip(case):
    _, hf_model, folder = case
    cfg = llama.LlamaConfig.from_hf(json.loads((folder / "config.json").read_text()))
    assert llama.LlamaConfig.from_hf(cfg.to_hf()) == cfg
    back = transformers.AutoConfig.for_model(**cfg.to_hf())
    for key in ("num_key_value_heads", "rope_parameters", "tie_word_embeddings", "attention_bias"):
        assert getattr(back, key, None) == getattr(hf_model.config, key, None), key
    head_dim = getattr(hf_model.config, "head_dim", None) or 32 // 4
    assert back.head_dim == head_dim
    if cfg.model_type != "llama":
        assert back.sliding_window == hf_model.config.sliding_window
        assert getattr(back, "layer_types", None) == getattr(hf_model.config, "layer_types", None)


def test_causal_lm_parity_layer_by_layer(case, ours):
    name, hf_model, _ = case
    model = ours
    ids, mask = make_batch()
    out = forward(model, jnp.asarray(ids), jnp.asarray(mask))
    positions = llama.positions_from_mask(jnp.asarray(mask))
    hf_hidden, hf_logits = hf_forward(hf_model, ids, mask, positions)
    assert len(out.hidden_states) == len(hf_hidden) == BASE["num_hidden_layers"] + 1
    for i, (ours, ref) in enumerate(zip(out.hidden_states, hf_hidden, strict=True)):
        assert max_diff(ours, ref, mask) < TOL, f"{name}: hidden state {i}"
    assert max_diff(out.last_hidden_state, hf_hidden[-1], mask) < TOL
    assert max_diff(out.logits, hf_logits, mask) < TOL, name
    assert np.abs(hf_logits).max() > 0.5  # the comparison is not between near-zero numbers


@pytest.mark.parametrize("case", cases("llama3", "mistral"), indirect=True)
def test_bare_model_parity(case):
    name, hf_model, folder = case
    model = from_pretrained(folder, None)
    assert isinstance(model, llama.LlamaModel)
    ids, mask = make_batch()
    out = forward(model, jnp.asarray(ids), jnp.asarray(mask))
    hf_hidden, _ = hf_forward(hf_model, ids, mask, llama.positions_from_mask(jnp.asarray(mask)))
    assert max_diff(out.last_hidden_state, hf_hidden[-1], mask) < TOL, name
    assert out.logits is None


def test_reverse_trip_transformers_loads_our_save(case, tmp_path):
    name, _, folder = case
    hf_config = json.loads((folder / "config.json").read_text())
    ours = llama.from_hf_config(hf_config, "causal-lm", rngs=nnx.Rngs(7))  # our own random init
    save_pretrained(ours, tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    ids, mask = make_batch()
    hf_hidden, hf_logits = hf_forward(
        hf_model, ids, mask, llama.positions_from_mask(jnp.asarray(mask))
    )
    out = forward(ours, jnp.asarray(ids), jnp.asarray(mask))
    assert max_diff(out.logits, hf_logits, mask) < TOL, name
    assert max_diff(out.last_hidden_state, hf_hidden[-1], mask) < TOL


@pytest.mark.parametrize(
    "task, auto_class",
    [
        ("sequence-classification", transformers.AutoModelForSequenceClassification),
        ("token-classification", transformers.AutoModelForTokenClassification),
    ],
)
def test_classification_heads_parity(task, auto_class, tmp_path):
    torch.manual_seed(1)
    hf_config = transformers.AutoConfig.for_model(**BASE, **CASES["qwen3"], num_labels=3)
    hf_config._attn_implementation = "eager"
    hf_model = auto_class.from_config(hf_config).eval()
    hf_model.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path, task)
    assert model.head_modules == ("score",)
    ids, mask = make_batch()  # the sequence head reads the last non-pad token of each row
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.asarray(llama.positions_from_mask(jnp.asarray(mask)))),
        ).logits.numpy()
    out = forward(model, jnp.asarray(ids), jnp.asarray(mask))
    assert out.logits.shape == ref.shape == ((3, 3) if task.startswith("seq") else (3, T, 3))
    if task.startswith("seq"):
        np.testing.assert_allclose(np.asarray(out.logits), ref, atol=TOL)
    else:
        assert max_diff(out.logits, ref, mask) < TOL
        save_pretrained(model, tmp_path / "ours")  # and back: transformers reads our head
        back = auto_class.from_pretrained(tmp_path / "ours").eval()
        assert torch.equal(back.score.bias, hf_model.score.bias)
        assert torch.equal(back.score.weight, hf_model.score.weight)


def test_positions_from_mask_padding_and_segments():
    mask = jnp.array(
        [[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 2, 2, 2], [1, 2, 2, 3, 0], [1, 1, 0, 0, 1]]
    )
    # The last row is a right-padded prompt plus one generated token: no restart after the pads.
    expected = [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 0, 1, 2], [0, 0, 1, 0, 0], [0, 1, 1, 1, 2]]
    np.testing.assert_array_equal(np.asarray(llama.positions_from_mask(mask)), expected)


def test_packed_segments_equal_separate_rows(tiny):
    model = tiny
    # Row 0 packs example a (3 tokens) and b (4 tokens); rows 1 and 2 hold them alone.
    ids = jnp.array([[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 0, 0, 0, 0], [8, 9, 10, 11, 0, 0, 0]])
    mask = jnp.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]])
    logits = forward(model, ids, mask).logits
    np.testing.assert_allclose(logits[0, :3], logits[1, :3], atol=1e-5)
    np.testing.assert_allclose(logits[0, 3:], logits[2, :4], atol=1e-5)
    assert jnp.abs(logits[0, 3:] - logits[0, :4]).max() > 1e-2  # segments really differ


def test_bf16_compute_keeps_float32_params(tiny):
    model = llama.LlamaForCausalLM(tiny.config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    ref = tiny  # same seed and config: the same float32 weights
    ids = jnp.array([[5, 6, 7, 8]])
    out = forward(model, ids)
    assert out.logits.dtype == jnp.bfloat16
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    expected = forward(ref, ids).logits
    diff = jnp.abs(out.logits.astype(jnp.float32) - expected).max()
    assert 0 < diff < 0.1 * jnp.abs(expected).max()


def test_bad_config_errors_name_the_key():
    with pytest.raises(ValueError, match="model_type='gpt2'.*llama, mistral, qwen2, qwen3"):
        llama.LlamaConfig.from_hf({"model_type": "gpt2"})
    bad_rope = dict(BASE, model_type="llama", rope_parameters={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        llama.LlamaConfig.from_hf(bad_rope)
    with pytest.raises(ValueError, match="task='masked-lm'"):
        llama.from_hf_config(dict(BASE, model_type="llama"), "masked-lm", rngs=nnx.Rngs(0))


def test_llama3_8b_shapes_and_parameter_count():
    cfg = llama.LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=500000.0,
        rope_type="llama3",
        rope_factor=8.0,
    )
    model = nnx.eval_shape(lambda: llama.LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
    d, v, i, layers = 4096, 128256, 14336, 32
    attn = d * 32 * 128 + 2 * d * 8 * 128 + 32 * 128 * d
    per_layer = attn + 3 * d * i + 2 * d
    assert n_params == 2 * v * d + layers * per_layer + d == 8_030_261_248
    layer = model.model.layers[0]
    assert layer.self_attn.k_proj.kernel.shape == (4096, 1024)
    assert layer.self_attn.q_proj.kernel.out_sharding == ("embed", "heads")
    assert layer.mlp.down_proj.kernel.out_sharding == ("mlp", "embed")
    assert model.lm_head.kernel.out_sharding == ("embed", "vocab")
    assert model.model.embed_tokens.embedding.out_sharding == ("vocab", "embed")


def test_sharded_load_on_8_devices(tmp_path):
    """Weights land sharded by their logical axes (kv heads on ``tensor``) and outputs agree."""
    torch.manual_seed(2)
    hf_config = transformers.AutoConfig.for_model(**BASE, **CASES["llama3"])
    hf_config._attn_implementation = "eager"
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    hf_model.save_pretrained(tmp_path)
    auto = (jax.sharding.AxisType.Auto,) * 2  # as langtune_jax.train.make_mesh builds it
    mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=auto)
    model = from_pretrained(tmp_path, "causal-lm", mesh=mesh)
    k_proj = model.model.layers[0].self_attn.k_proj.kernel[...]
    assert k_proj.sharding.spec == jax.sharding.PartitionSpec(None, "tensor")
    assert len(k_proj.sharding.device_set) == 8
    ids, mask = make_batch()
    _, hf_logits = hf_forward(hf_model, ids, mask, llama.positions_from_mask(jnp.asarray(mask)))
    out = forward(model, jnp.asarray(ids), jnp.asarray(mask))
    assert max_diff(out.logits, hf_logits, mask) < TOL
