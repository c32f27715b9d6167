"""Tokenized splits cached in the run folder, so reopening a run does not re-read its data.

Training writes each split it tokenizes to ``RUN_DIR/data_cache/<fingerprint>/<split>.npz`` (the
ragged :class:`~langtune_jax.data.features.Tokenized` arrays per language) and ``<split>.json``
(languages, counts, skipped rows, the label vocabulary). ``langtune eval``, ``export`` and
``generate`` and a resumed run then load those arrays instead of reading and tokenizing the
training set again.

The fingerprint covers everything the arrays depend on: the ``data`` config, the task, the
tokenizer (its full serialised form, special tokens and chat template) and the size and
modification time of every file the sources match (a Hub dataset is named only by its id and
config). Any change gives a new fingerprint, so a stale cache is never read; the older cache
folder is removed when a new one is written.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from langtune_jax.data.config import DataConfig
from langtune_jax.data.errors import DataError
from langtune_jax.data.features import Tokenized
from langtune_jax.data.sources import SplitData

CACHE_VERSION = 2  # 2: the count of truncated rows per language
_ARRAYS = ("input_ids", "offsets", "token_type_ids", "token_labels", "labels")


class CachedRows(Sequence):
    """The rows of a split restored from the cache: their count only (the tokens are in the
    store); the raw examples are not kept."""

    def __init__(self, n: int):
        self._n = int(n)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        raise DataError(
            "this split was restored from the run folder's tokenized cache, which keeps no raw "
            "examples; delete RUN_DIR/data_cache to read the data again"
        )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of a fast tokenizer: its serialised pipeline, special tokens and chat template."""
    backend = ""
    if hasattr(tokenizer, "backend_tokenizer"):
        # Truncation and padding are per-call state that transformers leaves on the backend
        # after a call: not part of what the tokenizer is.
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        backend = json.dumps(state | {"truncation": None, "padding": None}, sort_keys=True)
    specials = {
        name: getattr(tokenizer, name, None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id")
    }
    extra = json.dumps(
        {"specials": specials, "chat_template": getattr(tokenizer, "chat_template", None)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((backend + extra).encode()).hexdigest()[:16]


def _file_stamps(data_cfg: DataConfig) -> list[Any]:
    """(path, size, mtime) of every file the sources can match, over all splits."""
    stamps: list[Any] = []
    for src in data_cfg.sources:
        pattern = src.path.replace("{split}", "*").replace("{language}", "*")
        matches = sorted(glob.glob(pattern)) if src.dataset is None else []
        if not matches:
            stamps.append(src.path)  # a Hub name, or an in-memory dataset's fingerprint label
        for match in matches:
            files = [match]
            if os.path.isdir(match):
                files = sorted(
                    os.path.join(root, f) for root, _, names in os.walk(match) for f in names
                )
            for f in files:
                st = os.stat(f)
                stamps.append((f, st.st_size, st.st_mtime_ns))
    return stamps


def data_fingerprint(data_cfg: DataConfig, task: str, tokenizer: Any) -> str:
    """The cache key of a run's tokenized data (see the module docstring)."""
    blob = json.dumps(
        {
            "version": CACHE_VERSION,
            "task": task,
            "data": dataclasses.asdict(data_cfg),
            "files": _file_stamps(data_cfg),
            "tokenizer": tokenizer_fingerprint(tokenizer),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_split(
    folder: Path, name: str, data: SplitData, stores: dict[str, Tokenized], labels: list[str]
) -> None:
    """Write one tokenized split (atomically: a reader sees the old file or the whole new one)."""
    folder = Path(folder)
    if folder.parent.is_dir():  # one fingerprint at a time: drop caches of older data
        for other in folder.parent.iterdir():
            if other.is_dir() and other != folder:
                shutil.rmtree(other, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    languages = list(stores)
    arrays = {
        f"{i}.{field}": getattr(stores[lang], field)
        for i, lang in enumerate(languages)
        for field in _ARRAYS
        if getattr(stores[lang], field) is not None
    } | {f"{i}.truncated": np.asarray(stores[lang].truncated) for i, lang in enumerate(languages)}
    meta = {
        "languages": languages,
        "labels": labels,
        # Not dataclasses.asdict: it would deep-copy every example.
        "split": {
            f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.name != "examples"
        }
        | {"counts": data.counts()},
    }
    tmp = folder / f".{name}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, folder / f"{name}.npz")
    (folder / f".{name}.tmp.json").write_text(json.dumps(meta), encoding="utf-8")
    os.replace(folder / f".{name}.tmp.json", folder / f"{name}.json")


def load_split(folder: Path, name: str) -> tuple[SplitData, dict[str, Tokenized], list[str]] | None:
    """``(split, stores, labels)`` of a cached split, or None when it is not cached."""
    folder = Path(folder)
    if not (folder / f"{name}.npz").is_file() or not (folder / f"{name}.json").is_file():
        return None
    meta = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    with np.load(folder / f"{name}.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    stores = {
        lang: Tokenized(
            **{f: arrays.get(f"{i}.{f}") for f in _ARRAYS},
            truncated=int(arrays.get(f"{i}.truncated", 0)),
        )
        for i, lang in enumerate(meta["languages"])
    }
    fields = dict(meta["split"])
    counts = fields.pop("counts")
    known = {f.name for f in dataclasses.fields(SplitData)}
    split = SplitData(
        examples={lang: CachedRows(counts[lang]) for lang in meta["languages"]},
        **{k: v for k, v in fields.items() if k in known},
    )
    return split, stores, meta["labels"]
