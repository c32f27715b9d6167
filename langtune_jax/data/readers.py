"""Reading a source's rows: per-format readers and file discovery.

Each reader yields ``(where, row)`` pairs, ``where`` being ``"file:line"`` (or ``"file:row i"``),
and yields a `BadRow` in place of a row it cannot decode, so the caller
(:func:`langtune_jax.data.sources.load_split`) decides whether to stop or skip and count.
:mod:`langtune_jax.data.examples` turns a row into the example dict of a task.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from langtune_jax.data.config import DataConfig, SourceConfig
from langtune_jax.data.errors import BadRow, DataError, MissingSplitError

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


def read_jsonl(path: str) -> Iterator[tuple[str, dict | BadRow]]:
    """The rows of a JSON Lines file, one object per line (blank lines skipped, a BOM allowed),
    or of a ``.json`` file that holds one array of objects (``[{...}, {...}]``, e.g. pandas'
    ``to_json(orient="records")``).

    Args:
      path: the file.

    Yields:
      ``("file:line", row)`` (``"file:item i"`` in an array); a `BadRow` in place of a line
      that is not UTF-8, not JSON or not an object.

    Raises:
      DataError: an array file that is not valid JSON (where it breaks).
    """
    if path.endswith(".json") and _starts_with_array(path):
        yield from _read_json_array(path)
        return
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
                yield where, BadRow(where, f"invalid UTF-8 at byte {e.start} ({e.reason})")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                hint = ""
                if lineno == 1 and line.strip() == "{":  # one pretty-printed object
                    hint = "; a JSON file holds one object per line, or one array of objects"
                yield where, BadRow(where, f"malformed JSON ({e.msg} at column {e.colno}){hint}")
                continue
            if not isinstance(row, dict):
                yield where, BadRow(where, f"expected a JSON object, got {type(row).__name__}")
                continue
            yield where, row


def _starts_with_array(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(_BOM).lstrip()
    return head.startswith(b"[")


def _read_json_array(path: str) -> Iterator[tuple[str, dict | BadRow]]:
    with open(path, "rb") as f:
        raw = f.read().removeprefix(_BOM)
    try:
        items = json.loads(raw.decode("utf-8"))  # it starts with '[': a list, or an error
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte {e.start} ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno}); the file starts "
            "with '[' and is read as one JSON array of objects"
        ) from None
    for i, row in enumerate(items, start=1):
        where = f"{path}:item {i}"
        if isinstance(row, dict):
            yield where, row
        else:
            yield where, BadRow(where, f"expected a JSON object, got {type(row).__name__}")


def read_csv(path: str, delimiter: str | None = None) -> Iterator[tuple[str, dict | BadRow]]:
    """The rows of a CSV/TSV file with a header line, as ``{column: text}``.

    Args:
      path: the file (a BOM is allowed).
      delimiter: the field separator; None = ``\t`` for ``.tsv`` files, else ``,``.

    Yields:
      ``("file:line", row)``; a `BadRow` in place of a row with invalid UTF-8 or more fields than
      the header.

    Raises:
      DataError: the header splits on another delimiter than the one in use.
    """
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
            yield where, BadRow(where, "invalid UTF-8")
            continue
        if None in row:
            yield where, BadRow(where, f"more fields than the header ({len(reader.fieldnames)})")
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


def read_parquet(path: str) -> Iterator[tuple[str, dict | BadRow]]:
    """The rows of a Parquet file, as ``("file:row i", row)`` (pyarrow decodes the types)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}:row {i}", row


def read_rows(src: SourceConfig, path: str) -> Iterator[tuple[str, dict | BadRow]]:
    """The rows of one file of a file source, read by its format (see `file_format`).

    Raises:
      DataError: the format is unknown, or ``hf`` (which needs a folder or dataset name).
    """
    fmt = file_format(src, path)
    if fmt == "hf":
        raise DataError(f"{path}: format hf needs a folder or dataset name as path")
    if fmt == "csv":
        return read_csv(path, src.delimiter)
    return read_jsonl(path) if fmt == "jsonl" else read_parquet(path)


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


def class_names(data_cfg: DataConfig, task: str) -> list[str] | None:
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


def read_hf(src: SourceConfig, split: str) -> Iterator[tuple[str, dict | BadRow]]:
    """The rows of one split of a ``format: hf`` source, as ``("path[split]:row i", row)``.

    The split is opened eagerly (a missing split fails here, not on the first row); ``ClassLabel``
    ids are turned into their names (labels, per-token tags, or any other class column such as
    a language id).

    Raises:
      MissingSplitError: the source has no such split.
    """
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


def source_files(src: SourceConfig, split: str) -> list[tuple[str, str | None]]:
    """The files of a file source for a split (sorted), each with the language its name implies.

    Args:
      src: the source; its path is a file, a folder or a glob, with ``{split}`` and
        ``{language}`` placeholders.
      split: the split's name in the files (after `DataConfig.split_names`).

    Returns:
      ``(path, language)`` pairs; the language comes from `SourceConfig.file_languages` (by file
      name or stem), else the ``{language}`` match, else None.
    """
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


def file_format(src: SourceConfig, path: str) -> str:
    """The format of a source's file: `SourceConfig.format`, or with ``auto`` its extension's.

    Raises:
      DataError: ``auto`` and an extension that names no format.
    """
    if src.format != "auto":
        return src.format
    ext = os.path.splitext(path)[1]
    if ext not in _FORMATS:
        raise DataError(
            f"{path}: cannot tell the format from {ext!r}; set data.sources[].format "
            "(jsonl, csv, parquet or hf)"
        )
    return _FORMATS[ext]
