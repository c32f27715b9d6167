"""Benchmark the run folder's tokenized-split cache: what reopening a run (eval, export) costs.

Builds a synthetic classification set of N training rows over five languages (JSONL, one file per
language), then times, each in a fresh subprocess (so peak memory is the mode's own):
  * ``read``: ``DataPipeline`` without a cache (read + validate + tokenize train), as every
    ``langtune eval``/``export`` did before the cache;
  * ``write``: the same with ``cache_dir`` (a training run's first start: it also writes the cache);
  * ``reopen``: ``DataPipeline`` with the cache in place (what ``eval``/``export`` now do).

    .venv/bin/python scripts/bench_data_cache.py [--rows 300000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
SHARES = {"en": 0.5, "es": 0.3, "qu": 0.05, "sw": 0.08, "yo": 0.07}


def _write(root: Path, rows: int) -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(2000)]
    for split, scale in (("train", 1.0), ("validation", 0.01)):
        (root / split).mkdir(parents=True)
        for lang, share in SHARES.items():
            with open(root / split / f"{lang}.jsonl", "w") as f:
                for _ in range(max(2, int(rows * share * scale))):
                    text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))
                    f.write(json.dumps({"text": text, "label": rng.choice("abcde")}) + "\n")


def _child(data: str, cache: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from langtune_jax.data import DataConfig, DataPipeline, SamplingConfig, SourceConfig

    tok = AutoTokenizer.from_pretrained(str(ROOT / "demo" / "tiny-mbert"))
    cfg = DataConfig(sources=[SourceConfig(path=f"{data}/{{split}}/{{language}}.jsonl")],
                     max_length=64)  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    DataPipeline(cfg, SamplingConfig(), tok, task="sequence-classification", cache_dir=cache)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rss_mb": (peak - before) / 1024}))


def _run(data: Path, cache: Path | None) -> dict:
    args = [sys.executable, __file__, "--child", str(data)] + ([str(cache)] if cache else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300_000, help="training rows (all languages)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a.child[0], a.child[1] if len(a.child) > 1 else None)
        return
    import numpy
    import tokenizers

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines()
         if ln.startswith("Model name")), platform.processor())  # fmt: skip
    print(f"cpu: {cpu}; load: {os.getloadavg()[0]:.1f}; python {platform.python_version()}, "
          f"numpy {numpy.__version__}, tokenizers {tokenizers.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "run" / "data_cache"
        _write(data, a.rows)
        results = {
            "read (no cache)": _run(data, None),
            "write (first start)": _run(data, cache),
            "reopen (from cache)": _run(data, cache),
        }
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
    print(f"\n{a.rows:,} training rows; cache on disk {size:.1f} MB\n")
    print("| mode | seconds | peak RSS increase (MB) |\n| --- | ---: | ---: |")
    for mode, r in results.items():
        print(f"| {mode} | {r['seconds']:.2f} | {r['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
