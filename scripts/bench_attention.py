"""Attention on CPU: the einsum + softmax path (mask as a bias, or as a select) vs ``jax.nn.dot_product_attention`` (XLA).

MiniLM-sized attention (batch 16, 128 tokens, 12 heads of 32), a padding mask ``[B, 1, 1, T]`` and
a packed block-diagonal mask ``[B, 1, T, T]``; forward alone (eval) and forward + backward
(training), the median of 15 interleaved rounds of 5 calls, jitted. ``models.common.attention`` picks the faster
path per case from this measurement. Example::

    python scripts/bench_attention.py
"""

from __future__ import annotations

import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp

B, T, N, H = 16, 128, 12, 32


def _einsum_where(q, k, v, keep):
    """The earlier einsum path: the scores scaled, the mask as a select on them."""
    s = jnp.einsum("bqnh,bknh->bnqk", q, k).astype(jnp.float32) * H**-0.5
    s = jnp.where(keep, s, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(s, -1), v)


def _einsum(q, k, v, keep):
    """``models.common.attention``'s training path: q scaled, the mask as an additive bias."""
    s = jnp.einsum("bqnh,bknh->bnqk", q * H**-0.5, k).astype(jnp.float32)
    s = s + jnp.where(keep, 0.0, -1e30).astype(jnp.float32)
    return jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(s, -1), v)


def _dpa(q, k, v, keep):
    return jax.nn.dot_product_attention(q, k, v, mask=keep, scale=H**-0.5, implementation="xla")


def _median_ms(fns: list, *args, rounds: int = 15, calls: int = 5) -> list[float]:
    """Median ms per call of each of ``fns``, the rounds interleaved (A B C A B C ...) so a slow
    phase of a shared machine hits every variant alike."""
    for fn in fns:
        jax.block_until_ready(fn(*args))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            for _ in range(calls):
                out = fn(*args)
            jax.block_until_ready(out)
            times[i].append((time.perf_counter() - t) / calls)
    return [1000 * sorted(ts)[len(ts) // 2] for ts in times]


def main() -> None:
    key = jax.random.PRNGKey(0)
    q, k, v = (jax.random.normal(jax.random.fold_in(key, i), (B, T, N, H)) for i in range(3))
    lens = jnp.array([128, 64, 100, 30] * 4)
    real = jnp.arange(T)[None, :] < lens[:, None]
    seg = jnp.where(real, 1 + (jnp.arange(T)[None, :] >= 40), 0)
    masks = {
        "padding [B,1,1,T]": real[:, None, None, :],
        "packed [B,1,T,T]": (seg[:, None, None, :] != 0)
        & ((seg[:, None, :, None] == seg[:, None, None, :]) | (seg[:, None, :, None] == 0)),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
    except (OSError, StopIteration):
        cpu = platform.processor()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"CPU {cpu}, {os.cpu_count()} cores, load {load}; jax {jax.__version__}; "
          f"[{B}, {T}, {N}, {H}] float32\n")  # fmt: skip
    print("| mask | pass | einsum (q scaled, bias) ms | einsum (where) ms | dot_product_attention ms "
          "| where / bias | dpa / bias |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, keep in masks.items():
        for label, wrap in (
            ("forward", lambda f, m=keep: jax.jit(lambda q, k, v: f(q, k, v, m))),
            ("forward+backward", lambda f, m=keep: jax.jit(jax.grad(
                lambda q, k, v: (f(q, k, v, m) ** 2).sum(), argnums=(0, 1, 2)))),
        ):  # fmt: skip
            e, w, d = _median_ms([wrap(_einsum), wrap(_einsum_where), wrap(_dpa)], q, k, v)
            print(f"| {name} | {label} | {e:.1f} | {w:.1f} | {d:.1f} | {w / e:.2f}x "
                  f"| {d / e:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
