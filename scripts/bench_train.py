"""Training throughput of the real train step: steps/s, tokens/s and model-FLOPs utilisation (MFU).

Cases (sequence classification, synthetic batches with every position a real token):

- ``demo-lora``: ``configs/demo.yaml`` as it is (LoRA r=8 on query/value of ``demo/tiny-mbert``,
  its batch size, ``max_length``, optimizer and dropout), weights loaded with ``from_pretrained``;
- ``minilm-lora``: a MiniLM-sized BERT (6 layers, hidden 384, 12 heads, intermediate 1536, mBERT's
  119,547-token vocabulary unless ``--vocab``; random weights, nothing downloaded), batch 16 x 128,
  LoRA r=8 / alpha 16 on query/value with the classifier trained (``task_type: SEQ_CLS``);
- ``minilm-full``: the same model, full fine-tuning (``peft.method: none``).

Every case goes through the library's own pieces, as ``langtune train`` does: ``apply_peft`` (the
loop's PEFT set-up), ``split_model``, ``state_shardings`` over a mesh of all local devices,
``make_optimizer`` (AdamW, global-norm clipping) and the one jitted ``make_train_step``; batches are
placed with ``put_batch``. After ``--warmup`` untimed steps (the first compiles), ``--steps`` steps
are timed to the last result being ready.

Peak: the FLOP/s of a square ``--peak-size`` matmul in the compute dtype, jitted and timed in the
same process (best of several runs, measured before and after the cases; the higher counts), i.e.
what this machine's XLA matmul actually reaches now. On a shared CPU this moves with the load; the
load average is printed with the table.

Model FLOPs per step (``tokens = batch * seq_len``; ``L`` layers, width ``D``, sequence ``T``):

- ``N`` = parameters of the encoder's matmuls, per layer ``4 D^2`` (Q, K, V, attention output) +
  ``2 D I`` (MLP), times ``L``. Embeddings are gathers, not matmuls; the pooler and classifier act
  on one position per example and are added separately as ``N_head`` per *example*.
- Attention scores and the weighted sum cost ``4 L T D`` FLOPs per token forward (``QK^T`` and
  ``AV``, 2 FLOPs per multiply-add), ``8 L T D`` backward (PaLM's ``6N + 12 L T D`` accounting).
- Full fine-tuning: ``6 N + 12 L T D`` per token (forward 2N, backward 2N for activation gradients
  + 2N for weight gradients) + ``6 N_head`` per example.
- LoRA: the frozen weights need no weight gradients, so ``4 N + 8 L T D`` per token (forward +
  backward through the activations), plus ``6 N_lora`` for the LoRA matmuls (``x A`` and ``(xA) B``
  forward, their input and weight gradients), plus ``6 N_head`` per example (the classifier trains;
  the frozen pooler's weight gradient is not needed, which this slightly overcounts). XLA also skips
  the input gradient of the lowest layer's matmuls below the first LoRA module; not subtracted
  (an overcount of at most ``2N/L`` per token).

``MFU = model FLOPs per step * steps/s / measured matmul peak``. Example::

    python scripts/bench_train.py                       # all cases, CPU (or the default backend)
    python scripts/bench_train.py --cases minilm-lora --vocab 30522 --steps 3
    python scripts/bench_train.py --dtype bfloat16      # bf16 compute (GPU/TPU), bf16 peak
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CASES = ("demo-lora", "minilm-lora", "minilm-full")


def measure_peak(size: int, dtype: str, repeats: int = 5) -> float:
    """FLOP/s of a jitted ``[size, size] @ [size, size]`` matmul (best of ``repeats`` timings)."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (size, size), jnp.dtype(dtype))
    b = jax.random.normal(k2, (size, size), jnp.dtype(dtype))
    # Chain a few matmuls per call so dispatch overhead does not count on fast accelerators.
    chain = 4 if jax.default_backend() != "cpu" else 1

    @jax.jit
    def f(a, b):
        for _ in range(chain):
            a = (a @ b) * 1e-3  # keep values finite; the scale is ~free next to the matmul
        return a

    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return chain * 2 * size**3 / best


def _minilm_hf_config(a) -> dict:
    return dict(
        model_type="bert", vocab_size=a.vocab, hidden_size=384, num_hidden_layers=6,
        num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512,
        num_labels=3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )  # fmt: skip


def _minilm_config(a, method: str):
    from langtune_jax.config import RunConfig, from_dict

    return from_dict(RunConfig, {
        "model": {"name_or_path": "synthetic-minilm", "dtype": a.dtype},
        "peft": {"method": method, "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
                                             "target_modules": ["query", "value"],
                                             "task_type": "SEQ_CLS"}},
        "data": {"max_length": 128},
        "train": {"batch_size": 16, "learning_rate": 1e-4},
    })  # fmt: skip


