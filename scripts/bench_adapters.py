"""Training cost of bottleneck adapters vs LoRA vs full fine-tuning, on the same model and batch.

Each method runs in a *fresh subprocess* (so peak memory is its own): build the same random
MiniLM-sized multilingual BERT classifier (6 layers, hidden 384, mBERT vocabulary by default),
apply the method, and time the jitted train step (forward, backward over the trainable set only,
AdamW update). Methods:

- ``full``: every parameter trains;
- ``lora``: LoRA r=8 on ``query``/``value`` (PEFT's default for BERT) + the classifier;
- ``adapters``: Pfeiffer bottleneck adapters (size 64) in every layer + the classifier;
- ``adapters-houlsby``: two adapters per layer;
- ``lang-adapters``: per-language adapters for 5 languages + a shared task adapter, each example
  routed by its language id inside the batch (MAD-X style).

Reported: tokens/s (``B * T / median step time``, compilation excluded; with ``--rounds N`` the
median of N interleaved rounds per method), trainable parameters,
peak host memory (``getrusage`` max RSS of the subprocess) and, on accelerators, the device's
peak bytes in use. Example::

    python scripts/bench_adapters.py --batch 16 --seq 128 --steps 10 --json bench_adapters.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("full", "lora", "adapters", "adapters-houlsby", "lang-adapters")
LANGUAGES = ["en", "es", "sw", "yo", "qu"]


def run_one(method: str, args: argparse.Namespace) -> dict:
    """Build, adapt and time one method in this process; returns the measurements."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from langtune_jax.models import bert
    from langtune_jax.peft import adapters as ad
    from langtune_jax.peft import lora

    hf = dict(
        model_type="bert",
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=512,
    )
    # Dropout keys as the trainer makes them (train.rng_impl's default, threefry4x32).
    rngs = nnx.Rngs(params=0, dropout=jax.random.key(0, impl="threefry4x32"))
    model = bert.from_hf_config(hf, "sequence-classification", rngs=rngs, num_labels=5)
    routed = False
    if method == "full":
        filt = nnx.Param
    elif method == "lora":
        lora.apply_lora(model, lora.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                               modules_to_save=["classifier"]))  # fmt: skip
        filt = lora.trainable_filter(model)
    else:
        placement = "houlsby" if method == "adapters-houlsby" else "pfeiffer"
        languages = LANGUAGES if method == "lang-adapters" else None
        cfg = ad.AdapterConfig(placement=placement, adapter_size=64, languages=languages)
        ad.apply_adapters(model, cfg)
        filt = ad.adapter_trainable_filter(model)
        routed = languages is not None
    model.train()
    opt = nnx.Optimizer(model, optax.adamw(1e-4), wrt=filt)

    rs = np.random.RandomState(0)
    ids = jnp.asarray(rs.randint(1, args.vocab, (args.batch, args.seq)), jnp.int32)
    mask = jnp.ones_like(ids)
    labels = jnp.asarray(rs.randint(0, 5, (args.batch,)), jnp.int32)
    lang = jnp.asarray(rs.randint(0, len(LANGUAGES), (args.batch,)), jnp.int32)

    @nnx.jit
    def step(model, opt, ids, mask, labels, lang):
        def loss_fn(m):
            if routed:
                with ad.with_routing(m, lang):
                    logits = m(ids, mask).logits
            else:
                logits = m(ids, mask).logits
            return optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels
            ).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, filt))(model)
        opt.update(model, grads)
        return loss

    t0 = time.perf_counter()
    jax.block_until_ready(step(model, opt, ids, mask, labels, lang))
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        jax.block_until_ready(step(model, opt, ids, mask, labels, lang))
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(model, opt, ids, mask, labels, lang))
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)

    def count(f):
        return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, f))))

    total = count(nnx.Any(nnx.Param, ad.AdapterParam, lora.LoRAParam))
    trainable = count(filt)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "method": method,
        "tokens_per_s": args.batch * args.seq / step_s,
        "step_ms": 1000 * step_s,
        "compile_s": compile_s,
        "trainable": trainable,
        "trainable_pct": 100.0 * trainable / total,
        # ru_maxrss is in KiB on Linux.
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
        "device": str(jax.devices()[0].device_kind),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of " + ", ".join(METHODS),
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--vocab", type=int, default=119547, help="119547 = mBERT's vocabulary")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the methods this many times, interleaved, and report each method's median "
        "round (evens out load from other processes on a shared machine)",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    args = p.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)))
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {METHODS}")
    passthrough = [
        f"--{k}={v}" for k, v in vars(args).items() if k not in ("json", "one", "methods", "rounds")
    ]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for round_ in range(args.rounds):
        for method in methods:
            out = subprocess.run(
                [sys.executable, __file__, *passthrough, "--one", method],
                capture_output=True,
                text=True,
            )
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{method} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            r = json.loads(line[-1][len("RESULT ") :])
            print(
                f"round {round_ + 1}: {method} {r['tokens_per_s']:,.0f} tokens/s", file=sys.stderr
            )
            runs[method].append(r)
    # The median round of each method: robust to bursts of load from other processes.
    results = [sorted(runs[m], key=lambda r: r["tokens_per_s"])[len(runs[m]) // 2] for m in methods]

    full = next((r for r in results if r["method"] == "full"), None)
    print(
        f"\nBERT {args.layers}x{args.hidden}, vocab {args.vocab}, batch {args.batch} x "
        f"{args.seq}, {results[0]['device']} ({platform.machine()})\n"
    )
    print(
        "| method | tokens/s | vs full | step ms | trainable | trainable % | max RSS MB | device peak MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        rel = f"{r['tokens_per_s'] / full['tokens_per_s']:.2f}x" if full else "-"
        dev = f"{r['device_peak_mb']:.0f}" if r["device_peak_mb"] else "-"
        print(
            f"| {r['method']} | {r['tokens_per_s']:,.0f} | {rel} | {r['step_ms']:.1f} | "
            f"{r['trainable']:,d} | {r['trainable_pct']:.2f} | {r['max_rss_mb']:.0f} | {dev} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
