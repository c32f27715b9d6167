"""Invertible adapters (MAD-X's NICE block at the embeddings): exact inverse, identity at init,
the masked-LM decoder reading through the inverse (against a hand-composed reference), per-language
routing, the language library and a MAD-X stack carrying them frozen, config refusals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from langtune_jax.models import bert
from langtune_jax.peft.adapters import (
    AdapterConfig,
    AdapterParam,
    InvertibleAdapter,
    InvertibleEmbeddings,
    LanguageAdapterParam,
    adapter_trainable_filter,
    apply_adapters,
    count_adapter_params,
    invertible_embeddings,
    load_adapters,
    remove_adapters,
    save_adapters,
    save_language_library,
    with_routing,
)
from langtune_jax.peft.adapters.io import read_folder
from langtune_jax.peft.lora import trainable_summary
from tests.peft.adapters.test_apply import (
    BERT_HF,
    LANGS,
    batch,
    make_model,
    randomize_up,
    routed,
    routed_on_mesh,
)


def mlm_model(seed: int = 0, **overrides) -> nnx.Module:
    model = bert.from_hf_config({**BERT_HF, **overrides}, "masked-lm", rngs=nnx.Rngs(seed))
    model.eval()
    return model


def nice_reference(x, block: InvertibleAdapter, row=None, inverse=False):
    """NICE in numpy, from the block's weights: y1 = x1 + F(x2), y2 = x2 + G(y1)."""

    def mlp(sub, h):
        w = {k: np.asarray(getattr(sub, k)[...]) for k in ("down_kernel", "down_bias")}
        w |= {k: np.asarray(getattr(sub, k)[...]) for k in ("up_kernel", "up_bias")}
        if row is not None:
            w = {k: v[row] for k, v in w.items()}
        z = np.maximum(h @ w["down_kernel"] + w["down_bias"], 0.0)
        return z @ w["up_kernel"] + w["up_bias"]

    x = np.asarray(x, np.float64)
    a, b = x[..., : block.split], x[..., block.split :]
    if not inverse:
        a = a + mlp(block.F, b)
        return np.concatenate([a, b + mlp(block.G, a)], -1)
    b = b - mlp(block.G, a)
    return np.concatenate([a - mlp(block.F, b), b], -1)


