"""End-to-end training parity with PEFT + transformers (PyTorch) on a tiny random BERT classifier.

Both sides start from the same checkpoint (encoder, pooler and classifier weights) and the same LoRA
A/B matrices, see the same batches, and build their optimizer as a user of each would: ours with
``train.optim.make_optimizer`` from a ``TrainConfig`` and the jitted ``train.step`` step; PEFT's
with the ``transformers.Trainer`` of the same ``TrainingArguments`` (its ``create_optimizer`` /
``create_scheduler``: AdamW betas 0.9/0.999, eps 1e-8, weight decay on everything but biases and
LayerNorm weights, linear schedule with warm-up) and Trainer's inner loop (mean loss over the
labelled rows, ``clip_grad_norm_(max_grad_norm)``, optimizer step, scheduler step).

With dropout 0, losses and the updated LoRA / classifier weights agree to float32 noise. With dropout
on, the two trainings use different random masks, so agreement is statistical over seeds.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from langtune_jax.config import TrainConfig
from langtune_jax.models import from_pretrained
from langtune_jax.peft import LoraConfig, apply_lora, trainable_filter
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train.optim import make_optimizer
from langtune_jax.train.step import make_train_step, split_model

VOCAB, CLASSES, T, B = 96, 3, 12, 8
STEPS = 6
LR, WD, WARMUP = 2e-2, 0.01, 2
# float32 noise over six Adam steps (reductions in another order on each side): the losses agree
# to 1e-5 relative; a weight moves by ~lr per step, so 1e-5 absolute is ~0.03% of the movement.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=CLASSES,
    )
    path = tmp_path_factory.mktemp("parity") / "model"
    transformers.BertForSequenceClassification(cfg).save_pretrained(path)
    return path


def batches(seed: int = 0, n: int = 2) -> list[dict[str, np.ndarray]]:
    """``n`` batches with padding and one ignored (-100) label each, cycled to ``STEPS`` steps."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = rng.integers(3, T + 1, B)
        mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
        ids = np.where(mask > 0, rng.integers(1, VOCAB, (B, T)), 0).astype(np.int32)
        labels = rng.integers(0, CLASSES, B).astype(np.int32)
        labels[rng.integers(B)] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return [out[i % n] for i in range(STEPS)]


def lora_config(dropout: float) -> dict:
    return dict(
        r=4,
        lora_alpha=8,
        lora_dropout=dropout,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )


def train_config() -> TrainConfig:
    return TrainConfig(
        steps=STEPS,
        batch_size=B,
        learning_rate=LR,
        weight_decay=WD,
        warmup_steps=WARMUP,
        schedule="linear",
        max_grad_norm=1.0,
    )


def ours(path, data, *, dropout=0.0, seed=0, lora_init=None):
    """Train with our step and optimizer; returns (losses, {name: torch-layout weight})."""
    model = from_pretrained(
        path,
        task="sequence-classification",
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        seed=seed,
    )
    rngs = nnx.Rngs(params=seed + 1, dropout=jax.random.key(seed + 2))
    model = apply_lora(model, LoraConfig(**lora_config(dropout)), rngs=rngs)
    if lora_init is not None:
        for name, value in lora_init.items():
            _our_variable(model, name).value = jax.numpy.asarray(value.T)
    split = split_model(model, trainable_filter(model))
    mesh = mesh_lib.make_mesh(-1, 1, 1)
    tx = make_optimizer(train_config())
    opt_state = tx.init(split.trainable)
    shard = {
        name: mesh_lib.state_shardings(getattr(split, name), mesh)
        for name in ("trainable", "frozen", "mutable")
    }
    shard["opt_state"] = mesh_lib.opt_state_shardings(tx, opt_state, shard["trainable"], mesh)
    step = make_train_step(
        split, tx, task="sequence-classification", mesh=mesh, param_shardings=shard
    )
    trainable, mutable = split.trainable, split.mutable
    losses = []
    for batch in data:
        batch = {**batch, "example_mask": np.ones(B, np.int32)}
        trainable, opt_state, mutable, metrics = step(
            trainable, opt_state, mutable, split.frozen, mesh_lib.put_batch(batch, mesh)
        )
        losses.append(float(metrics["loss"]))
    split.trainable = trainable
    trained = split.merge()
    return losses, {name: _weight(trained, name) for name in _names()}


def _names() -> list[str]:
    names = [
        f"bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}"
        for i in range(2)
        for m in ("query", "value")
        for ab in "AB"
    ]
    return names + ["classifier.weight", "classifier.bias"]


def _our_variable(model, name):
    *path, last = name.split(".")
    node = model
    for part in path:
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    if last in ("lora_A", "lora_B"):
        return getattr(node, last)["default"]
    return node.kernel if last == "weight" else node.bias


def _weight(model, name) -> np.ndarray:
    value = np.asarray(_our_variable(model, name).value)
    return value.T if value.ndim == 2 else value  # ours [in, out], torch [out, in]


def peft_reference(path, data, tmp_path, *, dropout=0.0, seed=0):
    """Train with PEFT + transformers.Trainer's optimizer, schedule and inner loop."""
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification.from_pretrained(
        path, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
    )
    model = peft.get_peft_model(model, peft.LoraConfig(**lora_config(dropout)))
    init = {name: _peft_param(model, name).detach().numpy().copy() for name in _names()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        learning_rate=LR,
        weight_decay=WD,
        warmup_steps=WARMUP,
        lr_scheduler_type="linear",
        max_steps=STEPS,
        per_device_train_batch_size=B,
        max_grad_norm=1.0,
        report_to=[],
        use_cpu=True,
    )
    trainer = transformers.Trainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=STEPS)
    model.train()
    losses = []
    for batch in data:
        out = model(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()})
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        losses.append(float(out.loss.detach()))
    final = {name: _peft_param(model, name).detach().numpy() for name in _names()}
    return losses, init, final


def _peft_param(model, name) -> "torch.Tensor":  # noqa: F821
    params = dict(model.named_parameters())
    if name.startswith("classifier"):
        return params[f"base_model.model.classifier.modules_to_save.default.{name.split('.')[1]}"]
    return params[f"base_model.model.{name}.default.weight"]


def test_training_matches_peft_trainer_without_dropout(checkpoint, tmp_path):
    data = batches()
    ref_losses, init, ref_final = peft_reference(checkpoint, data, tmp_path)
    lora_init = {k: v for k, v in init.items() if ".lora_" in k}
    losses, final = ours(checkpoint, data, lora_init=lora_init)
    np.testing.assert_allclose(losses, ref_losses, rtol=LOSS_RTOL)
    assert sum(losses[-2:]) < sum(losses[:2]) - 0.1  # it did train (the batches repeat)
    for name in _names():
        moved = np.abs(ref_final[name] - init[name]).max()
        assert moved > 100 * WEIGHT_ATOL, name  # every compared weight was updated
        np.testing.assert_allclose(final[name], ref_final[name], atol=WEIGHT_ATOL, err_msg=name)
