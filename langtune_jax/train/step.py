"""The one train step and the eval step, as pure functions over the split NNX state, jitted with
named shardings.

The model is split once into four parts::

    graphdef          static structure (two of them: train mode and eval mode, for dropout)
    trainable  State  what the PEFT filter selects (LoRA / adapter variables, modules_to_save)
    frozen     State  the remaining parameters: inputs to the step, never differentiated, never
                      donated, no optimizer state
    mutable    State  everything else (dropout RNG counters, ...): threaded through the step

``train_step(trainable, opt_state, mutable, frozen, batch) -> (trainable, opt_state, mutable,
metrics)`` donates its first three arguments. Gradient accumulation is a ``lax.scan`` over
micro-batches inside the same step, so there is a single step function for every setting.

Loss per task (float32, padding rows and ``-100`` labels never count):

* sequence-classification: cross-entropy of ``logits [B, C]`` against ``labels [B]``;
* token-classification: cross-entropy of ``logits [B, T, C]`` against ``labels [B, T]``;
* causal-lm: next-token cross-entropy; ``labels [B, T]`` are aligned with ``input_ids`` (HF
  convention) and shifted here; with packing, a position whose next token starts another segment
  (``segment_ids`` change) is not a target.
* masked-lm: cross-entropy of ``logits [B, T, V]`` at the masked positions (``labels [B, T]``
  hold the original ids there, ``-100`` elsewhere; no shift).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from langtune_jax.train import mesh as mesh_lib

MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "segment_ids",
    "segment_starts",
)

# routing(model, batch) -> context manager active around the forward pass, inside the jitted
# function; e.g. per-language adapters choosing each example's adapter from batch["language_id"].
Routing = Callable[[nnx.Module, dict[str, jax.Array]], contextlib.AbstractContextManager]


@dataclasses.dataclass
class SplitModel:
    """A model split into the parts a jitted step consumes (see module docstring)."""

    train_graph: Any
    eval_graph: Any
    trainable: nnx.State
    frozen: nnx.State
    mutable: nnx.State
    trainable_filter: Any

    def merge(self, *, train: bool = False) -> nnx.Module:
        """Rebuild the module (e.g. to save or export it)."""
        graph = self.train_graph if train else self.eval_graph
        return nnx.merge(graph, self.trainable, self.frozen, self.mutable)


def split_model(model: nnx.Module, trainable_filter: Any) -> SplitModel:
    """Split ``model`` into trainable / frozen / mutable states and both graph definitions."""
    model.eval()
    eval_graph, *_ = nnx.split(model, trainable_filter, nnx.Param, ...)
    model.train()
    train_graph, trainable, frozen, mutable = nnx.split(model, trainable_filter, nnx.Param, ...)
    return SplitModel(train_graph, eval_graph, trainable, frozen, mutable, trainable_filter)


def forward(model: nnx.Module, batch: dict[str, jax.Array], routing: Routing | None = None):
    """Call ``model`` on the model inputs of ``batch`` (other keys, e.g. labels, are left out).

    Args:
      model: an NNX model taking ``input_ids``, ``attention_mask`` ... (:data:`MODEL_INPUTS`).
      batch: a batch from the data pipeline, possibly packed (``segment_ids``).
      routing: optional context around the call (per-language adapter routing).

    Returns:
      The model's output (``.logits`` ``[B, C]``, ``[B, T, C]`` or ``[B, T, V]``).
    """
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if "segment_ids" in inputs and not getattr(model, "takes_segments", False):
        # Packed rows: decoders take segments as attention_mask values (1, 2, ... per example,
        # 0 = padding; attention stays causal within equal ids); encoders take segment_ids (and
        # segment_starts, the tokens a sequence head pools) as such.
        inputs["attention_mask"] = inputs.pop("segment_ids")
    with routing(model, batch) if routing is not None else contextlib.nullcontext():
        return model(**inputs)


def _next_token(logits: jax.Array, labels: jax.Array, segment_ids: jax.Array | None):
    """Causal LM targets: position t predicts label t+1; a position whose next token starts
    another packed segment predicts nothing. Returns ``(logits [B, T-1, V], labels [B, T-1],
    weights [B, T-1] bool)``."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    weights = labels >= 0
    if segment_ids is not None:
        weights &= segment_ids[:, 1:] == segment_ids[:, :-1]
    return logits, labels, weights


