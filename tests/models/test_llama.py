"""Llama-family parity against transformers PyTorch on tiny random models (CPU, float32).

Each architecture is saved by transformers, loaded by us, and compared layer by layer on a batch
that holds an unpadded, a left-padded and a right-padded row (non-pad positions only). The
reverse trip saves our randomly initialised model and loads it with transformers. Generation with
the KV cache must reproduce transformers' greedy tokens.
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

TOL = 1e-4
T = 8
_BASE = dict(
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
def _forward(model, ids, mask=None, cache=None):
    """One compiled forward (much cheaper than op-by-op dispatch on a busy CPU)."""
    return model(ids, attention_mask=mask, cache=cache, output_hidden_states=cache is None)


# ----------------------------------------------------------------------------- fixtures


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 100, size=(3, T))
    mask = np.ones((3, T), np.int64)
    mask[1, :3] = 0  # left padding
    mask[2, -2:] = 0  # right padding
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


def _cases(*default):
    """All CASES, those not in ``default`` marked slow (run with ``-m slow``) to keep CI quick."""
    return [pytest.param(n, marks=() if n in default else pytest.mark.slow) for n in CASES]


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, HF causal LM, its folder) for one architecture."""
    name = request.param
    torch.manual_seed(0)
    hf_config = transformers.AutoConfig.for_model(**_BASE, **CASES[name])
    hf_config._attn_implementation = "eager"
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    folder = tmp_path_factory.mktemp(name)
    hf_model.save_pretrained(folder)
    return name, hf_model, folder


@pytest.fixture(scope="module")
def ours(case):
    """Our causal LM loaded from the case's transformers checkpoint."""
    return from_pretrained(case[2], "causal-lm")


def _hf_forward(hf_model, ids, mask, position_ids):
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.asarray(position_ids)),
            output_hidden_states=True,
        )
    return [h.numpy() for h in out.hidden_states], out.logits.numpy()


def _max_diff(a, b, mask):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))[mask.astype(bool)]))


# ----------------------------------------------------------------------------- parity


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
    ids, mask = _batch()
    out = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
    positions = llama.positions_from_mask(jnp.asarray(mask))
    hf_hidden, hf_logits = _hf_forward(hf_model, ids, mask, positions)
    assert len(out.hidden_states) == len(hf_hidden) == _BASE["num_hidden_layers"] + 1
    for i, (ours, ref) in enumerate(zip(out.hidden_states, hf_hidden, strict=True)):
        assert _max_diff(ours, ref, mask) < TOL, f"{name}: hidden state {i}"
    assert _max_diff(out.last_hidden_state, hf_hidden[-1], mask) < TOL
    assert _max_diff(out.logits, hf_logits, mask) < TOL, name
    assert np.abs(hf_logits).max() > 0.5  # the comparison is not between near-zero numbers


@pytest.mark.parametrize("case", _cases("llama3", "mistral"), indirect=True)
def test_bare_model_parity(case):
    name, hf_model, folder = case
    model = from_pretrained(folder, None)
    assert isinstance(model, llama.LlamaModel)
    ids, mask = _batch()
    out = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
    hf_hidden, _ = _hf_forward(hf_model, ids, mask, llama.positions_from_mask(jnp.asarray(mask)))
    assert _max_diff(out.last_hidden_state, hf_hidden[-1], mask) < TOL, name
    assert out.logits is None


def test_reverse_trip_transformers_loads_our_save(case, tmp_path):
    name, _, folder = case
    hf_config = json.loads((folder / "config.json").read_text())
    ours = llama.from_hf_config(hf_config, "causal-lm", rngs=nnx.Rngs(7))  # our own random init
    save_pretrained(ours, tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    ids, mask = _batch()
    hf_hidden, hf_logits = _hf_forward(
        hf_model, ids, mask, llama.positions_from_mask(jnp.asarray(mask))
    )
    out = _forward(ours, jnp.asarray(ids), jnp.asarray(mask))
    assert _max_diff(out.logits, hf_logits, mask) < TOL, name
    assert _max_diff(out.last_hidden_state, hf_hidden[-1], mask) < TOL


# Every architecture's cache is checked against its full forward below; greedy decoding against
# transformers' generate runs for two by default (GQA + llama3 rope; tied + sliding window).
@pytest.mark.parametrize("case", _cases("llama3", "qwen2"), indirect=True)
def test_greedy_generation_matches_transformers(case, ours):
    name, hf_model, _ = case
    model = ours
    ids, mask = _batch()
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
    ids, mask = _batch()  # the right-padded row decodes pad slots too: they must stay masked
    prompt = 5  # prefill the first 5 slots, then decode the last 3 one at a time
    full = _forward(model, jnp.asarray(ids), jnp.asarray(mask)).logits
    cache = llama.init_cache(model.config, 3, T)
    out = _forward(model, jnp.asarray(ids[:, :prompt]), jnp.asarray(mask[:, :prompt]), cache)
    steps = [out.logits]
    cache = out.cache
    for t in range(prompt, T):
        out = _forward(
            model, jnp.asarray(ids[:, t : t + 1]), jnp.asarray(mask[:, t : t + 1]), cache
        )
        steps.append(out.logits)
        cache = out.cache
    assert int(cache.index) == T
    assert _max_diff(jnp.concatenate(steps, axis=1), full, mask) < TOL, name


@pytest.mark.parametrize(
    "task, auto_class",
    [
        ("sequence-classification", transformers.AutoModelForSequenceClassification),
        ("token-classification", transformers.AutoModelForTokenClassification),
    ],
)
def test_classification_heads_parity(task, auto_class, tmp_path):
    torch.manual_seed(1)
    hf_config = transformers.AutoConfig.for_model(**_BASE, **CASES["qwen3"], num_labels=3)
    hf_config._attn_implementation = "eager"
    hf_model = auto_class.from_config(hf_config).eval()
    hf_model.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path, task)
    assert model.head_modules == ("score",)
    ids, mask = _batch()  # the sequence head reads the last non-pad token of each row
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.asarray(llama.positions_from_mask(jnp.asarray(mask)))),
        ).logits.numpy()
    out = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
    assert out.logits.shape == ref.shape == ((3, 3) if task.startswith("seq") else (3, T, 3))
    if task.startswith("seq"):
        np.testing.assert_allclose(np.asarray(out.logits), ref, atol=TOL)
    else:
        assert _max_diff(out.logits, ref, mask) < TOL
        save_pretrained(model, tmp_path / "ours")  # and back: transformers reads our head
        back = auto_class.from_pretrained(tmp_path / "ours").eval()
        assert torch.equal(back.score.bias, hf_model.score.bias)
        assert torch.equal(back.score.weight, hf_model.score.weight)


