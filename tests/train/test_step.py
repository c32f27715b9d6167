"""The jitted train step: sharded meshes equal one device, accumulation equals one big batch, frozen
parameters stay put, and padding / ignored labels never count in the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from langtune_jax.models.common import EMBED, MLP, VOCAB, ModelOutput, with_axes
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train.step import make_eval_step, make_train_step, split_model, task_loss

VOCAB_SIZE, D, H, CLASSES = 64, 16, 32, 4


class ToyClassifier(nnx.Module):
    """Embedding -> mean pool -> MLP -> classifier, with logical axes and dropout."""

    def __init__(self, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.2)
        self.embed = nnx.Embed(
            VOCAB_SIZE, D, embedding_init=with_axes(init, VOCAB, EMBED), rngs=rngs
        )
        self.hidden = nnx.Linear(D, H, kernel_init=with_axes(init, EMBED, MLP), rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.classifier = nnx.Linear(H, CLASSES, kernel_init=with_axes(init, MLP, None), rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, **_):
        x = self.embed(input_ids)  # [B, T, D]
        m = attention_mask[..., None].astype(x.dtype)
        pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1.0)  # [B, D]
        h = self.dropout(jax.nn.gelu(self.hidden(pooled)))
        return ModelOutput(logits=self.classifier(h))


def _batch(n=16, t=8, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, t), np.int32)
    mask[::3, t // 2 :] = 0
    return {
        "input_ids": rng.integers(0, VOCAB_SIZE, (n, t)).astype(np.int32),
        "attention_mask": mask,
        "labels": rng.integers(0, CLASSES, (n,)).astype(np.int32),
        "example_mask": np.ones((n,), np.int32),
    }


def _run(mesh, steps=3, accum=1, trainable=nnx.Param):
    model = ToyClassifier(rngs=nnx.Rngs(0))
    model.dropout.rate = 0.0  # deterministic comparison across meshes
    split = split_model(model, trainable)
    tx = optax.adamw(1e-2)
    shard = {
        "trainable": mesh_lib.state_shardings(split.trainable, mesh),
        "frozen": mesh_lib.state_shardings(split.frozen, mesh),
        "mutable": mesh_lib.state_shardings(split.mutable, mesh),
    }
    trainable_state = jax.device_put(split.trainable, shard["trainable"])
    opt_state = tx.init(trainable_state)
    shard["opt_state"] = mesh_lib.opt_state_shardings(tx, opt_state, shard["trainable"], mesh)
    opt_state = jax.device_put(opt_state, shard["opt_state"])
    frozen = jax.device_put(split.frozen, shard["frozen"])
    mutable = jax.device_put(split.mutable, shard["mutable"])
    step = make_train_step(
        split,
        tx,
        task="sequence-classification",
        mesh=mesh,
        param_shardings=shard,
        grad_accum_steps=accum,
    )
    losses = []
    for i in range(steps):
        batch = mesh_lib.put_batch(_batch(seed=i), mesh)
        trainable_state, opt_state, mutable, metrics = step(
            trainable_state, opt_state, mutable, frozen, batch
        )
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, trainable_state), jax.tree.map(np.asarray, frozen)


@pytest.fixture(scope="module")
def reference():
    return _run(mesh_lib.make_mesh(devices=jax.devices()[:1]))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_step_matches_one_device(reference, shape):
    ref_losses, ref_params, _ = reference
    losses, params, _ = _run(mesh_lib.make_mesh(*shape))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, ref_params
    )


def test_grad_accumulation_equals_full_batch(reference):
    ref_losses, ref_params, _ = reference
    losses, params, _ = _run(mesh_lib.make_mesh(devices=jax.devices()[:1]), accum=4)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, ref_params
    )


def test_frozen_parameters_do_not_change():
    only_classifier = nnx.All(nnx.Param, nnx.PathContains("classifier"))
    model = ToyClassifier(rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    _, trained, frozen = _run(
        mesh_lib.make_mesh(devices=jax.devices()[:1]), trainable=only_classifier
    )
    assert {path for path, _ in trained.flat_state()} == {
        ("classifier", "bias"),
        ("classifier", "kernel"),
    }
    before_flat = dict(before.flat_state())
    for path, var in frozen.flat_state():
        np.testing.assert_array_equal(var.get_value(), before_flat[path].get_value())
    assert not np.allclose(
        trained["classifier"]["kernel"].get_value(), before["classifier"]["kernel"].get_value()
    )


def test_loss_ignores_padding_rows_and_ignored_labels():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    batch = {"labels": jnp.array([0, 0, 1]), "example_mask": jnp.array([1, 1, 0])}
    loss_sum, count = task_loss(logits, batch, "sequence-classification")
    expected = -jax.nn.log_softmax(logits[0])[0] - jax.nn.log_softmax(logits[1])[0]
    assert float(count) == 2.0
    np.testing.assert_allclose(float(loss_sum), float(expected), rtol=1e-6)

    tok_logits = jnp.zeros((1, 3, 4))
    tok = {"labels": jnp.array([[1, -100, 2]])}
    loss_sum, count = task_loss(tok_logits, tok, "token-classification")
    assert float(count) == 2.0
    np.testing.assert_allclose(float(loss_sum), 2 * np.log(4), rtol=1e-6)


def test_causal_loss_shifts_and_respects_segments():
    vocab = 5
    logits = jax.random.normal(jax.random.key(0), (1, 4, vocab))
    ids = jnp.array([[1, 2, 3, 4]])
    batch = {"labels": ids, "segment_ids": jnp.array([[1, 1, 2, 2]])}
    loss_sum, count = task_loss(logits, batch, "causal-lm")
    logp = jax.nn.log_softmax(logits[0])
    # targets: position 0 -> token 2, position 2 -> token 4; position 1 -> 3 crosses segments
    expected = -(logp[0, 2] + logp[2, 4])
    assert float(count) == 2.0
    np.testing.assert_allclose(float(loss_sum), float(expected), rtol=1e-6)


def test_eval_step_predictions_match_eager_forward():
    mesh = mesh_lib.make_mesh(2, 2, 2)
    model = ToyClassifier(rngs=nnx.Rngs(1))
    split = split_model(model, nnx.Param)
    shard = {
        k: mesh_lib.state_shardings(getattr(split, k), mesh)
        for k in ("trainable", "frozen", "mutable")
    }
    evaluate = make_eval_step(
        split, task="sequence-classification", mesh=mesh, param_shardings=shard
    )
    host = _batch(seed=5)
    out = evaluate(split.trainable, split.mutable, split.frozen, mesh_lib.put_batch(host, mesh))
    model.eval()
    eager = model(
        input_ids=jnp.asarray(host["input_ids"]), attention_mask=jnp.asarray(host["attention_mask"])
    )
    np.testing.assert_array_equal(
        np.asarray(out["predictions"]), np.argmax(np.asarray(eager.logits), -1)
    )
