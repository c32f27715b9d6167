"""Per-example LoRA routing: a mixed batch equals each adapter alone; gradients reach only the used ones."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from langtune_jax.peft import (
    LoraConfig,
    adapter_routing,
    apply_lora,
    set_adapter,
    trainable_filter,
)
from tests.peft.lora.helpers import (
    MLP,
    batch,
    logits_of,
    tiny_bert,
)


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