def _demo_labels(cfg) -> int:
    labels = set()
    for source in cfg.data.sources:
        folder = ROOT / source.path.format(split="train")
        for path in sorted(folder.glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    labels.add(json.loads(line)["label"])
    return len(labels)


def build_case(name: str, a):
    """The run config, the model (LoRA applied or not) and the shape facts for FLOP counting."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from langtune_jax.config import load_config
    from langtune_jax.models import bert, from_pretrained
    from langtune_jax.train.session import apply_peft

    dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
    if name == "demo-lora":
        cfg = load_config(ROOT / "configs/demo.yaml", [f"model.dtype={a.dtype}"])
        folder = ROOT / cfg.model.name_or_path
        hf = json.loads((folder / "config.json").read_text())
        model = from_pretrained(
            str(folder),
            task=cfg.model.task,
            dtype=dtype,
            num_labels=_demo_labels(cfg),
            rng_impl=cfg.train.rng_impl,
        )
    else:
        cfg = _minilm_config(a, "lora" if name == "minilm-lora" else "none")
        hf = _minilm_hf_config(a)
        rngs = nnx.Rngs(params=0, dropout=jax.random.key(0, impl=cfg.train.rng_impl))
        model = bert.from_hf_config(hf, cfg.model.task, dtype=dtype, rngs=rngs)
    # Dropout keys as the trainer makes them (train.rng_impl).
    dropout_key = jax.random.key(2, impl=cfg.train.rng_impl)
    model, trainable = apply_peft(model, cfg, nnx.Rngs(params=1, dropout=dropout_key))
    return cfg, hf, model, trainable


def model_flops_per_step(hf: dict, cfg, num_labels: int, n_lora: int) -> float:
    """Model FLOPs of one optimizer step (see the module docstring for the formula)."""
    d, i, layers = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    b, t = cfg.train.batch_size, cfg.data.max_length
    n = layers * (4 * d * d + 2 * d * i)
    n_head = d * d + d * num_labels  # pooler + classifier, on the [CLS] row only
    attn = 4 * layers * t * d  # forward FLOPs per token of QK^T and AV
    if cfg.peft.method == "none":
        per_token = 6 * n + 3 * attn
    else:
        per_token = 4 * n + 2 * attn + 6 * n_lora
    return b * t * per_token + b * 6 * n_head


def run_case(name: str, a) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from langtune_jax import peft as peft_lib
    from langtune_jax.train import mesh as mesh_lib
    from langtune_jax.train.optim import make_optimizer
    from langtune_jax.train.step import make_train_step, split_model

    cfg, hf, model, trainable_filter = build_case(name, a)
    num_labels = model.classifier.kernel.get_value().shape[-1]
    n_lora = sum(
        x.size for x in jax.tree.leaves(nnx.state(model, peft_lib.LoRAParam))
    ) if cfg.peft.method != "none" else 0  # fmt: skip
    n_trainable = sum(x.size for x in jax.tree.leaves(nnx.state(model, trainable_filter)))
    n_total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    split = split_model(model, trainable_filter)
    shardings = {k: mesh_lib.state_shardings(getattr(split, k), mesh)
                 for k in ("trainable", "frozen", "mutable")}  # fmt: skip
    trainable = jax.device_put(split.trainable, shardings["trainable"])
    frozen = jax.device_put(split.frozen, shardings["frozen"])
    mutable = jax.device_put(split.mutable, shardings["mutable"])
    tx = make_optimizer(cfg.train)
    opt_state = tx.init(trainable)
    shardings["opt_state"] = mesh_lib.opt_state_shardings(
        tx, opt_state, shardings["trainable"], mesh
    )
    opt_state = jax.device_put(opt_state, shardings["opt_state"])
    step = make_train_step(split, tx, task=cfg.model.task, mesh=mesh, param_shardings=shardings,
                           grad_accum_steps=cfg.train.grad_accum_steps)  # fmt: skip

    b, t = cfg.train.batch_size, cfg.data.max_length
    rng = np.random.default_rng(0)
    local_b = b // jax.process_count()
    batches = [
        {
            "input_ids": rng.integers(1, hf["vocab_size"], (local_b, t)).astype(np.int32),
            "attention_mask": np.ones((local_b, t), np.int32),
            "token_type_ids": np.zeros((local_b, t), np.int32),
            "labels": rng.integers(0, num_labels, (local_b,)).astype(np.int32),
            "example_mask": np.ones((local_b,), np.int32),
        }
        for _ in range(2)
    ]
    xla_flops = None
    if a.xla_flops:  # XLA's own count of the compiled step, to check the formula (compiles again)
        batch = mesh_lib.put_batch(batches[0], mesh)
        cost = step.lower(trainable, opt_state, mutable, frozen, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla_flops = float(cost.get("flops", float("nan")))

    def run(n: int) -> float:
        """Seconds for ``n`` steps, alternating the two batches."""
        nonlocal trainable, opt_state, mutable, metrics
        t0 = time.perf_counter()
        for i in range(n):
            batch = mesh_lib.put_batch(batches[i % 2], mesh)
            trainable, opt_state, mutable, metrics = step(
                trainable, opt_state, mutable, frozen, batch
            )
        jax.block_until_ready((trainable, metrics))
        return time.perf_counter() - t0

    metrics = None
    warmup_s = run(a.warmup)
    seconds = run(a.steps)
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise RuntimeError(f"{name}: non-finite loss {loss}")

    flops = model_flops_per_step(hf, cfg, num_labels, n_lora)
    steps_per_s = a.steps / seconds
    return dict(
        case=name, method=cfg.peft.method, batch=b, seq=t, layers=hf["num_hidden_layers"],
        hidden=hf["hidden_size"], vocab=hf["vocab_size"], params=n_total, trainable=n_trainable,
        steps_per_s=steps_per_s, tokens_per_s=steps_per_s * b * t,
        model_tflops_per_step=flops / 1e12, achieved_tflops=flops * steps_per_s / 1e12,
        warmup_s=warmup_s, loss=loss,
        xla_tflops_per_step=None if xla_flops is None else xla_flops / 1e12,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {CASES}")
    p.add_argument("--vocab", type=int, default=119547, help="MiniLM vocabulary (mBERT: 119547)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (the first compiles)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="compute dtype of the model and of the peak matmul; auto (model.dtype's "
                        "default) = bfloat16 on GPU/TPU, float32 on CPU")  # fmt: skip
    p.add_argument("--peak-size", type=int, default=None,
                   help="matmul size for the peak (default 2048 on CPU, 8192 otherwise)")  # fmt: skip
    p.add_argument("--xla-flops", action="store_true",
                   help="also print XLA's FLOP count of the compiled step (compiles it twice)")  # fmt: skip
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import jax

    backend = jax.default_backend()
    if a.dtype == "auto":
        a.dtype = "float32" if backend == "cpu" else "bfloat16"
    size = a.peak_size or (2048 if backend == "cpu" else 8192)
    peak = measure_peak(size, a.dtype)
    print(f"backend {backend}: {jax.device_count()} x {jax.devices()[0].device_kind}; "
          f"{a.dtype} matmul {size}^3 peak {peak / 1e12:.3f} TFLOP/s", file=sys.stderr)  # fmt: skip
    results = []
    for name in a.cases.split(","):
        if name not in CASES:
            raise SystemExit(f"--cases: unknown case {name!r}; choose from {CASES}")
        r = run_case(name, a)
        results.append(r)
        xla = r["xla_tflops_per_step"]
        print(f"{name}: {r['steps_per_s']:.3f} steps/s, {r['tokens_per_s']:.0f} tokens/s; model "
              f"TFLOP/step {r['model_tflops_per_step']:.4f}"
              + (f", XLA cost analysis {xla:.4f}" if xla is not None else ""),
              file=sys.stderr)  # fmt: skip
    peak_after = measure_peak(size, a.dtype)
    print(f"peak after the cases {peak_after / 1e12:.3f} TFLOP/s", file=sys.stderr)
    peak = max(peak, peak_after)
    for r in results:
        r["mfu"] = r["achieved_tflops"] * 1e12 / peak

    load = os.getloadavg()[0]
    print(f"\n{backend}: {jax.device_count()} x {jax.devices()[0].device_kind}, "
          f"{os.cpu_count()} CPU cores, load average {load:.1f}; compute {a.dtype}; measured "
          f"matmul peak {peak / 1e12:.3f} TFLOP/s ({size}^3); {a.steps} timed steps after "
          f"{a.warmup}\n")  # fmt: skip
    print(
        "| case | method | batch x seq | params | trainable | steps/s | tokens/s "
        "| model TFLOP/step | TFLOP/s | MFU | compile+warmup s |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['case']} | {r['method']} | {r['batch']} x {r['seq']} | {r['params']:,} "
              f"| {r['trainable']:,} | {r['steps_per_s']:.3f} | {r['tokens_per_s']:,.0f} "
              f"| {r['model_tflops_per_step']:.4f} | {r['achieved_tflops']:.4f} "
              f"| {100 * r['mfu']:.1f}% | {r['warmup_s']:.1f} |")  # fmt: skip
    if a.json:
        meta = dict(backend=backend, device=jax.devices()[0].device_kind,
                    devices=jax.device_count(), peak_flops=peak, peak_size=size, dtype=a.dtype,
                    load_average=load)  # fmt: skip
        Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
