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
growth over the RSS after building the model.

Real lengths (``--lengths FILE`` or ``--lengths real`` = ``scripts/real_lengths.json``, the
all-MiniLM-L6-v2 token lengths of the issue-15 real-data set): example lengths are drawn from the
histogram and *real* (non-padding) tokens/s is reported for

- ``jax-packed``: ``data.packing.pack`` fills ``batch`` rows of ``seq`` tokens with as many
  examples as the pipeline draws per packed step (block-diagonal attention, per-segment pooling);
- ``jax-bucketed``: ``batch`` examples padded to the smallest default length bucket that fits
  (``DataConfig(max_length=seq).buckets()``: seq/8, seq/4, seq/2, seq);
- ``torch-peft-dynamic``: ``batch`` examples padded to the longest in the batch (transformers'
  ``DataCollatorWithPadding`` default);
- ``torch-peft-max``: ``batch`` examples padded to ``seq`` (``padding="max_length"``).

The JAX modes run the project's own ``train.step`` forward and loss (``forward``, ``task_loss``).
``--rounds`` repeats every mode, interleaved (A B C D A B C D ...), and reports the median: the
machine is shared, so a slow phase of the neighbours hits all modes alike. Example::

    python scripts/bench_lora.py                       # the issue's configuration
    python scripts/bench_lora.py --layers 2 --hidden 128 --vocab 30522 --seq 64 --steps 3
    python scripts/bench_lora.py --lengths real --rounds 3
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
REAL_MODES = ("jax-packed", "jax-bucketed", "torch-peft-dynamic", "torch-peft-max")
REAL_LENGTHS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_lengths.json")
CLS, SEP = 101, 102


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


def _length_stream(a, n: int):
    """n example lengths drawn from the histogram (fixed seed: every mode sees the same stream)."""
    import numpy as np

    hist = json.load(open(REAL_LENGTHS if a.lengths == "real" else a.lengths))["lengths"]
    lengths = np.array([int(k) for k in hist])
    p = np.array([hist[k] for k in hist], float)
    return np.minimum(np.random.RandomState(0).choice(lengths, size=n, p=p / p.sum()), a.seq)


