"""Bottleneck and per-language adapters: on the computation path, identity at init, training touches
only adapter (+ head) weights, closed-form size, per-example routing, fallback, checkpoints, LoRA."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from langtune_jax.models import bert, llama
from langtune_jax.peft import adapters as ad
from langtune_jax.peft.adapters import (
    AdapterConfig,
    AdapterParam,
    AdapterWrapper,
    adapter_trainable_filter,
    apply_adapters,
    count_adapter_params,
    language_rows,
    load_adapters,
    save_adapters,
    with_routing,
)

D, LAYERS, VOCAB = 32, 2, 100
BERT_HF = dict(
    model_type="bert",
    vocab_size=VOCAB,
    hidden_size=D,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
LLAMA_HF = dict(
    model_type="llama",
    vocab_size=VOCAB,
    hidden_size=D,
    intermediate_size=64,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
)
PLACEMENTS = ["pfeiffer", "houlsby", "parallel"]
LANGS = ["en", "de", "sw"]


def make_model(family: str, seed: int = 0) -> nnx.Module:
    if family == "bert":
        m = bert.from_hf_config(
            BERT_HF, "sequence-classification", rngs=nnx.Rngs(seed), num_labels=3
        )
    else:
        m = llama.from_hf_config(LLAMA_HF, "causal-lm", rngs=nnx.Rngs(seed))
    m.eval()
    return m


def batch(b: int = 4, t: int = 8, seed: int = 0):
    rs = np.random.RandomState(seed)
    ids = jnp.asarray(rs.randint(1, VOCAB, (b, t)), jnp.int32)
    mask = jnp.ones((b, t), jnp.int32).at[0, -2:].set(0)
    return ids, mask


def params_of(model, filt) -> dict[str, np.ndarray]:
    return {
        ".".join(map(str, p)): np.asarray(v[...])
        for p, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Variable)
        and not isinstance(v, nnx.RngState)  # RNG keys and counters are not weights
        and nnx.filterlib.to_predicate(filt)(p, v)
    }


def randomize_up(model, seed: int = 1, scale: float = 0.5):
    """Give every up-projection a non-zero value (the identity init hides a dead adapter)."""
    key = jax.random.key(seed)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, AdapterParam) and path[-1] in ("up_kernel", "up_bias"):
            key, sub = jax.random.split(key)
            var[...] = scale * jax.random.normal(sub, var.shape, var.dtype)


# ---------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(placement="sideways"), "placement"),
        (dict(adapter_size=8, reduction_factor=4.0), "adapter_size"),
        (dict(adapter_size=0), "adapter_size"),
        (dict(layers="last:0"), "layers"),
        (dict(layers="first:2"), "layers"),
        (dict(layers=[1, 1]), "layers"),
        (dict(dropout=1.0), "dropout"),
        (dict(languages=["en", "en"]), "languages"),
        (dict(languages=["en"], fallback={"sw": "de"}), "fallback"),
        (dict(languages=["en"], default_fallback="de"), "default_fallback"),
        (dict(fallback={"sw": "en"}), "fallback"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"AdapterConfig.{field}"):
        AdapterConfig(**kwargs)


def test_config_sizes_and_layers():
    assert AdapterConfig().bottleneck_size(768) == 48  # reduction_factor 16 by default
    assert AdapterConfig(adapter_size=64).bottleneck_size(768) == 64
    assert AdapterConfig(reduction_factor=2.0).bottleneck_size(768) == 384
    assert AdapterConfig(layers="all").layer_indices(4) == [0, 1, 2, 3]
    assert AdapterConfig(layers="last:2").layer_indices(12) == [10, 11]
    assert AdapterConfig(layers="every:3").layer_indices(12) == [2, 5, 8, 11]
    assert AdapterConfig(layers=[11, 10]).layer_indices(12) == [10, 11]
    assert AdapterConfig(layers=[-1]).layer_indices(12) == [11]
    with pytest.raises(ValueError, match=r"layers=\[12\].*12 layers"):
        AdapterConfig(layers=[12]).layer_indices(12)
    cfg = AdapterConfig(languages=["en", "de"], fallback={"sw": "en"}, modules_to_save=["x"])
    assert AdapterConfig.from_json(cfg.to_json()) == cfg


# ------------------------------------------------------------------------- on the computation path


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_identity_at_init_then_on_the_path(family, placement):
    ids, mask = batch()
    model = make_model(family)
    base = np.asarray(model(ids, mask).logits)
    apply_adapters(model, AdapterConfig(placement=placement, adapter_size=4, layers="last:2"))
    wrappers = ad.adapter_layers(model)
    assert len(wrappers) == 2 * (2 if placement == "houlsby" else 1)
    # Identity start: exactly the base model's outputs.
    np.testing.assert_array_equal(np.asarray(model(ids, mask).logits), base)
    # A non-zero up-projection changes the outputs: the adapters are really called.
    randomize_up(model)
    assert np.abs(np.asarray(model(ids, mask).logits) - base).max() > 1e-3
    # Taking them out restores the base model.
    ad.remove_adapters(model)
    assert not ad.adapter_layers(model)
    np.testing.assert_array_equal(np.asarray(model(ids, mask).logits), base)


def test_identity_at_init_with_language_stacks():
    ids, mask = batch()
    model = make_model("llama")
    base = np.asarray(model(ids, mask).logits)
    apply_adapters(model, AdapterConfig(placement="houlsby", adapter_size=4, languages=LANGS))
    with with_routing(model, jnp.array([0, 2, -1, 1])):  # eager call: concrete ids are fine
        np.testing.assert_array_equal(np.asarray(model(ids, mask).logits), base)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_training_changes_only_adapters_and_saved_modules(family):
    ids, mask = batch()
    model = make_model(family)
    base = np.asarray(model(ids, mask).logits)
    apply_adapters(model, AdapterConfig(placement="houlsby", adapter_size=8, layers=[1]))
    filt = adapter_trainable_filter(model)
    before = params_of(model, ...)
    labels = jnp.arange(ids.shape[0]) % 3 if family == "bert" else ids
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=filt)

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            logits = m(ids, mask).logits.astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, filt))(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert np.abs(np.asarray(model(ids, mask).logits) - base).max() > 1e-3
    after = params_of(model, ...)
    trainable = set(params_of(model, filt))
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and changed <= trainable
    # Gradients reach every adapter weight: the up-projections move first (they start at zero,
    # so the down-projections get no gradient at step 1), then the down-projections.
    adapter_keys = set(params_of(model, AdapterParam))
    assert len(adapter_keys) == 2 * 4 and adapter_keys <= changed
    saves = ad.get_adapter_config(model).modules_to_save
    if family == "bert":  # the task head (model.head_modules) trains fully by default
        assert saves == ["classifier"]
        assert trainable == adapter_keys | {"classifier.kernel", "classifier.bias"} == changed
    else:  # the pretrained LM head is not a new head: nothing but adapters trains
        assert saves == [] and trainable == adapter_keys


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize(
    "cfg",
    [
        AdapterConfig(placement="pfeiffer", adapter_size=4, layers=[0]),
        AdapterConfig(placement="houlsby", reduction_factor=8.0, layers="every:2"),
        AdapterConfig(placement="parallel", adapter_size=6, layers="last:1"),
        AdapterConfig(placement="houlsby", adapter_size=3, languages=["en", "de", "sw"]),
        AdapterConfig(adapter_size=5, languages=["en", "de"], shared_task_adapter=False),
    ],
    ids=["pfeiffer", "houlsby-every2", "parallel", "houlsby-lang", "lang-no-shared"],
)
def test_parameter_count_matches_closed_form(family, cfg):
    model = apply_adapters(make_model(family), cfg)
    counted = sum(v.size for v in params_of(model, AdapterParam).values())
    assert counted == count_adapter_params(cfg, D, LAYERS)
    # The formula by hand for one case: 2 layers x 1 site x (2*32*4 + 4 + 32).
    assert count_adapter_params(AdapterConfig(adapter_size=4, layers=[0, 2]), 32, 3) == 2 * 292
    assert count_adapter_params(AdapterConfig(adapter_size=4, languages=["a", "b"]), 32, 3) == (
        3 * 3 * 292
    )


# --------------------------------------------------------------------------------- per-language


def lang_model(family, placement="houlsby", **kw):
    cfg = AdapterConfig(placement=placement, adapter_size=4, languages=LANGS, init="bert", **kw)
    model = apply_adapters(make_model(family), cfg, rngs=nnx.Rngs(3))
    randomize_up(model)  # make every language's adapter matter
    return model


_TRACES: list[int] = []


@jax.jit
def routed_jit(graph_state, ids, mask, language_id):
    # The lead's pattern: split outside, merge and route inside one jitted function.
    graph, state = graph_state
    _TRACES.append(1)
    model = nnx.merge(graph, state)
    with with_routing(model, language_id):
        return model(ids, mask).logits


def routed(model, ids, mask, rows) -> np.ndarray:
    return np.asarray(routed_jit(nnx.split(model), ids, mask, rows))


@pytest.mark.parametrize("family, placement", [("bert", "houlsby"), ("llama", "parallel")])
def test_mixed_language_batch_equals_each_example_alone(family, placement):
    model = lang_model(family, placement)
    ids, mask = batch(b=4)
    rows = jnp.array([2, 0, 1, -1], jnp.int32)
    call = routed
    mixed = call(model, ids, mask, rows)
    for i in range(4):
        alone = call(model, ids[i : i + 1], mask[i : i + 1], rows[i : i + 1])
        np.testing.assert_allclose(mixed[i], alone[0], rtol=1e-5, atol=1e-6)
    # Another mix of languages reuses the compiled program (no per-language recompiles).
    n = len(_TRACES)
    other = call(model, ids, mask, jnp.array([0, 0, 2, 1], jnp.int32))
    assert len(_TRACES) == n
    # The row really selects the weights: different languages give different outputs.
    assert np.abs(other[0] - mixed[0]).max() > 1e-4


def test_routing_follows_the_rows_of_the_stack():
    # Swapping two language rows in the weights and in the ids gives the same outputs.
    model = lang_model("bert")
    ids, mask = batch(b=3)
    call = routed
    before = call(model, ids, mask, jnp.array([0, 1, 2], jnp.int32))
    for _, wrapper in ad.adapter_layers(model).items():
        for name in ("down_kernel", "down_bias", "up_kernel", "up_bias"):
            var = getattr(wrapper.language_adapters, name)
            var[...] = var[...][jnp.array([2, 1, 0])]
    after = call(model, ids, mask, jnp.array([2, 1, 0], jnp.int32))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_fallback_rows_and_outputs():
    model = lang_model("bert", fallback={"yo": "sw"}, default_fallback="shared")
    rows = language_rows(model, ["de", "yo", "xx", "en", "sw"])
    np.testing.assert_array_equal(rows, [1, 2, -1, 0, 2])
    cfg = AdapterConfig(languages=LANGS, default_fallback="en")
    np.testing.assert_array_equal(language_rows(cfg, ["xx", "sw"]), [0, 2])

    ids, mask = batch(b=3)
    call = routed
    # A data pipeline's ids index the table: "yo" (no adapter) runs as "sw" does.
    graph, state = nnx.split(model)

    @jax.jit
    def by_table(state, ids, mask, lang_ids):
        m = nnx.merge(graph, state)
        with with_routing(m, lang_ids, table=rows):
            return m(ids, mask).logits

    same = np.asarray(by_table(state, ids, mask, jnp.array([1, 4, 2], jnp.int32)))
    ref = call(model, ids, mask, jnp.array([2, 2, -1], jnp.int32))
    np.testing.assert_allclose(same, ref, rtol=1e-6, atol=1e-6)
    # Row -1 ("shared"): only the shared task adapter, i.e. as if the language stack were zero.
    for wrapper in ad.adapter_layers(model).values():
        for name in ("up_kernel", "up_bias"):
            var = getattr(wrapper.language_adapters, name)
            var[...] = jnp.zeros_like(var[...])
    zeroed = call(model, ids, mask, jnp.array([0, 1, 2], jnp.int32))
    np.testing.assert_allclose(ref[2], zeroed[2], rtol=1e-6, atol=1e-6)


def test_routing_errors_are_explained():
    model = lang_model("bert")
    ids, mask = batch(b=2)
    with pytest.raises(ValueError, match="with_routing"):
        model(ids, mask)
    with pytest.raises(ValueError, match="2 examples"):
        with with_routing(model, jnp.array([0, 1, 2])):
            model(ids, mask)
    plain = apply_adapters(make_model("bert"), AdapterConfig(adapter_size=4))
    with pytest.raises(ValueError, match="no per-language adapters"):
        with with_routing(plain, jnp.array([0, 1])):
            pass
    # Routing opened outside jit would freeze the ids into the program: refused.
    graph, state = nnx.split(model)
    fwd = jax.jit(lambda s, i, m: nnx.merge(graph, s)(i, m).logits)
    with pytest.raises(ValueError, match="inside the jitted function"):
        with with_routing(model, jnp.array([0, 1])):
            fwd(state, ids, mask)
    with pytest.raises(ValueError, match="already has bottleneck adapters"):
        apply_adapters(model, AdapterConfig())


def test_dropout_follows_train_and_eval():
    ids, mask = batch()
    model = make_model("bert")
    apply_adapters(model, AdapterConfig(adapter_size=4, dropout=0.5, modules_to_save=[]))
    randomize_up(model)
    model.eval()
    a, b = model(ids, mask).logits, model(ids, mask).logits
    np.testing.assert_array_equal(a, b)
    model.train()
    wrapper = next(iter(ad.adapter_layers(model).values()))
    h = jnp.ones((2, 3, 64))  # the input of output.dense (intermediate size)
    assert not np.array_equal(wrapper(h), wrapper(h))  # fresh dropout masks each call


# ----------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_save_load_round_trip(tmp_path, family):
    ids, mask = batch(b=3)
    cfg = AdapterConfig(placement="houlsby", adapter_size=4, languages=["en", "de"], init="bert")
    model = apply_adapters(make_model(family), cfg, rngs=nnx.Rngs(7))
    randomize_up(model)
    if family == "bert":
        model.classifier.kernel[...] = model.classifier.kernel[...] + 1.0
    call = routed
    rows = jnp.array([1, 0, -1], jnp.int32)
    want = call(model, ids, mask, rows)
    folder = save_adapters(model, tmp_path / "adapters")
    meta = json.loads((folder / ad.CONFIG_FILE).read_text())
    assert meta["config"]["languages"] == ["en", "de"] and meta["num_layers"] == LAYERS
    weights = (folder / ad.WEIGHTS_FILE).stat().st_size
    n_params = sum(v.size for v in params_of(make_model(family), nnx.Param).values())
    assert weights < 0.5 * 4 * n_params  # adapter-only: far smaller than the model

    fresh = make_model(family)  # same base weights (same seed), no adapters yet
    load_adapters(fresh, folder)
    np.testing.assert_array_equal(call(fresh, ids, mask, rows), want)
    assert ad.get_adapter_config(fresh) == ad.get_adapter_config(model)

    other = apply_adapters(make_model(family), AdapterConfig(adapter_size=4))
    with pytest.raises(ValueError, match="load_adapters"):
        load_adapters(other, folder)


# ------------------------------------------------------------------------------------------ LoRA


@pytest.mark.parametrize("lora_first", [True, False])
def test_adapters_and_lora_together(lora_first):
    from langtune_jax.peft import lora

    ids, mask = batch()
    model = make_model("bert")
    base = np.asarray(model(ids, mask).logits)
    lcfg = lora.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "dense"])
    acfg = AdapterConfig(placement="houlsby", adapter_size=4)
    if lora_first:
        lora.apply_lora(model, lcfg)
        apply_adapters(model, acfg)
        paths = ad.adapter_layers(model)
        # The adapter wraps the LoRA layer: adapter(lora(x)).
        assert isinstance(paths["bert.encoder.layer.0.output.dense"].base_layer, lora.LoRALinear)
    else:
        apply_adapters(model, acfg)
        # LoRA wraps the dense inside the adapter wrapper (its path gains ".base_layer").
        lcfg = lora.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "base_layer"])
        lora.apply_lora(model, lcfg)
    assert isinstance(
        model.bert.encoder.layer[0].attention.output.dense, AdapterWrapper
    ) and isinstance(model.bert.encoder.layer[0].attention.self.query, lora.LoRALinear)
    np.testing.assert_array_equal(np.asarray(model(ids, mask).logits), base)
    if not lora_first:  # same function either way; the path check is enough here
        randomize_up(model)
        assert np.abs(np.asarray(model(ids, mask).logits) - base).max() > 1e-3
        return

    filt = nnx.Any(lora.trainable_filter(model), adapter_trainable_filter(model))
    before = params_of(model, ...)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=filt)
    labels = jnp.array([0, 1, 2, 0])

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            logits = m(ids, mask).logits
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, filt))(model)
        opt.update(model, grads)

    for _ in range(3):
        step(model, opt)
    after = params_of(model, ...)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed <= set(params_of(model, filt))
    assert any("lora_B" in k for k in changed) and any(k.endswith("up_kernel") for k in changed)
    assert np.abs(np.asarray(model(ids, mask).logits) - base).max() > 1e-4


def routed_on_mesh(model, ids, mask, rows):
    """The routed forward with the model's state and the batch placed on a (data 2, fsdp 2,
    tensor 2) mesh of the 8 simulated devices: ``(outputs, the placed state)``."""
    from langtune_jax.train import mesh as mesh_lib

    mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
    graph, state = nnx.split(model)
    state = jax.device_put(state, mesh_lib.state_shardings(state, mesh))
    placed = mesh_lib.put_batch(
        {"ids": np.asarray(ids), "mask": np.asarray(mask), "rows": np.asarray(rows)}, mesh
    )
    out = routed_jit((graph, state), placed["ids"], placed["mask"], placed["rows"])
    return np.asarray(out), state


def test_sharded_routed_forward_matches_unsharded():
    # Adapter weights carry logical axes (EMBED on D), so the lead's rules place them on a mesh.
    model = lang_model("bert")
    ids, mask = batch(b=4)
    rows = jnp.array([2, 0, 1, -1], jnp.int32)
    want = routed(model, ids, mask, rows)
    got, state = routed_on_mesh(model, ids, mask, rows)
    kernel = state["bert"]["encoder"]["layer"][0]["output"]["dense"]["language_adapters"]
    assert kernel["down_kernel"][...].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", None
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
