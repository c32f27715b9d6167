"""LoRA behaviour: identity at init, what trains, merge, scales as in PEFT, adapters, routing."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import yaml
from flax import nnx
from peft import LoraConfig as TorchLoraConfig
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import BertConfig as HFBertConfig
from transformers import BertForSequenceClassification as HFBert

from langtune_jax.models import bert
from langtune_jax.peft import (
    LoraConfig,
    LoRALinear,
    LoRAParam,
    active_adapters,
    adapter_names_of,
    adapter_routing,
    apply_lora,
    delete_adapter,
    lora_layers,
    merge_and_unload,
    merge_lora,
    set_adapter,
    trainable_filter,
    trainable_summary,
    unmerge_lora,
)
from langtune_jax.peft.lora import resolve_config

HF_CFG = HFBertConfig(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    num_labels=3,
    max_position_embeddings=64,
)


class MLP(nnx.Module):
    """A user-written NNX model (no config, no head_modules)."""

    def __init__(self, rngs, dropout=0.0):
        self.layers = nnx.List([nnx.Linear(8, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs)])
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(self.drop(x))


@functools.cache
def _bert_base():
    model = bert.from_hf_config(
        HF_CFG.to_dict(), "sequence-classification", rngs=nnx.Rngs(0), num_labels=3
    )
    model.eval()
    return model


def tiny_bert():
    """A fresh copy of one random tiny BERT classifier (built once: initialisation is slow)."""
    return nnx.clone(_bert_base())


def batch(seed=0, b=4, t=9):
    rng = np.random.RandomState(seed)
    ids = jnp.asarray(rng.randint(1, 100, (b, t)))
    mask = jnp.asarray((np.arange(t)[None] < rng.randint(3, t + 1, (b, 1))).astype(np.int32))
    return ids, mask, jnp.asarray(rng.randint(0, 3, (b,)))


def train_steps(model, loss_fn, n=3, lr=1e-2, adapter_name=None):
    """A few Adam steps on the trainable filter only (as the training loop does)."""
    filt = trainable_filter(model, adapter_name)
    opt = nnx.Optimizer(model, optax.adam(lr), wrt=filt)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, filt))(model)
        opt.update(model, grads)
        return loss

    return [float(step(model, opt)) for _ in range(n)]


def logits_of(model, ids, mask):
    # Eager on purpose: after the first call every op is cached, cheaper than a compile per test.
    return model(ids, attention_mask=mask).logits


def bert_loss(model):
    ids, mask, labels = batch()
    logits = model(ids, attention_mask=mask).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def flat(model, filt=...):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, filt))}


# ------------------------------------------------------------------------------------ config


def test_seed_yaml_config_constructs():
    text = """
    r: 8
    lora_alpha: 32
    target_modules: [q_proj, v_proj]
    lora_dropout: 0.1
    bias: none
    task_type: CAUSAL_LM
    """
    cfg = LoraConfig(**yaml.safe_load(text))
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.bias) == (8, 32, 0.1, "none")
    assert cfg.target_modules == ["q_proj", "v_proj"] and cfg.task_type == "CAUSAL_LM"
    assert cfg.scaling("model.layers.0.self_attn.q_proj") == 4.0


def test_task_type_adds_the_head_to_modules_to_save():
    mlp = MLP(nnx.Rngs(0))
    resolved = resolve_config(mlp, LoraConfig(task_type="TOKEN_CLS", target_modules=["0"]))
    assert resolved.modules_to_save is None  # no head_modules, no "classifier"/"score" module
    mlp.head_modules = ("head",)
    resolved = resolve_config(mlp, LoraConfig(task_type="TOKEN_CLS", target_modules=["0"]))
    assert resolved.modules_to_save == ["head"]
    assert resolve_config(tiny_bert(), LoraConfig(task_type="SEQ_CLS")).modules_to_save == [
        "classifier"
    ]
    assert resolve_config(tiny_bert(), LoraConfig()).target_modules == ["query", "value"]


def test_defaults_match_peft():
    ours, theirs = LoraConfig(), TorchLoraConfig()
    for field in ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "init_lora_weights"):
        assert getattr(ours, field) == getattr(theirs, field), field


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(r=0), "r="),
        (dict(lora_dropout=1.0), "lora_dropout"),
        (dict(bias="some"), "bias"),
        (dict(init_lora_weights="olora"), "init_lora_weights"),
        (dict(task_type="CLS"), "task_type"),
        (dict(layers_pattern="layer"), "layers_pattern"),
        (dict(target_modules="q.*", layers_to_transform=[0]), "layers_to_transform"),
        (dict(rank_pattern={"q": 0}), "rank_pattern"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LoraConfig(**kwargs)


# ------------------------------------------------------------------------- identity, training


def test_identity_at_init_exact_bert_and_mlp():
    model = tiny_bert()
    ids, mask, _ = batch()
    # Eager (op by op): the same kernels run with and without LoRA, so equality is bitwise.
    before = np.asarray(model(ids, attention_mask=mask).logits)
    apply_lora(model, LoraConfig(task_type="SEQ_CLS", target_modules="all-linear"))
    query = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, LoRALinear) and isinstance(query.lora_A["default"], LoRAParam)
    assert np.array_equal(np.asarray(model(ids, attention_mask=mask).logits), before)

    mlp = MLP(nnx.Rngs(0))
    x = jnp.ones((2, 8))
    before = np.asarray(mlp(x))
    apply_lora(mlp, LoraConfig(target_modules=["0", "1"], init_lora_weights="gaussian"))
    assert np.array_equal(np.asarray(mlp(x)), before)


def test_only_lora_and_modules_to_save_train_bert():
    model = tiny_bert()
    apply_lora(model, LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS"))
    summary = trainable_summary(model)
    n_lora = 2 * 2 * (32 * 4 + 4 * 32)  # 2 layers x (query, value) x (A + B)
    n_head = 32 * 3 + 3
    assert summary.startswith(f"trainable params: {n_lora + n_head:,d} || all params: ")
    frozen_before = flat(model, nnx.All(nnx.Param, nnx.Not(trainable_filter(model))))
    train_before = flat(model, trainable_filter(model))
    losses = train_steps(model, bert_loss)
    assert losses[-1] < losses[0]
    frozen_after = flat(model, nnx.All(nnx.Param, nnx.Not(trainable_filter(model))))
    assert frozen_after.keys() == frozen_before.keys()
    for path, value in frozen_before.items():
        assert np.array_equal(frozen_after[path], value), path
    changed = {p for p, v in flat(model, trainable_filter(model)).items()
               if not np.array_equal(v, train_before[p])}  # fmt: skip
    assert changed == set(train_before)  # every LoRA factor and the classifier moved
    assert any(p[0] == "classifier" for p in changed)


def test_bias_options_pick_biases():
    model = tiny_bert()
    apply_lora(model, LoraConfig(r=2, bias="lora_only"))
    biases = [p for p in flat(model, trainable_filter(model)) if p[-1] == "bias"]
    # A classifier without task_type/modules_to_save trains its head (the SEQ_CLS default).
    assert ("classifier", "bias") in biases
    biases = [p for p in biases if p[0] != "classifier"]
    assert len(biases) == 4 and all(p[-2] == "base_layer" for p in biases)
    model = tiny_bert()
    apply_lora(model, LoraConfig(r=2, bias="all"))
    all_biases = [p for p in flat(model, nnx.Param) if p[-1] == "bias"]
    assert set(all_biases) <= set(flat(model, trainable_filter(model)))


def test_mlp_training_and_dropout():
    mlp = MLP(nnx.Rngs(0))
    apply_lora(mlp, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", lora_dropout=0.5,
                               modules_to_save=["head"]))  # fmt: skip
    assert sorted(lora_layers(mlp)) == ["layers.0", "layers.1"]  # head is trained fully instead
    x = jax.random.normal(jax.random.key(0), (6, 8))
    frozen = flat(mlp, nnx.All(nnx.Param, nnx.Not(trainable_filter(mlp))))
    train_steps(mlp, lambda m: (m(x) ** 2).mean(), n=2)
    for path, value in flat(mlp, nnx.All(nnx.Param, nnx.Not(trainable_filter(mlp)))).items():
        assert np.array_equal(value, frozen[path]), path
    mlp.train()  # dropout on the LoRA branch only in training
    assert not np.allclose(mlp(x), mlp(x))
    mlp.eval()
    np.testing.assert_array_equal(mlp(x), mlp(x))


# ------------------------------------------------------------------------------------- merge


def test_merge_unmerge_bert():
    model = tiny_bert()
    # init_lora_weights=False: B is random, so the adapter is not the identity (no training needed).
    apply_lora(model, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear",
                                 task_type="SEQ_CLS", init_lora_weights=False))  # fmt: skip
    ids, mask, _ = batch(1)
    kernels = flat(model, nnx.Param)
    ref = np.asarray(logits_of(model, ids, mask))
    merge_lora(model)
    assert all(layer.merged_adapters == ("default",) for layer in lora_layers(model).values())
    np.testing.assert_allclose(logits_of(model, ids, mask), ref, atol=1e-5)
    unmerge_lora(model)
    np.testing.assert_allclose(logits_of(model, ids, mask), ref, atol=1e-5)
    for path, value in flat(model, nnx.Param).items():
        np.testing.assert_allclose(value, kernels[path], atol=1e-6)
    merge_and_unload(model)
    assert not lora_layers(model) and not adapter_names_of(model)
    np.testing.assert_allclose(logits_of(model, ids, mask), ref, atol=1e-5)


def test_merge_keeps_sharding_on_8_devices():
    auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(auto, auto))
    spec = jax.sharding.PartitionSpec("data", "model")
    model = MLP(nnx.Rngs(0))
    for layer in model.layers:  # a tensor-parallel placement of the kernels
        layer.kernel.value = jax.device_put(
            layer.kernel.value, jax.sharding.NamedSharding(mesh, spec)
        )
    apply_lora(model, LoraConfig(r=4, target_modules=["0", "1"], init_lora_weights=False))
    lora = model.layers[1]
    assert lora.lora_A["default"].value.sharding.spec == jax.sharding.PartitionSpec("data", None)
    assert lora.lora_B["default"].value.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    x = jax.random.normal(jax.random.key(0), (4, 8))
    ref = np.asarray(model(x))
    expected = np.asarray(lora.base_layer.kernel.value) + np.asarray(lora.delta("default"))
    merge_lora(model)
    merged = lora.base_layer.kernel.value
    assert merged.sharding == jax.sharding.NamedSharding(mesh, spec)
    np.testing.assert_allclose(np.asarray(merged), expected, atol=1e-6)
    np.testing.assert_allclose(model(x), ref, atol=1e-5)


# ---------------------------------------------------------------------- scales and inits vs PEFT


def test_scaling_and_ranks_match_peft():
    kwargs = dict(
        r=8,
        lora_alpha=16,
        target_modules=["query", "value", "key"],
        use_rslora=True,
        rank_pattern={"layer.1.attention.self.query": 4, "key": 2},
        alpha_pattern={"value": 32},
    )
    torch.manual_seed(0)
    peft_model = get_peft_model(HFBert(HF_CFG), TorchLoraConfig(**kwargs))
    expected = {
        n.removeprefix("base_model.model."): (m.scaling["default"], m.r["default"])
        for n, m in peft_model.named_modules()
        if isinstance(m, LoraLayer)
    }
    model = tiny_bert()
    apply_lora(model, LoraConfig(**kwargs))
    ours = {p: (layer.scaling["default"], layer.lora_A["default"].value.shape[1])
            for p, layer in lora_layers(model).items()}  # fmt: skip
    assert ours.keys() == expected.keys()
    for path, (scale, r) in expected.items():
        assert ours[path][1] == r, path
        assert ours[path][0] == pytest.approx(scale, rel=1e-12), path
    # default, rank_pattern (query of layer 1 and key) and alpha_pattern (value) scales:
    assert {round(s, 6) for s, _ in expected.values()} == {
        round(16 / 8**0.5, 6),
        round(16 / 4**0.5, 6),
        round(16 / 2**0.5, 6),
        round(32 / 8**0.5, 6),
    }


def test_init_kinds():
    layer = nnx.Linear(64, 48, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (5, 64))
    ref = np.asarray(layer(x))
    for kind in (True, "gaussian", False, "pissa"):
        wrapped = LoRALinear(nnx.clone(layer))
        wrapped.add_adapter("a", r=8, scaling=2.0, dropout=0.0, init=kind, rngs=nnx.Rngs(2))
        a, b = wrapped.lora_A["a"].value, wrapped.lora_B["a"].value
        assert a.shape == (64, 8) and b.shape == (8, 48)
        out = np.asarray(wrapped(x))
        if kind is True:  # kaiming-uniform(a=sqrt(5)) bound 1/sqrt(in); B = 0
            assert np.abs(a).max() <= 1 / 8 and np.abs(a).max() > 0.1 and not np.any(b)
            np.testing.assert_array_equal(out, ref)
        elif kind == "gaussian":  # N(0, 1/r)
            assert abs(float(jnp.std(a)) - 1 / 8) < 0.02 and not np.any(b)
        elif kind is False:  # not the identity
            assert np.any(b) and not np.allclose(out, ref, atol=1e-3)
        else:  # PiSSA: principal part in A B, residual in the kernel; output unchanged
            np.testing.assert_allclose(out, ref, atol=1e-5)
            s_full = np.linalg.svd(np.asarray(layer.kernel.value), compute_uv=False)
            s_res = np.linalg.svd(np.asarray(wrapped.base_layer.kernel.value), compute_uv=False)
            np.testing.assert_allclose(s_res[:8], s_full[8:16], rtol=1e-4)


# ---------------------------------------------------------------------------- named adapters


def test_named_adapters_add_switch_delete():
    mlp = MLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (3, 8))
    base = np.asarray(mlp(x))
    apply_lora(mlp, LoraConfig(r=2, target_modules=["0", "1"], init_lora_weights=False))
    apply_lora(mlp, LoraConfig(r=4, target_modules=["1"], init_lora_weights=False),
               adapter_name="other", rngs=nnx.Rngs(5))  # fmt: skip
    assert adapter_names_of(mlp) == ("default", "other")
    assert active_adapters(mlp) == ("default",)  # PEFT: a new adapter starts inactive
    y_default = np.asarray(mlp(x))
    set_adapter(mlp, "other")
    y_other = np.asarray(mlp(x))
    assert not np.allclose(y_default, y_other)
    assert model_params(mlp, "other") == 16 * 4 + 4 * 16  # layers.1 only
    with pytest.raises(ValueError, match="no adapter named \\['nope'\\]"):
        set_adapter(mlp, "nope")
    with pytest.raises(ValueError, match="already exists"):
        apply_lora(mlp, LoraConfig(target_modules=["1"]), adapter_name="other")
    delete_adapter(mlp, "other")
    assert active_adapters(mlp) == ("default",)
    np.testing.assert_allclose(mlp(x), y_default, atol=1e-6)
    delete_adapter(mlp, "default")
    assert type(mlp.layers[0]) is nnx.Linear and not adapter_names_of(mlp)
    np.testing.assert_array_equal(mlp(x), base)


def model_params(model, adapter_name):
    state = nnx.state(model, trainable_filter(model, adapter_name))
    return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(state))


# ----------------------------------------------------------------------- per-example routing


def _three_adapters(model, targets, **kw):
    for i, name in enumerate(["sw", "yo", "ha"]):
        cfg = LoraConfig(r=2 + 2 * i, lora_alpha=4, target_modules=targets,
                         init_lora_weights=False, **kw)  # fmt: skip
        apply_lora(model, cfg, adapter_name=name, rngs=nnx.Rngs(10 + i))
    return model


def test_routing_mixed_batch_equals_single_runs_mlp():
    mlp = _three_adapters(MLP(nnx.Rngs(0)), ["0", "1"])
    x = jax.random.normal(jax.random.key(0), (5, 8))
    ids = jnp.array([2, 0, -1, 1, 0])
    traces = []

    @nnx.jit
    def routed(model, x, ids):
        traces.append(1)
        with adapter_routing(model, ids):
            return model(x)

    mixed = np.asarray(routed(mlp, x, ids))
    routed(mlp, x, jnp.array([1, 1, 2, 0, -1]))  # another mix: same program
    assert len(traces) == 1
    names = ["sw", "yo", "ha"]
    for i, a in enumerate(np.asarray(ids)):
        set_adapter(mlp, names[a] if a >= 0 else [])
        np.testing.assert_allclose(mixed[i], np.asarray(mlp(x[i : i + 1]))[0], atol=1e-5)


def test_routing_bert_and_gradients_reach_only_used_adapters():
    model = _three_adapters(tiny_bert(), ["query", "value"], task_type="SEQ_CLS")
    ids, mask, labels = batch(2, b=3)
    routes = jnp.array([1, 0, 1])

    def loss(model, routes):
        with adapter_routing(model, routes):
            logits = model(ids, attention_mask=mask).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    filt = trainable_filter(model)
    (_, mixed), grads = nnx.jit(
        lambda m, r: nnx.value_and_grad(loss, argnums=nnx.DiffState(0, filt), has_aux=True)(m, r)
    )(model, routes)
    for i, name in enumerate(["yo", "sw", "yo"]):
        set_adapter(model, name)
        alone = logits_of(model, ids[i : i + 1], mask[i : i + 1])
        np.testing.assert_allclose(mixed[i], alone[0], atol=1e-5)
    norms = {}
    for path, g in nnx.to_flat_state(grads):
        if path[-1] in ("sw", "yo", "ha"):
            norms[path[-1]] = norms.get(path[-1], 0.0) + float(jnp.sum(g.get_value() ** 2))
    assert norms["ha"] == 0.0 and norms["sw"] > 0 and norms["yo"] > 0


def test_routing_outside_jit_is_refused():
    mlp = _three_adapters(MLP(nnx.Rngs(0)), ["0"])
    x = jnp.ones((2, 8))
    with adapter_routing(mlp, jnp.array([0, 1])):
        eager = mlp(x)  # eager use is fine
        with pytest.raises(ValueError, match="inside the jitted function"):
            nnx.jit(lambda m, x: m(x))(mlp, x)
    assert eager.shape == (2, 3)
    with pytest.raises(ValueError, match="not on this model"):
        with adapter_routing(mlp, jnp.array([0, 1]), ["xx"]):
            pass