def _examples(a, lengths):
    """Random examples of the given lengths: [CLS] ids [SEP], a label each (a ragged store)."""
    import numpy as np

    from langtune_jax.data.features import Tokenized

    rng = np.random.RandomState(1)
    rows = [np.concatenate([[CLS], rng.randint(1000, a.vocab, n - 2), [SEP]]) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Tokenized(
        input_ids=np.concatenate(rows).astype(np.int32),
        offsets=offsets,
        labels=rng.randint(0, 3, len(lengths)).astype(np.int32),
    )


def _real_batches(a, mode: str, n: int) -> list[tuple[dict, int]]:
    """(batch, real tokens) per step for a real-length mode (numpy; torch converts)."""

    from langtune_jax.data.config import DataConfig
    from langtune_jax.data.features import choose_bucket, collate
    from langtune_jax.data.packing import pack

    mean = json.load(open(REAL_LENGTHS if a.lengths == "real" else a.lengths))["mean_length"]
    # as DataPipeline.examples_per_step: 90% of the expected row capacity
    per_step = max(a.batch, int(0.9 * a.batch * a.seq / mean)) if mode == "jax-packed" else a.batch
    lengths = _length_stream(a, per_step * n)
    store = _examples(a, lengths)
    out = []
    for s in range(n):
        rows = [(store, i) for i in range(s * per_step, (s + 1) * per_step)]
        if mode == "jax-packed":
            batch, placed, _ = pack(rows, a.batch, a.seq, pad_id=0,
                                    task="sequence-classification", num_segments=a.seq // 2)  # fmt: skip
            batch["example_mask"] = batch.pop("segment_mask")
            real = int(batch["attention_mask"].sum())
        else:
            longest = int(max(lengths[i] for _, i in rows))
            buckets = DataConfig(max_length=a.seq).buckets()  # the pipeline's default buckets
            t = {"jax-bucketed": choose_bucket(longest, buckets),
                 "torch-peft-dynamic": longest, "torch-peft-max": a.seq}[mode]  # fmt: skip
            batch = collate(rows, t, pad_id=0, task="sequence-classification")
            real = int(batch["attention_mask"].sum())
        out.append((batch, real))
    return out


def run_jax_real(a, mode: str) -> dict:
    """LoRA through the project's train-step forward and loss, on real-length batches."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from langtune_jax.models import bert
    from langtune_jax.peft import LoraConfig, apply_lora, trainable_filter, trainable_summary
    from langtune_jax.train.step import forward, task_loss

    rngs = nnx.Rngs(params=0, dropout=jax.random.key(1, impl=a.rng_impl))
    model = bert.from_hf_config(_hf_config(a), "sequence-classification", rngs=rngs)
    apply_lora(model, LoraConfig(**_lora_kwargs(a)), rngs=rngs)
    filt = trainable_filter(model)
    model.train()
    opt = nnx.Optimizer(model, optax.adamw(1e-4), wrt=filt)
    built_rss = _rss_mb()

    def loss_fn(model, batch):
        loss_sum, count = task_loss(
            forward(model, batch, None).logits, batch, "sequence-classification"
        )
        return loss_sum / jnp.maximum(count, 1.0)

    @nnx.jit(donate_argnums=(0, 1))
    def _step(model, opt, batch):
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, filt))(model, batch)
        opt.update(model, grads)
        return loss

    step = nnx.cached_partial(_step, model, opt)
    batches = _real_batches(a, mode, a.warmup + a.steps)
    loss = jnp.zeros(())
    t0 = time.perf_counter()
    for i, (batch, _) in enumerate(batches):
        if i == a.warmup:
            jax.block_until_ready(loss)
            t_warm = time.perf_counter()
        loss = step({k: jnp.asarray(v) for k, v in batch.items()})
    jax.block_until_ready(loss)
    t1 = time.perf_counter()
    real = sum(r for _, r in batches[a.warmup :])
    rows = sum(b["input_ids"].size for b, _ in batches[a.warmup :])
    return dict(seconds=t1 - t_warm, warmup_seconds=t_warm - t0, loss=float(loss),
                built_rss_mb=built_rss, trainable=trainable_summary(model, filt),
                real_tokens=real, padded_tokens=rows)  # fmt: skip


def run_torch_real(a, mode: str) -> dict:
    """PEFT LoRA + transformers on the same real-length examples, padded as ``mode`` says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**_hf_config(a)))
    model = get_peft_model(model, LoraConfig(**_lora_kwargs(a)))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    built_rss = _rss_mb()
    batches = _real_batches(a, mode, a.warmup + a.steps)
    t0 = time.perf_counter()
    for i, (b, _) in enumerate(batches):
        if i == a.warmup:
            t_warm = time.perf_counter()
        out = model(input_ids=torch.from_numpy(b["input_ids"]).long(),
                    attention_mask=torch.from_numpy(b["attention_mask"]).long(),
                    labels=torch.from_numpy(b["labels"]).long())  # fmt: skip
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t1 = time.perf_counter()
    real = sum(r for _, r in batches[a.warmup :])
    rows = sum(b["input_ids"].size for b, _ in batches[a.warmup :])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(seconds=t1 - t_warm, warmup_seconds=t_warm - t0, loss=float(out.loss),
                built_rss_mb=built_rss, trainable=f"trainable params: {trainable:,d}",
                real_tokens=real, padded_tokens=rows)  # fmt: skip


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
    if a.threads and a.worker.startswith("torch"):
        import torch

        torch.set_num_threads(a.threads)
    if a.worker in REAL_MODES:
        run = run_jax_real if a.worker.startswith("jax") else run_torch_real
        result = run(a, a.worker)
        result["tokens_per_s"] = result["real_tokens"] / result["seconds"]
    else:
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
    p.add_argument("--modes", help=f"comma list of {MODES} (or, with --lengths, {REAL_MODES})")
    p.add_argument("--lengths", help="real | a length-histogram JSON: real-length modes")
    p.add_argument("--rounds", type=int, default=1, help="interleaved repeats; median reported")
    p.add_argument("--threads", type=int, default=0,
                   help="1 = one compute thread per framework (torch.set_num_threads(1); XLA "
                        "without its multi-threaded Eigen pool): fairer on an overloaded CPU")  # fmt: skip
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=MODES + REAL_MODES, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    a.modes = a.modes or ",".join(REAL_MODES if a.lengths else MODES)
    print(_machine(), file=sys.stderr)
    results = _run_modes(a)
    _table(a, results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(args=vars(a), machine=_machine(), results=results), f, indent=2)


