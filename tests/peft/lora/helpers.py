"""Shared pieces of the LoRA tests: a tiny HF BERT config, a user-written NNX MLP, training and
forward helpers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from transformers import BertConfig as HFBertConfig

from langtune_jax.models import bert
from langtune_jax.peft import (
    trainable_filter,
)

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
def bert_base():
    model = bert.from_hf_config(
        HF_CFG.to_dict(), "sequence-classification", rngs=nnx.Rngs(0), num_labels=3
    )
    model.eval()
    return model


def tiny_bert():
    """A fresh copy of one random tiny BERT classifier (built once: initialisation is slow)."""
    return nnx.clone(bert_base())


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