@pytest.mark.parametrize("hidden", [32, 33])  # odd widths split unevenly, as the library does
def test_block_matches_reference_and_inverts_exactly(hidden):
    block = InvertibleAdapter(hidden, 2.0, non_linearity="relu", init="bert", rngs=nnx.Rngs(1))
    randomize_up(block, scale=0.5)
    x = jax.random.normal(jax.random.key(0), (3, 5, hidden))
    y = block(x)
    np.testing.assert_allclose(np.asarray(y), nice_reference(x, block), atol=1e-5)
    assert float(jnp.abs(y - x).max()) > 0.1  # not the identity
    np.testing.assert_allclose(np.asarray(block.inverse(y)), np.asarray(x), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(block.inverse(x)), nice_reference(x, block, inverse=True), atol=1e-5
    )
    assert block.F.down_kernel.shape == (hidden - hidden // 2, (hidden - hidden // 2) // 2)
    assert block.F.up_kernel.shape[-1] == hidden // 2


@pytest.mark.parametrize("task", ["masked-lm", "sequence-classification"])
def test_identity_at_init_is_exact(task):
    base = mlm_model() if task == "masked-lm" else make_model("bert")
    adapted = mlm_model() if task == "masked-lm" else make_model("bert")
    apply_adapters(adapted, AdapterConfig(adapter_size=4, inv_adapter="nice"))
    assert isinstance(adapted.bert.embeddings, InvertibleEmbeddings)
    ids, mask = batch()
    np.testing.assert_array_equal(
        np.asarray(adapted(ids, mask).logits), np.asarray(base(ids, mask).logits)
    )


def test_masked_lm_decodes_through_the_inverse():
    model = mlm_model()
    apply_adapters(model, AdapterConfig(adapter_size=4, inv_adapter="nice", init="bert"))
    randomize_up(model, seed=3)
    ids, mask = batch()
    got = np.asarray(model(ids, mask).logits)
    # Reference by hand from the same modules: embeddings -> NICE -> encoder (with its adapters)
    # -> head transform -> NICE^-1 -> tied decoder.
    wrapper = model.bert.embeddings
    block = wrapper.adapter
    x = nice_reference(wrapper.base_layer(ids), block)
    keep = jnp.asarray(mask, bool)[:, None, None, :]
    h, _ = model.bert.encoder(jnp.asarray(x, jnp.float32), keep)
    h = np.asarray(model.cls.predictions.transform(h))
    table = np.asarray(wrapper.base_layer.word_embeddings.embedding[...])
    bias = np.asarray(model.cls.predictions.bias[...])
    want = nice_reference(h, block, inverse=True) @ table.T + bias
    np.testing.assert_allclose(got, want, atol=2e-4)
    # Decoding without the inverse is another function: the comparison above can fail.
    assert np.abs(got - (h @ table.T + bias)).max() > 1e-2


def test_per_language_blocks_route_and_row_minus_one_is_the_identity():
    cfg = AdapterConfig(
        adapter_size=4, languages=LANGS, inv_adapter="nice", init="bert", modules_to_save=[]
    )
    model = apply_adapters(mlm_model(), cfg)
    randomize_up(model, seed=2)
    block = model.bert.embeddings.language_adapters
    assert block.F.down_kernel.shape[0] == len(LANGS)
    ids, mask = batch(b=4)
    rows = jnp.array([2, 0, -1, 1], jnp.int32)
    mixed = routed(model, ids, mask, rows)
    for i in range(4):
        alone = routed(model, ids[i : i + 1], mask[i : i + 1], rows[i : i + 1])
        np.testing.assert_allclose(mixed[i], alone[0], rtol=1e-5, atol=1e-5)
    emb = model.bert.embeddings.base_layer(ids)
    with with_routing(model, rows):
        out = np.asarray(model.bert.embeddings(ids))
    np.testing.assert_array_equal(out[2], np.asarray(emb)[2])  # row -1: no language transform
    np.testing.assert_allclose(out[0], nice_reference(emb[:1], block, row=2)[0], atol=1e-5)
    with pytest.raises(ValueError, match="with_routing"):
        model(ids, mask)


@pytest.mark.slow
def test_invertible_weights_train_and_the_rest_stays(tmp_path):
    model = apply_adapters(mlm_model(), AdapterConfig(adapter_size=4, inv_adapter="nice"))
    filt = adapter_trainable_filter(model)
    trained = nnx.state(model, filt)
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(trained)}
    assert {f"bert.embeddings.adapter.{s}.up_kernel" for s in "FG"} <= paths
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=filt)
    ids, mask = batch()

    def loss(m):
        logits = m(ids, mask).logits
        return -jax.nn.log_softmax(logits)[..., 7].mean()

    before = np.asarray(model.bert.embeddings.adapter.G.up_kernel[...]).copy()
    table = np.asarray(model.bert.embeddings.word_embeddings.embedding[...]).copy()
    for _ in range(2):
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, filt))(model)
        opt.update(model, grads)
    assert np.abs(np.asarray(model.bert.embeddings.adapter.G.up_kernel[...]) - before).max() > 0
    np.testing.assert_array_equal(model.bert.embeddings.word_embeddings.embedding[...], table)
    # Round trip through an adapter checkpoint, and removal restores the plain embeddings.
    save_adapters(model, tmp_path / "a")
    again = load_adapters(mlm_model(), tmp_path / "a")
    np.testing.assert_allclose(
        np.asarray(again(ids, mask).logits), np.asarray(model(ids, mask).logits), atol=1e-6
    )
    remove_adapters(again)
    assert invertible_embeddings(again) is None
    assert type(again.bert.embeddings).__name__ == "BertEmbeddings"


