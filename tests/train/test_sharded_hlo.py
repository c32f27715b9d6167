"""The LoRA train step of a BERT classifier on a (data 2, fsdp 2, tensor 2) mesh of 8 simulated CPU
devices: compiles, keeps tensor parallelism (no device ever all-gathers a whole weight matrix that
is split over both fsdp and tensor), pins activations to their logical axes, and remat policies
leave the step's numbers unchanged."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from langtune_jax.models import bert as bert_lib
from langtune_jax.models.common import set_remat
from langtune_jax.peft import LoraConfig, apply_lora, trainable_filter
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train.step import make_train_step, split_model

# Distinct sizes, so an HLO shape names the weight it belongs to.
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    labels=("a", "b", "c", "d"),
)


def _compiled_step(mesh, remat="none"):
    model = bert_lib.BertForSequenceClassification(bert_lib.BertConfig(**TINY), rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(r=4, target_modules=["query", "value"]), rngs=nnx.Rngs(1))
    set_remat(model, remat)
    split = split_model(model, trainable_filter(model))
    tx = optax.adamw(1e-2)
    shard = {k: mesh_lib.state_shardings(getattr(split, k), mesh)
             for k in ("trainable", "frozen", "mutable")}  # fmt: skip
    trainable = jax.device_put(split.trainable, shard["trainable"])
    opt_state = tx.init(trainable)
    shard["opt_state"] = mesh_lib.opt_state_shardings(tx, opt_state, shard["trainable"], mesh)
    state = (
        trainable,
        jax.device_put(opt_state, shard["opt_state"]),
        jax.device_put(split.mutable, shard["mutable"]),
        jax.device_put(split.frozen, shard["frozen"]),
    )
    step = make_train_step(
        split, tx, task="sequence-classification", mesh=mesh, param_shardings=shard
    )
    rng = np.random.RandomState(0)
    host = {
        "input_ids": rng.randint(3, 128, (8, 16)).astype(np.int32),
        "attention_mask": np.ones((8, 16), np.int32),
        "labels": rng.randint(0, 4, 8).astype(np.int32),
    }
    batch = mesh_lib.put_batch(host, mesh)
    return step, state, batch, split


def _weights_split_two_ways(split, mesh):
    """Shapes of the 2-D weights sharded over both fsdp and tensor (never gathered whole)."""
    out = set()
    for state in (split.frozen, split.trainable):
        shard = mesh_lib.state_shardings(state, mesh)
        for var, sh in zip(
            jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)),
            jax.tree.leaves(shard, is_leaf=lambda x: isinstance(x, nnx.Variable)),
        ):
            spec = tuple(sh.get_value().spec)
            if var.get_value().ndim == 2 and {"fsdp", "tensor"} <= set(spec):
                out.add(tuple(var.get_value().shape))
    return out


def test_fsdp_tensor_mesh_never_gathers_a_whole_weight():
    mesh = mesh_lib.make_mesh(2, 2, 2)
    step, state, batch, split = _compiled_step(mesh)
    hlo = step.lower(*state, batch).compile().as_text()
    two_way = _weights_split_two_ways(split, mesh)
    assert {(64, 64), (64, 96), (96, 64)} <= two_way  # attention and MLP kernels
    gathered = set()
    for line in hlo.splitlines():
        m = re.search(r"= \w+\[([\d,]+)\]\{[^}]*\} all-gather\(", line)
        if m:
            gathered.add(tuple(int(d) for d in m.group(1).split(",")))
    assert gathered, "expected FSDP all-gathers in the compiled step"
    whole = gathered & two_way
    assert not whole, f"all-gathers of whole weight matrices: {sorted(whole)}"
    # activations are constrained at layer boundaries: hidden states [B, T, D] stay batch-split
    assert "sharding_constraint" in step.lower(*state, batch).as_text()


@pytest.mark.parametrize("remat", ["dots-saveable", "full"])
def test_remat_policies_keep_the_step_exact(remat):
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    outs = []
    for policy in ("none", remat):
        step, state, batch, _ = _compiled_step(mesh, policy)
        trainable, _, _, metrics = step(*state, batch)
        outs.append((float(metrics["loss"]), float(metrics["grad_norm"]), trainable))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-6)
    assert outs[0][1] == pytest.approx(outs[1][1], rel=1e-5)
    for a, b in zip(jax.tree.leaves(outs[0][2]), jax.tree.leaves(outs[1][2])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_full_remat_recomputes_the_forward_matmuls():
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    dots = {}
    for policy in ("none", "full"):
        step, state, batch, _ = _compiled_step(mesh, policy)
        hlo = step.lower(*state, batch).compile().as_text()
        dots[policy] = len(re.findall(r" dot\(", hlo))
    assert dots["full"] > dots["none"]  # the policy reached the program: forward dots run twice


def _dots(num_layers: int, lora_layer: int) -> int:
    cfg = bert_lib.BertConfig(**{**TINY, "num_hidden_layers": num_layers})
    model = bert_lib.BertForSequenceClassification(cfg, rngs=nnx.Rngs(0))
    lora = LoraConfig(r=4, target_modules=["query", "value"], layers_to_transform=[lora_layer])
    apply_lora(model, lora, rngs=nnx.Rngs(1))
    split = split_model(model, trainable_filter(model))
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    shard = {k: mesh_lib.state_shardings(getattr(split, k), mesh)
             for k in ("trainable", "frozen", "mutable")}  # fmt: skip
    tx = optax.sgd(1e-2)
    opt_state = tx.init(split.trainable)
    shard["opt_state"] = mesh_lib.opt_state_shardings(tx, opt_state, shard["trainable"], mesh)
    step = make_train_step(
        split, tx, task="sequence-classification", mesh=mesh, param_shardings=shard
    )
    batch = {
        "input_ids": jnp.ones((2, 8), jnp.int32),
        "attention_mask": jnp.ones((2, 8), jnp.int32),
        "labels": jnp.zeros((2,), jnp.int32),
    }
    hlo = step.lower(split.trainable, opt_state, split.mutable, split.frozen, batch).as_text()
    return len(re.findall(r"stablehlo.dot_general", hlo))


def test_no_backward_work_below_the_lowest_trained_layer():
    # Adding a frozen layer *below* the only LoRA layer adds its forward dots only (8: q, k, v,
    # scores, context, output, up, down) and no gradient dots: JAX differentiates nothing that
    # does not depend on a trainable variable, embeddings included, without any stop_gradient.
    assert _dots(3, lora_layer=2) - _dots(2, lora_layer=1) == 8
    # ...whereas a frozen layer *above* it needs its input gradients (more than its 8 forward dots).
    assert _dots(3, lora_layer=0) - _dots(2, lora_layer=0) > 8
