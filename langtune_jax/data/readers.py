"""Reading a source's rows and validating them: per-format readers, file discovery, row -> example.

Each reader yields ``(where, row)`` pairs, ``where`` being ``"file:line"`` (or ``"file:row i"``),
and yields a ``_BadRow`` in place of a row it cannot decode, so the caller
(:func:`langtune_jax.data.sources.load_split`) decides whether to stop or skip and count.
``_example`` turns a row into the example dict of a task (see :mod:`langtune_jax.data.sources`),
raising ``_BadRow`` with the reason and the fix. The errors of the data layer (`DataError`,
`MissingSplitError`) are defined here, the lowest module, and re-exported by ``sources``.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from langtune_jax.tasks import TASKS

if TYPE_CHECKING:
    from langtune_jax.data.sources import SourceConfig

_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}


_BOM = b"\xef\xbb\xbf"
_BCP47_PRIMARY = re.compile(r"^[A-Za-z]{2,3}$")


def normalize_language(code: str) -> str:
    """A language code in BCP-47 case: ``EN`` -> ``en``, ``zh-hant`` -> ``zh-Hant``,
    ``pt-br`` -> ``pt-BR``.

    Only codes whose first subtag looks like an ISO 639 code (2-3 letters) are changed, so
    free-form names (``lang_a``) stay as they are. Surrounding whitespace is removed.
    """
    code = code.strip()
    parts = code.split("-")
    if not _BCP47_PRIMARY.match(parts[0]):
        return code
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 4 and part.isalpha():  # script: Hant, Latn
            out.append(part.title())
        elif (len(part) == 2 and part.isalpha()) or (len(part) == 3 and part.isdigit()):
            out.append(part.upper())  # region: BR, 419
        else:
            out.append(part.lower())
    return "-".join(out)


class DataError(ValueError):
    """Bad data or data configuration; the message names file:line or the language and the fix."""


class MissingSplitError(DataError):
    """No source has data for a requested split (e.g. a data set without a test split)."""


class _BadRow(Exception):
    def __init__(self, where: str, reason: str, language: str | None = None):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason, self.language = where, reason, language


# --------------------------------------------------------------------------------------------
# Raw rows: (where, dict) from each format.


def _has_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, list | tuple):
        return any(_has_surrogates(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogates(v) for v in value.values())
    return False


def _read_jsonl(path: str) -> Iterator[tuple[str, dict | _BadRow]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(_BOM):  # editors on Windows write one
                raw = raw[len(_BOM) :]
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, _BadRow(where, f"invalid UTF-8 at byte {e.start} ({e.reason})")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, _BadRow(where, f"malformed JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(row, dict):
                yield where, _BadRow(where, f"expected a JSON object, got {type(row).__name__}")
                continue
            yield where, row


def _read_csv(path: str, delimiter: str | None = None) -> Iterator[tuple[str, dict | _BadRow]]:
    with open(path, "rb") as f:
        raw = f.read()
    # surrogateescape keeps bad bytes visible as lone surrogates, so we can point at the row.
    text = raw.removeprefix(_BOM).decode("utf-8", errors="surrogateescape")
    delimiter = delimiter or ("\t" if path.endswith(".tsv") else ",")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    _check_header(path, reader.fieldnames or [], delimiter)
    line = 1
    for row in reader:
        where = f"{path}:{line + 1}"
        line = reader.line_num
        if _has_surrogates(row):
            yield where, _BadRow(where, "invalid UTF-8")
            continue
        if None in row:
            yield where, _BadRow(where, f"more fields than the header ({len(reader.fieldnames)})")
            continue
        yield where, {k: v for k, v in row.items()}


def _check_header(path: str, fields: list[str], delimiter: str) -> None:
    """A header that does not split on the delimiter means the file uses another one."""
    if len(fields) != 1:
        return
    for other in (";", "\t", "|", ","):
        if other != delimiter and other in fields[0]:
            raise DataError(
                f"{path}:1: the header {fields[0]!r} does not split on {delimiter!r} but does on "
                f"{other!r}; set delimiter: {other!r} on this entry of data.sources"
            )


def _read_parquet(path: str) -> Iterator[tuple[str, dict | _BadRow]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}:row {i}", row


def open_hf(src: SourceConfig, split: str) -> Any:
    """The ``datasets.Dataset`` of one split of a ``format: hf`` source, opened eagerly (so a
    missing split fails here): an in-memory ``Dataset``/``DatasetDict`` given from Python, a
    ``save_to_disk`` folder, or a Hub dataset name.

    Raises:
      MissingSplitError: the source has no such split.
    """
    import datasets

    hf_split = src.hf_split.replace("{split}", split)
    path = src.path.replace("{split}", split)
    ds = src.dataset
    if ds is None and path.startswith("<datasets."):
        raise DataError(
            f"{path}: this run read an in-memory datasets object, which a config file cannot "
            "hold; pass it again from Python (SourceConfig.from_dataset) or keep the run "
            "folder's data_cache"
        )
    if ds is None and os.path.isdir(path):
        ds = datasets.load_from_disk(path)
    if ds is None:
        try:
            return datasets.load_dataset(path, src.hf_config, split=hf_split)
        except ValueError as e:  # datasets raises ValueError for an unknown split
            if "split" in str(e).lower():
                raise MissingSplitError(f"{path}: {e}") from e
            raise
    if isinstance(ds, datasets.DatasetDict):
        if hf_split not in ds:
            raise MissingSplitError(
                f"{path}: no split {hf_split!r} (has {', '.join(ds)}); set "
                "data.sources[].hf_split or split_names"
            )
        ds = ds[hf_split]
    elif src.dataset is not None and src.splits == []:
        raise DataError(
            f"{path}: a single datasets.Dataset has no splits; pass a DatasetDict or set the "
            "source's splits (e.g. [train])"
        )
    return ds


def class_label_names(ds: Any, column: str) -> list[str] | None:
    """The ``ClassLabel`` names of ``column`` (or of its items, for a list of tags), else None."""
    import datasets

    feature = ds.features.get(column) if getattr(ds, "features", None) else None
    feature = getattr(feature, "feature", feature)  # List(ClassLabel) / Sequence(ClassLabel)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def class_names(data_cfg: Any, task: str) -> list[str] | None:
    """The label (tag) vocabulary in ``ClassLabel`` order, when every training source is a
    Hugging Face dataset whose label (tags) column is a ``ClassLabel`` with the same names;
    else None (the vocabulary is then the sorted labels of train)."""
    if "classification" not in task:
        return None
    found = []
    for src in data_cfg.sources:
        if src.splits and "train" not in src.splits:
            continue
        if src.format != "hf":
            return None
        ds = open_hf(src, data_cfg.split_names.get("train", "train"))
        column = src.label_column if task == "sequence-classification" else src.tags_column
        names = class_label_names(ds, column)
        if names is None:
            return None
        found.append(names)
    return found[0] if found and all(f == found[0] for f in found) else None


def _read_hf(src: SourceConfig, split: str) -> Iterator[tuple[str, dict | _BadRow]]:
    """Opens the split eagerly, then yields its rows with ``ClassLabel`` ids turned into names
    (labels, per-token tags, or any other class column such as a language id)."""
    ds = open_hf(src, split)
    where = f"{src.path.replace('{split}', split)}[{src.hf_split.replace('{split}', split)}]"
    names = {c: n for c in ds.column_names if (n := class_label_names(ds, c)) is not None}
    return ((f"{where}:row {i}", _named(row, names)) for i, row in enumerate(ds))


def _named(row: dict, names: dict[str, list[str]]) -> dict:
    for column, vocab in names.items():
        value = row.get(column)
        if isinstance(value, int) and 0 <= value < len(vocab):
            row[column] = vocab[value]
        elif isinstance(value, list):
            row[column] = [
                vocab[v] if isinstance(v, int) and 0 <= v < len(vocab) else v for v in value
            ]
    return row


# --------------------------------------------------------------------------------------------
# Files of a source for a split, with the language the path implies.


def _files(src: SourceConfig, split: str) -> list[tuple[str, str | None]]:
    pattern = src.path.replace("{split}", split)
    lang_re = None
    if "{language}" in pattern:
        before, after = pattern.split("{language}")
        lang_re = re.compile(re.escape(before) + r"(.+?)" + re.escape(after) + r"$")
        pattern = before + "*" + after
    if os.path.isdir(pattern):
        paths = sorted(
            os.path.join(pattern, f)
            for f in os.listdir(pattern)
            if os.path.splitext(f)[1] in _FORMATS
        )
    else:
        paths = sorted(glob.glob(pattern))
    out = []
    for p in paths:
        lang = None
        if lang_re is not None:
            m = lang_re.match(p)
            lang = m.group(1) if m else None
        base = os.path.basename(p)
        stem = os.path.splitext(base)[0]
        lang = src.file_languages.get(base, src.file_languages.get(stem, lang))
        out.append((p, lang))
    return out


def _format(src: SourceConfig, path: str) -> str:
    if src.format != "auto":
        return src.format
    ext = os.path.splitext(path)[1]
    if ext not in _FORMATS:
        raise DataError(
            f"{path}: cannot tell the format from {ext!r}; set data.sources[].format "
            "(jsonl, csv, parquet or hf)"
        )
    return _FORMATS[ext]


# --------------------------------------------------------------------------------------------
# Row -> example


def _column(row: dict, name: str, where: str, field: str) -> Any:
    if name not in row or row[name] is None:
        raise _BadRow(
            where,
            f"missing column {name!r} (row has {', '.join(map(repr, row)) or 'no columns'}); "
            f"set data.sources[].{field} to the right column",
        )
    return row[name]


def _text(row: dict, name: str, where: str, field: str) -> str:
    value = _column(row, name, where, field)
    if not isinstance(value, str):
        raise _BadRow(where, f"column {name!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise _BadRow(where, f"empty text in column {name!r}; remove the row or fill it")
    return value


def _example(row: dict, src: SourceConfig, task: str, where: str) -> dict:
    if task == "sequence-classification":
        ex = {"text": _text(row, src.text_column, where, "text_column"), "text_pair": None}
        if src.text_pair_column:
            ex["text_pair"] = _text(row, src.text_pair_column, where, "text_pair_column")
        label = _column(row, src.label_column, where, "label_column")
        if isinstance(label, str) and not label.strip():
            raise _BadRow(where, f"empty label in column {src.label_column!r}")
        ex["label"] = str(label)
    elif task == "token-classification":
        tokens = _column(row, src.tokens_column, where, "tokens_column")
        tags = _column(row, src.tags_column, where, "tags_column")
        if isinstance(tokens, str):
            tokens = tokens.split()
        if isinstance(tags, str):
            tags = tags.split()
        tokens, tags = list(tokens), [str(t) for t in tags]
        if not tokens:
            raise _BadRow(where, f"empty token list in column {src.tokens_column!r}")
        if len(tokens) != len(tags):
            raise _BadRow(where, f"{len(tokens)} tokens but {len(tags)} tags")
        ex = {"tokens": [str(t) for t in tokens], "tags": tags}
    elif task == "causal-lm":
        if src.messages_column:
            msgs = _column(row, src.messages_column, where, "messages_column")
            if isinstance(msgs, str):
                msgs = json.loads(msgs)
            if not msgs or not all(isinstance(m, dict) and "content" in m for m in msgs):
                raise _BadRow(where, "messages must be a non-empty list of {role, content}")
            if not str(msgs[-1]["content"]).strip():
                raise _BadRow(where, "the last message (the response) is empty")
            ex = {
                "messages": [{"role": m.get("role", "user"), "content": m["content"]} for m in msgs]
            }
        elif src.prompt_column:
            ex = {
                "prompt": _text(row, src.prompt_column, where, "prompt_column"),
                "response": _text(row, src.response_column, where, "response_column"),
            }
        else:
            ex = {"text": _text(row, src.text_column, where, "text_column")}
    elif task == "masked-lm":  # unlabelled text: other columns (a label, say) are not read
        ex = {"text": _text(row, src.text_column, where, "text_column")}
    else:
        raise DataError(f"unknown task {task!r}; the data pipeline supports {', '.join(TASKS)}")
    ex["where"] = where
    return ex


def check_label(ex: dict, labels: set[str], task: str) -> None:
    """Raises a bad-row error when the example's label (or a tag) is not in `labels`."""
    if task == "sequence-classification" and ex["label"] not in labels:
        raise _BadRow(
            ex["where"],
            f"unknown label {ex['label']!r} (labels: {', '.join(sorted(labels))}); fix the row "
            "or add it to data.labels",
        )
    if task == "token-classification":
        bad = [t for t in ex["tags"] if t not in labels]
        if bad:
            raise _BadRow(
                ex["where"],
                f"unknown tag {bad[0]!r} (tags: {', '.join(sorted(labels))}); fix the row or "
                "add it to data.labels",
            )