def _machine() -> str:
    """CPU model, cores, load and library versions, for the table header."""
    import importlib.metadata as md
    import platform

    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
    except (OSError, StopIteration):
        pass
    vers = []
    for pkg in ("jax", "flax", "torch", "transformers", "peft"):
        try:
            vers.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"CPU {model}, {os.cpu_count()} cores, load average {load}; " + ", ".join(vers)


def _run_modes(a) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # JAX runs on the default backend (a GPU when there is one; JAX_PLATFORMS=cpu forces CPU).
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false")  # fmt: skip
    env.pop("XLA_FLAGS", None)  # one real device, as a user would run it
    if a.threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
    sizes = ("layers", "hidden", "heads", "vocab", "batch", "seq", "r", "lora_dropout", "dropout",
             "rng_impl", "steps", "warmup", "threads")  # fmt: skip
    args = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in sizes]
    if a.lengths:
        args.append(f"--lengths={a.lengths}")
    runs: dict[str, list[dict]] = {}
    for rnd in range(a.rounds):  # interleaved: every mode once per round
        for mode in a.modes.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), *args, "--worker", mode]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{mode} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(line[-1][len("RESULT ") :])
            r["load"] = os.getloadavg()[0]
            runs.setdefault(mode, []).append(r)
            print(f"round {rnd + 1} {mode}: {r['tokens_per_s']:.0f} tokens/s "
                  f"(load {r['load']:.1f})", file=sys.stderr)  # fmt: skip
    results = {}
    for mode, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["tokens_per_s"])
        med = dict(rs[len(rs) // 2])
        med["all_tokens_per_s"] = [round(r["tokens_per_s"]) for r in rs]
        results[mode] = med
    return results


def _table(a, results: dict) -> None:
    what = f"real lengths from {a.lengths}" if a.lengths else f"batch {a.batch} x {a.seq}"
    print(f"\n{_machine()}\nBERT {a.layers} layers, hidden {a.hidden}, vocab {a.vocab:,}; {what}; "
          f"rows of {a.seq}, batch {a.batch}; LoRA r={a.r} on query/value, dropout "
          f"{a.lora_dropout}; {a.steps} timed steps after {a.warmup}; {a.rounds} interleaved "
          f"round(s), median; threads {a.threads or 'default'}\n")  # fmt: skip
    unit = "real tokens/s" if a.lengths else "tokens/s"
    print(
        f"| mode | {unit} | all rounds | padding % | s/step | warm-up s | peak RSS MB | trainable |"
    )
    print("|" + "---|" * 8)
    for mode, r in results.items():
        pad = 100 * (1 - r["real_tokens"] / r["padded_tokens"]) if "real_tokens" in r else 0.0
        print(f"| {mode} | {r['tokens_per_s']:.0f} | {r['all_tokens_per_s']} | {pad:.0f} | "
              f"{r['seconds'] / a.steps:.3f} | {r['warmup_seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['trainable'].replace(' || ', ', ')} |")  # fmt: skip
    pairs = [("jax-lora", "torch-peft-lora"), ("jax-packed", "torch-peft-dynamic"),
             ("jax-packed", "torch-peft-max"), ("jax-bucketed", "torch-peft-dynamic")]  # fmt: skip
    for ours, theirs in pairs:
        if ours in results and theirs in results:
            ratio = results[ours]["tokens_per_s"] / results[theirs]["tokens_per_s"]
            print(f"\n{ours} / {theirs} {unit}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