def _targets(logits: jax.Array, batch: dict[str, jax.Array], task: str):
    """``(logits, labels, weights)`` of what counts in the loss: ignored labels and padding rows
    (``example_mask`` 0) have weight False; causal LM is shifted by one (:func:`_next_token`)."""
    labels = batch["labels"]
    if task == "causal-lm":
        logits, labels, weights = _next_token(logits, labels, batch.get("segment_ids"))
    elif task in ("sequence-classification", "token-classification", "masked-lm"):
        weights = labels >= 0
    else:
        raise ValueError(f"unknown task {task!r}")
    if "example_mask" in batch:  # [B] rows (or [B, S] packed segments): broadcast over positions
        keep = batch["example_mask"] > 0
        weights &= keep.reshape(keep.shape + (1,) * (weights.ndim - keep.ndim))
    return logits, labels, weights


def token_nll(logits: jax.Array, batch: dict[str, jax.Array], task: str):
    """Per-target negative log-likelihood and 0/1 weights (``[B]`` or ``[B, T']``, float32)."""
    logits, labels, weights = _targets(logits.astype(jnp.float32), batch, task)
    safe = jnp.where(weights, labels, 0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    weights = weights.astype(jnp.float32)
    return nll * weights, weights


def task_loss(logits: jax.Array, batch: dict[str, jax.Array], task: str):
    """Summed loss and number of counted targets for one (micro-)batch.

    Returns:
      ``(loss_sum, count)``: float32 scalars; the mean loss is ``loss_sum / count``.
    """
    nll, weights = token_nll(logits, batch, task)
    return jnp.sum(nll), jnp.sum(weights)


def example_losses(logits: jax.Array, batch: dict[str, jax.Array], task: str):
    """Per-row summed loss and counted targets: ``(nll_sum [B], count [B])`` float32.

    Padding rows (``example_mask`` 0) and ignored labels count 0; ``task_loss`` is their sum.
    """
    nll, weights = token_nll(logits, batch, task)
    if nll.ndim == 1:
        return nll, weights
    return nll.sum(axis=tuple(range(1, nll.ndim))), weights.sum(axis=tuple(range(1, nll.ndim)))


def language_sums(values: jax.Array, language_id: jax.Array, num_languages: int) -> jax.Array:
    """Per-language sums ``[L]`` of per-row ``values [B]`` (``language_id [B]`` indexes L)."""
    return jax.ops.segment_sum(values, language_id, num_segments=num_languages)


def _under_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """``fn`` traced under ``mesh``'s abstract mesh, so the models' activation constraints
    (``models.common.constrain``) apply; without it they are no-ops."""

    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return traced


def make_train_step(
    split: SplitModel,
    tx: optax.GradientTransformation,
    *,
    task: str,
    mesh: Mesh,
    param_shardings: dict[str, Any],
    grad_accum_steps: int = 1,
    routing: Routing | None = None,
    num_languages: int | None = None,
) -> Callable:
    """Build the jitted train step.

    Args:
      split: the split model (its graph definitions are closed over).
      tx: the optax transformation over the trainable state.
      task: one of the tasks in :func:`task_loss`.
      mesh: device mesh.
      param_shardings: ``{"trainable", "frozen", "mutable", "opt_state"}`` sharding trees.
      grad_accum_steps: micro-batches per step (the global batch is split on its first axis).
      routing: optional context around the forward pass (per-language adapter routing).
      num_languages: L, the number of training languages; the metrics then also hold the
        per-language loss sums and target counts of the step (``batch["language_id"]`` indexes
        them; packed classification counts each segment for its ``segment_language``).

    Returns:
      ``step(trainable, opt_state, mutable, frozen, batch) -> (trainable, opt_state, mutable,
      metrics)`` with ``metrics = {"loss", "grad_norm", "count"}`` (float32 scalars), plus
      ``language_loss_sum`` and ``language_count`` (``[L]`` float32, global over all hosts) when
      ``num_languages`` is given.
    """
    loss_fn = functools.partial(
        _loss_and_aux, task=task, routing=routing, num_languages=num_languages
    )
    grad_fn = _grad_fn(split, loss_fn)

    def step(trainable, opt_state, mutable, frozen, batch):
        if grad_accum_steps == 1:
            (loss_sum, (aux, mutable)), grads = grad_fn(trainable, mutable, frozen, batch)
        else:
            aux0 = _zero_aux(num_languages)
            loss_sum, aux, mutable, grads = _accumulate(
                grad_fn, grad_accum_steps, aux0, trainable, mutable, frozen, batch
            )
        denom = jnp.maximum(aux["count"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {"loss": loss_sum / denom, "grad_norm": optax.global_norm(grads), **aux}
        return trainable, opt_state, mutable, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    sh = param_shardings
    return jax.jit(
        _under_mesh(step, mesh),
        in_shardings=(sh["trainable"], sh["opt_state"], sh["mutable"], sh["frozen"], None),
        out_shardings=(sh["trainable"], sh["opt_state"], sh["mutable"], replicated),
        donate_argnums=(0, 1, 2),
    )


def _loss_and_aux(model, batch, *, task: str, routing: Routing | None, num_languages: int | None):
    """Summed loss of a (micro-)batch and its aux sums: ``count``, and with ``num_languages``
    the per-language ``language_loss_sum`` / ``language_count`` ``[L]``."""
    out = forward(model, batch, routing)
    nll, count = token_nll(out.logits, batch, task)  # [B], [B, S] (packed) or [B, T']
    aux = {"count": jnp.sum(count)}
    if num_languages is not None:
        sums = per_language_sums(nll, count, batch, num_languages)
        aux["language_loss_sum"], aux["language_count"] = sums
    return jnp.sum(nll), aux


def per_language_sums(
    nll: jax.Array, count: jax.Array, batch: dict[str, jax.Array], num_languages: int
) -> tuple[jax.Array, jax.Array]:
    """Per-language loss sums and target counts ``([L], [L])`` of a batch's per-target losses.

    A packed classification batch holds one loss per segment (``nll [B, S]``) and the language of
    each (``segment_language``), so every example counts for its own language. Otherwise a row
    is one example of ``language_id`` (``nll [B]`` or ``[B, T']``, summed per row). Packed LM rows,
    whose tokens may be of several languages, must not be summed here (``train.start`` asks for
    no per-language sums then).
    """
    seg_lang = batch.get("segment_language")
    if seg_lang is not None and nll.shape == seg_lang.shape:
        lang, nll, count = seg_lang.reshape(-1), nll.reshape(-1), count.reshape(-1)
    else:
        rows = tuple(range(1, nll.ndim))
        lang, nll, count = batch["language_id"], nll.sum(axis=rows), count.sum(axis=rows)
    return language_sums(nll, lang, num_languages), language_sums(count, lang, num_languages)


def _zero_aux(num_languages: int | None) -> dict[str, jax.Array]:
    """The aux sums of :func:`_loss_and_aux` at zero: the start of an accumulation."""
    aux = {"count": jnp.float32(0)}
    if num_languages is not None:
        aux["language_loss_sum"] = jnp.zeros(num_languages, jnp.float32)
        aux["language_count"] = jnp.zeros(num_languages, jnp.float32)
    return aux


def _grad_fn(split: SplitModel, loss_fn: Callable) -> Callable:
    """``grad_fn(trainable, mutable, frozen, batch) -> ((loss_sum, (aux, mutable)), grads)``.

    Merges in the current trace and lets NNX's value_and_grad differentiate only the trainable
    variables; dropout RNG counters advance on the module and are read back afterwards.
    """
    diff = nnx.DiffState(0, split.trainable_filter)

    def grad_fn(trainable, mutable, frozen, batch):
        model = nnx.merge(split.train_graph, trainable, frozen, mutable)
        (loss_sum, aux), grads = nnx.value_and_grad(loss_fn, argnums=diff, has_aux=True)(
            model, batch
        )
        *_, mutable = nnx.state(model, split.trainable_filter, nnx.Param, ...)
        return (loss_sum, (aux, mutable)), grads

    return grad_fn


def _accumulate(grad_fn: Callable, steps: int, aux0, trainable, mutable, frozen, batch):
    """Gradient accumulation: ``grad_fn`` over ``steps`` micro-batches (the batch split on its
    first axis) in a ``lax.scan``; returns the summed ``(loss_sum, aux, mutable, grads)``."""
    micro = jax.tree.map(lambda x: x.reshape(steps, x.shape[0] // steps, *x.shape[1:]), batch)

    # Parameters travel in the carry (unchanged) so NNX sees them at the loop's trace level.
    def body(carry, mb):
        params, grads_acc, loss_acc, aux_acc, mut = carry
        (loss_sum, (aux, mut)), grads = grad_fn(params[0], mut, params[1], mb)
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        aux_acc = jax.tree.map(jnp.add, aux_acc, aux)
        return (params, grads_acc, loss_acc + loss_sum, aux_acc, mut), None

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    init = ((trainable, frozen), zeros, jnp.float32(0), aux0, mutable)
    (_, grads, loss_sum, aux, mutable), _ = jax.lax.scan(body, init, micro)
    return loss_sum, aux, mutable, grads


def make_eval_step(
    split: SplitModel,
    *,
    task: str,
    mesh: Mesh,
    param_shardings: dict[str, Any],
    routing: Routing | None = None,
) -> Callable:
    """Build the jitted eval step: ``eval(trainable, mutable, frozen, batch) -> outputs``.

    Outputs per task (batch-sharded arrays):
      * classification: ``predictions`` (argmax class ids, ``[B]`` or ``[B, T]``), their
        softmax probability ``scores`` (same shape), and the per-example loss ``nll_sum [B]``
        over ``token_count [B]`` counted targets;
      * causal-lm, masked-lm: per-example ``nll_sum [B]``, ``token_count [B]`` and ``correct [B]``
        (argmax
        hits), from which perplexity and token accuracy are accumulated.
    """
    graph = split.eval_graph

    def evaluate(trainable, mutable, frozen, batch):
        model = nnx.merge(graph, trainable, frozen, mutable)
        logits = forward(model, batch, routing).logits
        nll_sum, count = example_losses(logits, batch, task)
        if task not in ("causal-lm", "masked-lm"):
            probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
            return {
                "predictions": jnp.argmax(logits, axis=-1).astype(jnp.int32),
                "scores": probs.max(axis=-1),
                "nll_sum": nll_sum,
                "token_count": count,
            }
        logits, labels, weights = _targets(logits, batch, task)
        correct = (jnp.argmax(logits, axis=-1) == labels) & weights
        return {
            "nll_sum": nll_sum,
            "token_count": count,
            "correct": correct.sum(axis=1).astype(jnp.float32),
        }

    sh = param_shardings
    batch_out = NamedSharding(mesh, PartitionSpec(mesh_lib.BATCH_AXES))
    return jax.jit(
        _under_mesh(evaluate, mesh),
        in_shardings=(sh["trainable"], sh["mutable"], sh["frozen"], None),
        out_shardings=batch_out,
    )