# ----------------------------------------------------------------------------- small pieces


def test_positions_from_mask_padding_and_segments():
    mask = jnp.array(
        [[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 2, 2, 2], [1, 2, 2, 3, 0], [1, 1, 0, 0, 1]]
    )
    # The last row is a right-padded prompt plus one generated token: no restart after the pads.
    expected = [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 0, 1, 2], [0, 0, 1, 0, 0], [0, 1, 1, 1, 2]]
    np.testing.assert_array_equal(np.asarray(llama.positions_from_mask(mask)), expected)


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised Qwen3-style causal LM built by us (no transformers involved)."""
    cfg = llama.LlamaConfig.from_hf(dict(_BASE, **CASES["qwen3"]))
    return llama.LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))


def test_packed_segments_equal_separate_rows(tiny):
    model = tiny
    # Row 0 packs example a (3 tokens) and b (4 tokens); rows 1 and 2 hold them alone.
    ids = jnp.array([[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 0, 0, 0, 0], [8, 9, 10, 11, 0, 0, 0]])
    mask = jnp.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]])
    logits = _forward(model, ids, mask).logits
    np.testing.assert_allclose(logits[0, :3], logits[1, :3], atol=1e-5)
    np.testing.assert_allclose(logits[0, 3:], logits[2, :4], atol=1e-5)
    assert jnp.abs(logits[0, 3:] - logits[0, :4]).max() > 1e-2  # segments really differ


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


def test_bf16_compute_keeps_float32_params(tiny):
    model = llama.LlamaForCausalLM(tiny.config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    ref = tiny  # same seed and config: the same float32 weights
    ids = jnp.array([[5, 6, 7, 8]])
    out = _forward(model, ids)
    assert out.logits.dtype == jnp.bfloat16
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    expected = _forward(ref, ids).logits
    diff = jnp.abs(out.logits.astype(jnp.float32) - expected).max()
    assert 0 < diff < 0.1 * jnp.abs(expected).max()


def test_bad_config_errors_name_the_key():
    with pytest.raises(ValueError, match="model_type='gpt2'.*llama, mistral, qwen2, qwen3"):
        llama.LlamaConfig.from_hf({"model_type": "gpt2"})
    bad_rope = dict(_BASE, model_type="llama", rope_parameters={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        llama.LlamaConfig.from_hf(bad_rope)
    with pytest.raises(ValueError, match="task='masked-lm'"):
        llama.from_hf_config(dict(_BASE, model_type="llama"), "masked-lm", rngs=nnx.Rngs(0))


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
    hf_config = transformers.AutoConfig.for_model(**_BASE, **CASES["llama3"])
    hf_config._attn_implementation = "eager"
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    hf_model.save_pretrained(tmp_path)
    auto = (jax.sharding.AxisType.Auto,) * 2  # as langtune_jax.train.make_mesh builds it
    mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=auto)
    model = from_pretrained(tmp_path, "causal-lm", mesh=mesh)
    k_proj = model.model.layers[0].self_attn.k_proj.kernel[...]
    assert k_proj.sharding.spec == jax.sharding.PartitionSpec(None, "tensor")
    assert len(k_proj.sharding.device_set) == 8
    ids, mask = _batch()
    _, hf_logits = _hf_forward(hf_model, ids, mask, llama.positions_from_mask(jnp.asarray(mask)))
    out = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
    assert _max_diff(out.logits, hf_logits, mask) < TOL
