"""Matrix-multiply throughput of XLA:CPU (JAX) vs PyTorch on the shapes of the LoRA benchmark.

``scripts/bench_lora.py`` compares whole training steps; this script isolates the part neither
framework's Python can change: the GEMMs of a MiniLM-sized BERT step (2048 tokens x hidden 384,
FFN 1536), float32 and bfloat16, one matmul at a time and as a 6-layer FFN chain forward +
input-gradient (what a LoRA step runs through its frozen layers). GFLOP/s = 2*M*K*N / seconds,
median of ``--repeats`` timings of ``--iters`` calls. Example::

    python scripts/bench_gemm.py
    python scripts/bench_gemm.py --tokens 1024 --iters 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _timed(fn, block, iters: int, repeats: int) -> float:
    block(fn())  # compile / warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = fn()
        block(out)
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="rows: batch x sequence length")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=6, help="layers of the FFN chain")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    m, d, f = a.tokens, a.hidden, 4 * a.hidden
    rows = []

    def gflops(flop, seconds):
        return flop / seconds / 1e9

    for k, n in ((d, d), (d, f), (f, d)):
        flop = 2 * m * k * n
        for name, jdt, tdt in (
            ("float32", jnp.float32, torch.float32),
            ("bfloat16", jnp.bfloat16, torch.bfloat16),
        ):
            x, w = jnp.ones((m, k), jdt), jnp.ones((k, n), jdt)
            mm = jax.jit(jnp.matmul)
            tj = _timed(lambda x=x, w=w, mm=mm: mm(x, w), jax.block_until_ready, a.iters, a.repeats)
            xt, wt = torch.ones((m, k), dtype=tdt), torch.ones((k, n), dtype=tdt)
            tt = _timed(lambda xt=xt, wt=wt: xt @ wt, lambda o: o, a.iters, a.repeats)
            rows.append((f"matmul [{m},{k}] x [{k},{n}]", name, gflops(flop, tj), gflops(flop, tt)))

    # The FFN chain a LoRA step pushes gradients through: x + gelu(x W1) W2, layer after layer.
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((m, d), dtype=np.float32)
    w1 = rng.standard_normal((a.layers, d, f), dtype=np.float32) * 0.02
    w2 = rng.standard_normal((a.layers, f, d), dtype=np.float32) * 0.02
    flop = a.layers * 2 * (2 * m * d * f)  # forward

    def chain(x, w1, w2):
        for i in range(a.layers):
            x = x + jax.nn.gelu(x @ w1[i], approximate=False) @ w2[i]  # [M, D]
        return x

    fwd = jax.jit(chain)
    bwd = jax.jit(jax.grad(lambda x, w1, w2: chain(x, w1, w2).sum()))
    xj, w1j, w2j = jnp.asarray(x0), jnp.asarray(w1), jnp.asarray(w2)
    xt = torch.from_numpy(x0.copy()).requires_grad_()
    w1t, w2t = torch.from_numpy(w1), torch.from_numpy(w2)

    def torch_chain(x):
        for i in range(a.layers):
            x = x + torch.nn.functional.gelu(x @ w1t[i]) @ w2t[i]
        return x

    def torch_bwd():
        xt.grad = None
        torch_chain(xt).sum().backward()
        return xt.grad

    block = jax.block_until_ready
    with torch.no_grad():
        tt = _timed(lambda: torch_chain(xt), lambda o: o, a.iters, a.repeats)
    tj = _timed(lambda: fwd(xj, w1j, w2j), block, a.iters, a.repeats)
    rows.append((f"FFN chain x{a.layers}, forward", "float32", gflops(flop, tj), gflops(flop, tt)))
    tj = _timed(lambda: bwd(xj, w1j, w2j), block, a.iters, a.repeats)
    tt = _timed(torch_bwd, lambda o: o, a.iters, a.repeats)
    rows.append(
        (
            f"FFN chain x{a.layers}, forward + dx",
            "float32",
            gflops(2 * flop, tj),
            gflops(2 * flop, tt),
        )
    )

    print(
        f"\njax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); CPU cores {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| case | dtype | JAX GFLOP/s | PyTorch GFLOP/s | JAX / PyTorch |")
    print("|---|---|---:|---:|---:|")
    for case, dtype, gj, gt in rows:
        print(f"| {case} | {dtype} | {gj:,.0f} | {gt:,.0f} | {gj / gt:.2f}x |")


if __name__ == "__main__":
    main()
