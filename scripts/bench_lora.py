"""LoRA training throughput and peak memory: langtune_jax vs Hugging Face PEFT + PyTorch (CPU).

Trains a MiniLM-sized BERT classifier (6 layers, hidden 384, 12 heads, mBERT's 119,547-token
vocabulary; random weights, nothing downloaded) on random batches of 16 x 128 tokens, four ways,
each in its own subprocess so peak memory is per configuration:

- ``jax-lora``: ``apply_lora`` (r=8, alpha=16, query/value, dropout 0.1) + optax AdamW on the
  trainable filter (``nnx.Optimizer(wrt=...)``), one ``nnx.jit`` step with donated buffers;
- ``jax-full``: the same step over every parameter (full fine-tuning);
- ``torch-peft-lora``: ``peft.get_peft_model`` with the same LoraConfig + ``torch.optim.AdamW``;
- ``torch-full``: PyTorch full fine-tuning.

Tokens/s counts ``batch * seq_len`` per step after ``--warmup`` steps (JAX compilation is reported
separately). Peak memory is the subprocess's maximum resident set size (``ru_maxrss``), and the
growth over the RSS after building the model. Example::

    python scripts/bench_lora.py                       # the issue's configuration
    python scripts/bench_lora.py --layers 2 --hidden 128 --vocab 30522 --seq 64 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODES = ("jax-lora", "jax-full", "torch-peft-lora", "torch-full")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _hf_config(a) -> dict:
    return dict(
        model_type="bert",
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        intermediate_size=4 * a.hidden,
        max_position_embeddings=512,
        num_labels=3,
        hidden_dropout_prob=a.dropout,
        attention_probs_dropout_prob=a.dropout,
    )


def _lora_kwargs(a) -> dict:
    return dict(r=a.r, lora_alpha=2 * a.r, lora_dropout=a.lora_dropout,
                target_modules=["query", "value"], task_type="SEQ_CLS")  # fmt: skip


def _batches(a, n):
    import numpy as np

    rng = np.random.RandomState(0)
    for _ in range(n):
        yield rng.randint(1, a.vocab, (a.batch, a.seq)), rng.randint(0, 3, (a.batch,))


def run_jax(a, full: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from langtune_jax.models import bert
    from langtune_jax.peft import LoraConfig, apply_lora, trainable_filter, trainable_summary

    # Dropout keys as the trainer makes them (train.rng_impl, default threefry4x32).
    rngs = nnx.Rngs(params=0, dropout=jax.random.key(1, impl=a.rng_impl))
    model = bert.from_hf_config(_hf_config(a), "sequence-classification", rngs=rngs)
    if full:
        filt = nnx.Param
    else:
        apply_lora(model, LoraConfig(**_lora_kwargs(a)), rngs=rngs)
        filt = trainable_filter(model)
    model.train()
    summary = trainable_summary(model, filt) if not full else "all parameters"
    # Only the filter's variables get gradients and AdamW state (frozen weights: neither).
    opt = nnx.Optimizer(model, optax.adamw(1e-4), wrt=filt)
    built_rss = _rss_mb()

    def loss_fn(model, ids, labels):
        logits = model(ids, attention_mask=jnp.ones_like(ids)).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @nnx.jit(donate_argnums=(0, 1))
    def _step(model, opt, ids, labels):
        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, filt))
        loss, grads = grad_fn(model, ids, labels)
        opt.update(model, grads)
        return loss

    step = nnx.cached_partial(_step, model, opt)  # skips re-flattening the graph every call
    batches = list(_batches(a, a.warmup + a.steps))
    loss = jnp.zeros(())
    t0 = time.perf_counter()
    for i, (ids, labels) in enumerate(batches):
        if i == a.warmup:
            jax.block_until_ready(loss)
            t_warm = time.perf_counter()
        loss = step(jnp.asarray(ids), jnp.asarray(labels))
    jax.block_until_ready(loss)
    t1 = time.perf_counter()
    return dict(seconds=t1 - t_warm, warmup_seconds=t_warm - t0, loss=float(loss),
                built_rss_mb=built_rss, trainable=summary)  # fmt: skip


def run_torch(a, full: bool) -> dict:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**_hf_config(a)))
    summary = "all parameters"
    if not full:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**_lora_kwargs(a)))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        summary = f"trainable params: {trainable:,d} || all params: {total:,d}"
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    built_rss = _rss_mb()
    batches = list(_batches(a, a.warmup + a.steps))
    t0 = time.perf_counter()
    for i, (ids, labels) in enumerate(batches):
        if i == a.warmup:
            t_warm = time.perf_counter()
        out = model(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t1 = time.perf_counter()
    return dict(seconds=t1 - t_warm, warmup_seconds=t_warm - t0, loss=float(out.loss),
                built_rss_mb=built_rss, trainable=summary)  # fmt: skip


def worker(a) -> None:
    full = a.worker.endswith("full")
    result = run_jax(a, full) if a.worker.startswith("jax") else run_torch(a, full)
    result["tokens_per_s"] = a.batch * a.seq * a.steps / result["seconds"]
    result["peak_rss_mb"] = _peak_mb()
    print("RESULT " + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=119547, help="mBERT's vocabulary size")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.1, help="BERT hidden/attention dropout")
    p.add_argument(
        "--rng-impl", default="threefry4x32", help="JAX PRNG of the dropout keys (train.rng_impl)"
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed steps (JAX compiles in the first)"
    )
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    env.pop("XLA_FLAGS", None)  # one real CPU device, as a user would run it
    results = {}
    for mode in a.modes.split(","):
        sizes = ("layers", "hidden", "heads", "vocab", "batch", "seq", "r", "lora_dropout", "dropout",
                 "rng_impl", "steps", "warmup")  # fmt: skip
        args = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in sizes]
        cmd = [sys.executable, os.path.abspath(__file__), *args, "--worker", mode]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{mode} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[mode] = json.loads(line[-1][len("RESULT ") :])
        print(f"{mode}: done ({results[mode]['tokens_per_s']:.0f} tokens/s)", file=sys.stderr)

    load = os.getloadavg()[0]
    print(f"\nBERT {a.layers} layers, hidden {a.hidden}, vocab {a.vocab:,}; batch {a.batch} x "
          f"{a.seq}; LoRA r={a.r} on query/value, dropout {a.lora_dropout}; JAX dropout keys {a.rng_impl}; {a.steps} timed steps after {a.warmup}; "
          f"CPU cores {os.cpu_count()}, load average {load:.1f}\n")  # fmt: skip
    header = "| mode | tokens/s | s/step | warm-up s | peak RSS MB | RSS growth MB | trainable |"
    print(header)
    print("|" + "---|" * 7)
    for mode, r in results.items():
        print(f"| {mode} | {r['tokens_per_s']:.0f} | {r['seconds'] / a.steps:.2f} | "
              f"{r['warmup_seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['built_rss_mb']:.0f} | {r['trainable'].replace(' || ', ', ')} |")  # fmt: skip
    if "jax-lora" in results and "torch-peft-lora" in results:
        ratio = results["jax-lora"]["tokens_per_s"] / results["torch-peft-lora"]["tokens_per_s"]
        print(f"\njax-lora / torch-peft-lora tokens/s: {ratio:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(args=vars(a), results=results), f, indent=2)


if __name__ == "__main__":
    main()
