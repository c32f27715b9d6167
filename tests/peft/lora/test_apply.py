"""apply_lora: identity at init, what trains, biases, dropout, scales and inits as in PEFT, named adapters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from peft import LoraConfig as TorchLoraConfig
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import BertForSequenceClassification as HFBert

from langtune_jax.peft import (
    LoraConfig,
    LoRALinear,
    LoRAParam,
    active_adapters,
    adapter_names_of,
    apply_lora,
    delete_adapter,
    lora_layers,
    set_adapter,
    trainable_filter,
    trainable_summary,
)
from tests.peft.lora.helpers import (
    HF_CFG,
    MLP,
    batch,
    bert_loss,
    flat,
    tiny_bert,
    train_steps,
)


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
