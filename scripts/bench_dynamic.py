"""Dynamic language weights against static strategies on a run config: worst-language score.

Trains one run per (variant, seed) through the library entry point (what ``langtune train`` does),
each in ``--work/<variant>_s<seed>``, and prints a markdown table of the test split's per-language
macro-F1 (mean over seeds), the mean over languages and the worst language, with the machine
(``lscpu`` model name, load) and versions. Runs already finished in ``--work`` are read back, not
repeated, so an interrupted benchmark continues.

Usage::

    python scripts/bench_dynamic.py configs/demo.yaml --seeds 0,1,2
    python scripts/bench_dynamic.py configs/demo.yaml --variants natural,dynamic-dro \\
        --set train.steps=200

Variants (``--variants``, comma-separated): any static strategy name, or
``dynamic-dro`` / ``dynamic-power`` / ``dynamic-static`` (``every: 0``, weights from the base
model's loss) with the ``sampling.dynamic`` defaults plus ``--dynamic key=value`` overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

VARIANTS = {
    "natural": {"sampling.strategy": "natural"},
    "uniform": {"sampling.strategy": "uniform"},
    "temperature": {"sampling.strategy": "temperature", "sampling.alpha": 0.3},
    "unimax": {"sampling.strategy": "unimax"},
    "log": {"sampling.strategy": "log"},
    "dynamic-dro": {"sampling.strategy": "dynamic", "sampling.dynamic.method": "dro"},
    "dynamic-power": {"sampling.strategy": "dynamic", "sampling.dynamic.method": "power"},
    "dynamic-static": {
        "sampling.strategy": "dynamic",
        "sampling.dynamic.method": "power",
        "sampling.dynamic.every": 0,
    },
}


def run(config: str, variant: str, seed: int, work: Path, extra: list[str]) -> dict[str, float]:
    """Train one run (unless its report exists); its per-language test macro-F1."""
    from langtune_jax.config import load_config
    from langtune_jax.train import train

    run_dir = work / f"{variant}_s{seed}"
    report = run_dir / "eval" / "test" / "report.json"
    if not report.exists():
        sets = [f"{k}={v}" for k, v in VARIANTS[variant].items()]
        if variant.startswith("dynamic"):
            sets += [e for e in extra if e.startswith("sampling.dynamic.")]
        sets += [e for e in extra if not e.startswith("sampling.dynamic.")]
        sets += [f"run.seed={seed}", f"run.name={variant}_s{seed}", "train.eval_every=0"]
        train(load_config(config, sets), run_dir)
    data = json.loads(report.read_text())
    return {lang: m["macro_f1"] for lang, m in data["per_language"].items()}


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(x.split(":", 1)[1].strip() for x in out.splitlines() if "Model name" in x)
    except (OSError, StopIteration):
        model = platform.processor()
    import jax

    return f"{model}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, jax {jax.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--variants", default="natural,uniform,temperature,unimax,dynamic-dro")
    p.add_argument("--seeds", default="0")
    p.add_argument("--work", default="runs/bench_dynamic")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
    args = p.parse_args()
    work = Path(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for variant in args.variants.split(","):
        per_seed = [run(args.config, variant, s, work, args.set) for s in seeds]
        langs = list(per_seed[0])
        results[variant] = {lang: sum(r[lang] for r in per_seed) / len(seeds) for lang in langs}
        worst = [min(r.values()) for r in per_seed]
        results[variant]["_worst_per_seed"] = worst
    langs = [k for k in next(iter(results.values())) if not k.startswith("_")]
    print(f"machine: {machine()}; seeds {seeds}; test macro-F1 x100, mean over seeds")
    print("| variant | " + " | ".join(langs) + " | mean | worst | worst per seed |")
    print("| --- |" + " ---: |" * (len(langs) + 3))
    for variant, r in results.items():
        vals = [r[lang] for lang in langs]
        seeds_worst = ", ".join(f"{100 * w:.1f}" for w in r["_worst_per_seed"])
        cells = [f"{100 * v:.1f}" for v in vals]
        cells += [f"{100 * sum(vals) / len(vals):.1f}", f"{100 * min(vals):.1f}", seeds_worst]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
