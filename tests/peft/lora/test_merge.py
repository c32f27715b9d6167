"""merge_lora / unmerge_lora: the merged kernel equals the adapted forward; shardings are kept."""

import jax
import numpy as np
from flax import nnx

from langtune_jax.peft import (
    LoraConfig,
    adapter_names_of,
    apply_lora,
    lora_layers,
    merge_and_unload,
    merge_lora,
    unmerge_lora,
)
from tests.peft.lora.helpers import (
    MLP,
    batch,
    flat,
    logits_of,
    tiny_bert,
)


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
