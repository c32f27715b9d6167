"""Throughput of our NNX models against transformers PyTorch: same config, weights and batch.

Measures forward (inference) and forward+backward (a training step without the optimizer) in
tokens/second, median over timed steps after warm-up (JAX compile time is excluded and reported
separately). Random weights: speed does not depend on them.

    .venv/bin/python scripts/bench_models.py                      # MiniLM-sized BERT, 8 x 128
    .venv/bin/python scripts/bench_models.py --layers 12 --hidden 768 --heads 12 --intermediate 3072

Rows are built by the functions in ``CASES``: ``bert`` (encoder, sequence classification) and
``llama`` (decoder, causal LM); ``--models bert,llama`` runs both.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from flax import nnx

from langtune_jax.models import from_pretrained
from langtune_jax.tasks import IGNORE_INDEX


@dataclasses.dataclass
class Case:
    """One benchmark row: the same model in both frameworks and a batch for each."""

    name: str
    torch_model: torch.nn.Module
    torch_batch: dict[str, torch.Tensor]
    torch_loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    jax_model: nnx.Module
    jax_batch: dict[str, jax.Array]
    jax_loss: Callable[[nnx.Module, dict[str, jax.Array]], jax.Array]
    tokens: int  # tokens per batch

    @classmethod
    def from_numpy(cls, name, torch_model, torch_loss, jax_model, jax_loss, batch) -> Case:
        """Both frameworks get the same ``batch`` (``ids`` / ``mask`` / ``labels`` numpy arrays)."""
        return cls(
            name=name,
            torch_model=torch_model,
            torch_batch={k: torch.from_numpy(v) for k, v in batch.items()},
            torch_loss=torch_loss,
            jax_model=jax_model,
            jax_batch={k: jnp.asarray(v) for k, v in batch.items()},
            jax_loss=jax_loss,
            tokens=batch["ids"].size,
        )


def build_bert(args) -> Case:
    """A BERT sequence classifier (dropout off so both sides compute the same function)."""
    cfg = transformers.BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(512, args.seq),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = from_pretrained(tmp, "sequence-classification", dtype=_dtype(args.dtype))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, args.vocab, size=(args.batch, args.seq))
    mask = np.ones_like(ids)
    mask[::2, args.seq * 3 // 4 :] = 0  # pad a quarter of every other row
    labels = rng.integers(0, 3, size=(args.batch,))

    def torch_loss(model, b):
        logits = model(input_ids=b["ids"], attention_mask=b["mask"]).logits
        return torch.nn.functional.cross_entropy(logits, b["labels"])

    def jax_loss(model, b):
        logits = model(b["ids"], attention_mask=b["mask"]).logits.astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["labels"]).mean()

    batch = {"ids": ids, "mask": mask, "labels": labels}
    return Case.from_numpy(
        f"BERT L{args.layers} H{args.hidden}", ref, torch_loss, ours, jax_loss, batch
    )


# ------------------------------------------------------------------------ decoder rows (Llama)


def build_llama(args) -> Case:
    """A Llama causal LM (grouped-query attention: half as many kv heads) with next-token loss.

    Same sizes as the BERT row (``--layers``, ``--hidden``, ``--heads``, ``--intermediate``,
    ``--vocab``) and the same right-padded batch; padded targets are left out of the loss.
    """
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads // 2 if args.heads % 2 == 0 else args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(2048, args.seq),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = from_pretrained(tmp, "causal-lm", dtype=_dtype(args.dtype))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, args.vocab, size=(args.batch, args.seq))
    mask = np.ones_like(ids)
    mask[::2, args.seq * 3 // 4 :] = 0  # pad a quarter of every other row
    labels = np.where(mask == 1, ids, IGNORE_INDEX)  # transformers' ignore index too

    def torch_loss(model, b):
        return model(input_ids=b["ids"], attention_mask=b["mask"], labels=b["labels"]).loss

    def jax_loss(model, b):
        logits = model(b["ids"], attention_mask=b["mask"]).logits[:, :-1].astype(jnp.float32)
        targets, keep = b["labels"][:, 1:], b["labels"][:, 1:] != IGNORE_INDEX
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(targets, 0))
        return jnp.sum(ce * keep) / jnp.sum(keep)

    batch = {"ids": ids, "mask": mask, "labels": labels}
    return Case.from_numpy(
        f"Llama L{args.layers} H{args.hidden} GQA", ref, torch_loss, ours, jax_loss, batch
    )


# ------------------------------------------------------------------------ registry

CASES: dict[str, Callable[[Any], Case]] = {"bert": build_bert, "llama": build_llama}


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _median_seconds(fn: Callable[[], Any], warmup: int, steps: int) -> tuple[float, float]:
    """(first call seconds, median seconds of the timed calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def bench(case: Case, warmup: int, steps: int) -> list[dict[str, Any]]:
    rows = []
    model, batch = case.torch_model, case.torch_batch

    def torch_forward():
        with torch.no_grad():
            model.eval()
            case.torch_loss(model, batch)

    def torch_train():
        model.train()
        model.zero_grad(set_to_none=True)
        case.torch_loss(model, batch).backward()

    graphdef, params, rest = nnx.split(case.jax_model, nnx.Param, ...)

    @jax.jit
    def jax_forward(params, batch):
        return case.jax_loss(nnx.merge(graphdef, params, rest), batch)

    @jax.jit
    def jax_train(params, batch):
        return jax.value_and_grad(lambda p: case.jax_loss(nnx.merge(graphdef, p, rest), batch))(
            params
        )

    fns = {
        ("PyTorch", "forward"): torch_forward,
        ("PyTorch", "forward+backward"): torch_train,
        ("JAX/NNX", "forward"): lambda: jax.block_until_ready(jax_forward(params, case.jax_batch)),
        ("JAX/NNX", "forward+backward"): lambda: jax.block_until_ready(
            jax_train(params, case.jax_batch)
        ),
    }
    for (framework, kind), fn in fns.items():
        first, median = _median_seconds(fn, warmup, steps)
        rows.append(
            dict(model=case.name, framework=framework, kind=kind, ms=median * 1e3,
                 tokens_per_s=case.tokens / median, first_s=first)
        )  # fmt: skip
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="bert", help=f"comma-separated rows: {', '.join(CASES)}")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="JAX compute dtype (PyTorch runs float32)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)

    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); batch {args.batch} x "
        f"{args.seq} tokens, JAX dtype {args.dtype}, median of {args.steps} steps"
    )
    print("| model | framework | pass | ms/step | tokens/s | first call (s) |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for name in args.models.split(","):
        for r in bench(CASES[name](args), args.warmup, args.steps):
            print(
                f"| {r['model']} | {r['framework']} | {r['kind']} | {r['ms']:.1f} | "
                f"{r['tokens_per_s']:,.0f} | {r['first_s']:.2f} |"
            )


if __name__ == "__main__":
    main()
