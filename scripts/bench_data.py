"""Benchmark the data path: langtune_jax's stateless mixture and pipeline vs torch's sampler.

Measures, in one run on the same data and tokenizer:
  1. draws/s of the language mixture (index -> (language, example)): `LanguageMixture.locate`
     vs iterating a torch `WeightedRandomSampler` with per-example weights p_lang / n_lang;
  2. batches/s of the full train pipeline (mixture -> tokenized rows -> padded bucketed batch,
     grain background prefetch) vs torch `WeightedRandomSampler` + `DataLoader` doing the same
     job: (a) tokenizing in `collate_fn` (the usual recipe), (b) on pre-tokenized rows (same work
     split as ours);
  3. setup time (read + validate + tokenize for ours).

Data: demo/data (if present, else a synthetic stand-in with the same sizes). Tokenizer: the
demo's (demo/tiny-mbert) if present, else a WordPiece trained on the train texts.

    .venv/bin/python scripts/bench_data.py [--batch-size 32] [--steps 300] [--draws 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {"en": 2400, "es": 1600, "qu": 270, "sw": 400, "yo": 330}


def _synthetic(root: Path) -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    for split, scale in (("train", 1.0), ("validation", 0.2)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for lang, n in SIZES.items():
            with open(root / split / f"{lang}.jsonl", "w") as f:
                for _ in range(int(n * scale)):
                    text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 20)))
                    f.write(
                        json.dumps({"text": text, "label": rng.choice("abcde"), "language": lang})
                        + "\n"
                    )


def _tokenizer(data_root: Path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if Path("demo/tiny-mbert/tokenizer.json").exists():
        return AutoTokenizer.from_pretrained("demo/tiny-mbert"), "demo/tiny-mbert"
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    texts = [
        json.loads(line)["text"]
        for p in sorted((data_root / "train").glob("*.jsonl"))
        for line in open(p)
    ]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        texts,
        trainers.WordPieceTrainer(
            vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    return fast, "WordPiece (2k) trained on the train texts"


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--draws", type=int, default=1_000_000)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    import torch
    from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

    from langtune_jax.data import DataConfig, DataPipeline, SamplingConfig, SourceConfig

    data_root = Path("demo/data")
    source = "demo/data"
    tmp = None
    if not (data_root / "train").is_dir():
        tmp = tempfile.TemporaryDirectory()
        data_root = Path(tmp.name)
        _synthetic(data_root)
        source = "synthetic stand-in (demo sizes)"
    tokenizer, tok_name = _tokenizer(data_root)
    torch.set_num_threads(1)

    data_cfg = DataConfig(
        sources=[SourceConfig(path=f"{data_root}/{{split}}")], max_length=args.max_length
    )
    sampling = SamplingConfig(strategy="temperature", alpha=0.3)
    t0 = time.perf_counter()
    pipe = DataPipeline(
        data_cfg,
        sampling,
        tokenizer,
        task="sequence-classification",
        seed=0,
        total_samples=args.steps * args.batch_size,
    )
    setup = time.perf_counter() - t0
    langs = pipe.languages
    probs = np.array([pipe.probabilities[lang] for lang in langs])
    sizes = np.array([len(pipe.train.examples[lang]) for lang in langs])
    rows = []

    # 1. Mixture draws/s.
    mix = pipe.mixture(args.batch_size)
    chunk = 65_536
    t0 = time.perf_counter()
    for start in range(0, args.draws, chunk):
        mix.locate(np.arange(start, min(start + chunk, args.draws)))
    ours_mix = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, 50_000, args.batch_size):  # per-batch calls, as the pipeline does
        mix.locate(np.arange(start, start + args.batch_size))
    ours_mix_b = time.perf_counter() - t0
    weights = torch.cat([torch.full((n,), float(p / n)) for p, n in zip(probs, sizes)])
    sampler = WeightedRandomSampler(
        weights, args.draws, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    t0 = time.perf_counter()
    drawn = np.fromiter(iter(sampler), dtype=np.int64, count=args.draws)
    torch_mix = time.perf_counter() - t0
    rows.append(
        (
            "mixture draws/s (chunks of 65,536)",
            _rate(args.draws, ours_mix),
            _rate(args.draws, torch_mix),
        )
    )
    rows.append(
        (
            f"mixture draws/s (per batch of {args.batch_size})",
            _rate(50_000 // args.batch_size * args.batch_size, ours_mix_b),
            "-",
        )
    )

    # Share accuracy in the first 10 batches (a window the size of an eval interval is similar).
    n_check = 10 * args.batch_size
    ours_l, _ = mix.locate(np.arange(n_check))
    torch_l = np.searchsorted(np.cumsum(sizes), drawn[:n_check], side="right")
    dev_ours = np.abs(np.bincount(ours_l, minlength=len(langs)) - probs * n_check).max()
    dev_torch = np.abs(np.bincount(torch_l, minlength=len(langs)) - probs * n_check).max()
    rows.append(
        (f"max |count - target| over first {n_check} draws", f"{dev_ours:.1f}", f"{dev_torch:.1f}")
    )

    # 2. Full pipeline batches/s.
    it = pipe.train_batches(args.batch_size, process_index=0, process_count=1)
    next(it)  # start the prefetch thread
    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    ours_pipe = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(args.steps):
        pipe.batch_at(s, args.batch_size, process_index=0, process_count=1)
    ours_sync = time.perf_counter() - t0

    texts = [ex for lang in langs for ex in pipe.train.examples[lang]]
    lang_of = np.repeat(np.arange(len(langs)), sizes)
    label_to_id = pipe.label_to_id
    buckets = data_cfg.buckets()

    class Raw(Dataset):
        def __len__(self):
            return len(texts)

        def __getitem__(self, i):
            return texts[i]["text"], label_to_id[texts[i]["label"]], int(lang_of[i])

    def collate_tokenize(items):
        enc = tokenizer([t for t, _, _ in items], truncation=True, max_length=args.max_length)
        longest = max(len(x) for x in enc["input_ids"])
        t = next(b for b in buckets if b >= longest)
        enc = tokenizer.pad(enc, padding="max_length", max_length=t, return_tensors="np")
        return {
            **enc,
            "labels": np.array([y for _, y, _ in items], np.int32),
            "language_id": np.array([lang for _, _, lang in items], np.int32),
        }

    stores = [pipe.stores[lang] for lang in langs]
    flat = [(s, r) for s in stores for r in range(len(s))]

    class Pre(Dataset):
        def __len__(self):
            return len(flat)

        def __getitem__(self, i):
            return flat[i], int(lang_of[i])

    from langtune_jax.data import choose_bucket, collate

    def collate_pre(items):
        rs = [r for r, _ in items]
        t = choose_bucket(max(int(s.lengths[r]) for s, r in rs), buckets)
        out = collate(rs, t, pad_id=pipe.pad_id, task="sequence-classification")
        out["language_id"] = np.array([lang for _, lang in items], np.int32)
        return out

    results = {}
    for name, ds, fn in (
        ("tokenize in collate_fn", Raw(), collate_tokenize),
        ("pre-tokenized", Pre(), collate_pre),
    ):
        smp = WeightedRandomSampler(
            weights,
            args.steps * args.batch_size + args.batch_size,
            replacement=True,
            generator=torch.Generator().manual_seed(0),
        )
        loader = DataLoader(
            ds, batch_size=args.batch_size, sampler=smp, collate_fn=fn, num_workers=0
        )
        li = iter(loader)
        next(li)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            next(li)
        results[name] = time.perf_counter() - t0
    rows.append(
        (
            "pipeline batches/s (grain prefetch thread)",
            _rate(args.steps, ours_pipe),
            _rate(args.steps, results["tokenize in collate_fn"]) + " (tokenize in collate)",
        )
    )
    rows.append(
        (
            "pipeline batches/s (synchronous batch_at)",
            _rate(args.steps, ours_sync),
            _rate(args.steps, results["pre-tokenized"]) + " (pre-tokenized)",
        )
    )
    rows.append(("setup: read + validate + tokenize (s)", f"{setup:.2f}", "-"))

    w = max(len(r[0]) for r in rows)
    print(
        f"data: {source}; tokenizer: {tok_name}; batch {args.batch_size}, "
        f"max_length {args.max_length}, strategy temperature 0.3, {os.cpu_count()} CPU cores"
    )
    print(f"{'':{w}}  {'langtune_jax':>14}  torch WeightedRandomSampler+DataLoader")
    for name, ours, theirs in rows:
        print(f"{name:{w}}  {ours:>14}  {theirs}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