def test_library_carries_each_language_block_and_a_stack_loads_them_frozen(tmp_path):
    cfg = AdapterConfig(
        adapter_size=4,
        languages=LANGS,
        shared_task_adapter=False,
        inv_adapter="nice",
        init="bert",
        modules_to_save=[],
    )
    lang_model = apply_adapters(mlm_model(), cfg, rngs=nnx.Rngs(3))
    randomize_up(lang_model, seed=4)
    lib = save_language_library(lang_model, tmp_path / "lib")
    meta, tensors = read_folder(lib / "de")
    assert meta["config"]["inv_adapter"] == "nice"
    assert "bert.embeddings.adapter.F.down_kernel" in tensors
    ids, mask = batch(b=3)
    for row, lang in enumerate(LANGS):  # each folder alone is that language's model
        alone = load_adapters(mlm_model(), lib / lang)
        want = routed(lang_model, ids, mask, jnp.full((3,), row, jnp.int32))
        np.testing.assert_allclose(np.asarray(alone(ids, mask).logits), want, atol=1e-5)
    # A MAD-X task run on a classifier stacks on the library: the blocks come frozen with it,
    # and at init (task adapter zero) each language equals its language adapter alone.
    stacked = apply_adapters(
        make_model("bert"), AdapterConfig(adapter_size=4, language_adapters=str(lib))
    )
    block = stacked.bert.embeddings.language_adapters
    assert isinstance(block.F.down_kernel, LanguageAdapterParam)
    assert not any(
        "embeddings" in ".".join(map(str, p))
        for p, _ in nnx.to_flat_state(nnx.state(stacked, adapter_trainable_filter(stacked)))
    )
    for row, lang in enumerate(LANGS):
        _, t = read_folder(lib / lang)
        np.testing.assert_array_equal(
            np.asarray(block.G.up_kernel[...][row]), t["bert.embeddings.adapter.G.up_kernel"]
        )
        alone = load_adapters(make_model("bert"), lib / lang)
        want = np.asarray(alone(ids, mask).logits)
        got = routed(stacked, ids, mask, jnp.full((3,), row, jnp.int32))
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_parameter_count_includes_the_blocks():
    for languages in (None, LANGS):
        cfg = AdapterConfig(adapter_size=4, inv_adapter="nice", languages=languages)
        model = apply_adapters(mlm_model(), cfg)
        n = sum(
            v.size for _, v in nnx.iter_graph(model) if isinstance(v, AdapterParam | nnx.Param)
        ) - sum(v.size for _, v in nnx.iter_graph(mlm_model()) if isinstance(v, nnx.Param))
        assert n == count_adapter_params(cfg, BERT_HF["hidden_size"], BERT_HF["num_hidden_layers"])
        # The run's "all params" line counts the adapters too (as PEFT counts every parameter).
        base = sum(v.size for _, v in nnx.iter_graph(mlm_model()) if isinstance(v, nnx.Param))
        line = trainable_summary(model, adapter_trainable_filter(model))
        assert f"all params: {base + n:,d}" in line


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(inv_adapter="glow"), "inv_adapter"),
        (dict(inv_adapter="nice", inv_adapter_reduction_factor=0), "inv_adapter_reduction_factor"),
        (dict(inv_adapter="nice", language_adapters="lib"), "language library"),
    ],
)
def test_config_refusals_name_the_field(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        AdapterConfig(**kwargs)


def test_refused_on_llama_and_for_a_zero_width():
    with pytest.raises(ValueError, match="BERT-family"):
        apply_adapters(make_model("llama"), AdapterConfig(inv_adapter="nice"))
    cfg = AdapterConfig(inv_adapter="nice", inv_adapter_reduction_factor=64)
    with pytest.raises(ValueError, match="inv_adapter_reduction_factor"):
        apply_adapters(mlm_model(), cfg)


def test_sharded_routed_forward_with_invertible_adapters_matches_unsharded():
    """The blocks' weights carry logical axes too: on a (data 2, fsdp 2, tensor 2) mesh the routed
    masked-LM forward equals the unsharded one."""
    cfg = AdapterConfig(
        adapter_size=4, languages=LANGS, inv_adapter="nice", init="bert", modules_to_save=[]
    )
    model = apply_adapters(mlm_model(), cfg)
    randomize_up(model, seed=5)
    ids, mask = batch(b=4)
    rows = jnp.array([2, 0, 1, -1], jnp.int32)
    want = routed(model, ids, mask, rows)
    got, _ = routed_on_mesh(model, ids, mask, rows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
