"""Data sources -> the validated examples of a split, per language (`load_split`).

The sources are `langtune_jax.data.config.SourceConfig`s (paths with `{split}` and `{language}`
placeholders, see that module). Every row is validated while it is read. A bad row (malformed
JSON, invalid UTF-8, missing column, empty text, unknown label, missing language) raises
`DataError` naming `file:line` and the fix; with `on_bad_row: skip` it is skipped and counted in
`SplitData.skipped` (shown in the plan). The per-format readers and the row checks are in
`langtune_jax.data.readers`; this module drives them and collects what they give.

Examples are plain dicts, by task:
  sequence-classification: {"text", "text_pair" (or None), "label"}
  token-classification:    {"tokens": list[str], "tags": list[str]}
  causal-lm:               {"text"} | {"prompt", "response"} | {"messages": [{"role", "content"}]}
  masked-lm:               {"text"}
Each also carries "where" ("file:line") for later error messages.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator

from langtune_jax.data.config import DataConfig, SourceConfig
from langtune_jax.data.errors import BadRow, DataError, MissingSplitError
from langtune_jax.data.examples import check_label, example_from_row, required_column
from langtune_jax.data.readers import (
    file_format,
    normalize_language,
    read_hf,
    read_rows,
    source_files,
)
from langtune_jax.tasks import TASKS

_INTEGER = re.compile(r"[+-]?[0-9]+")
# A stream is the rows of one file (or one Hugging Face split) with the language it implies.
_Stream = tuple[str | None, str | None, Iterator[tuple[str, dict | BadRow]]]


@dataclasses.dataclass
class SplitData:
    """The examples of one split, grouped by language.

    Attributes:
      examples: language -> list of example dicts (see the module docstring), languages sorted.
      skipped: language ('?' when unknown) -> rows skipped as bad.
      reasons: reason -> rows skipped for it.
      first_errors: up to 20 "file:line: reason" messages of skipped rows (for logs).
      renamed: language code as written -> its BCP-47 form, for codes that were normalised.
      duplicates: language -> exact duplicate rows (dropped when `data.dedupe` is on).
    """

    examples: dict[str, list[dict]]
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    first_errors: list[str] = dataclasses.field(default_factory=list)
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)
    duplicates: dict[str, int] = dataclasses.field(default_factory=dict)
    deduped: bool = False

    def notes(self) -> list[str]:
        """Plan notes: normalised language codes and duplicate rows."""
        out = []
        if self.renamed:
            pairs = ", ".join(f"{a!r} -> {b!r}" for a, b in sorted(self.renamed.items()))
            out.append(f"language codes normalised to BCP-47 case: {pairs}")
        if self.duplicates:
            counts = ", ".join(f"{lang} {n:,}" for lang, n in sorted(self.duplicates.items()))
            if self.deduped:
                out.append(f"exact duplicate rows dropped (data.dedupe): {counts}")
            else:
                out.append(f"exact duplicate rows: {counts}; set data.dedupe: true to drop them")
        return out

    @property
    def languages(self) -> list[str]:
        return sorted(self.examples)

    def counts(self) -> dict[str, int]:
        return {lang: len(rows) for lang, rows in sorted(self.examples.items())}


_NOT_INPUT = ("where", "label", "tags")


def _key(ex: dict, leave_out: tuple[str, ...]) -> str:
    return json.dumps(
        {k: v for k, v in ex.items() if k not in leave_out}, sort_keys=True, default=str
    )


def input_key(ex: dict) -> str:
    """What the model sees of an example (its labels and location left out), as a string."""
    return _key(ex, _NOT_INPUT)


def input_keys(split: SplitData) -> dict[str, set[str]]:
    """Per language, the `input_key` of every example of a split. Rows restored from the
    tokenized cache are not raw examples and give none."""
    return {
        lang: {input_key(ex) for ex in rows}
        for lang, rows in split.examples.items()
        if isinstance(rows, list)
    }


def overlap_note(split: str, data: SplitData, train_inputs: dict[str, set[str]]) -> str | None:
    """A sentence on the examples of an evaluation split whose input is also a training input
    of the same language (``train_inputs``: `input_keys` of train; scores on them are not held
    out), or None."""
    shared, total = {}, 0
    for lang, rows in data.examples.items():
        total += len(rows)
        keys = train_inputs.get(lang)
        if not rows or not keys:
            continue
        n = sum(input_key(ex) in keys for ex in rows)
        if n:
            shared[lang] = n
    if not shared:
        return None
    per_lang = ", ".join(f"{lang} {n:,}" for lang, n in sorted(shared.items()))
    return (
        f"split {split!r}: {sum(shared.values()):,} of {total:,} examples have the input of a "
        f"training example of their language ({per_lang}), so their scores are not held out; "
        "remove them from one of the two splits"
    )


def load_split(
    data_cfg: DataConfig, split: str, *, task: str, labels: list[str] | None = None
) -> SplitData:
    """Reads and validates every source of a split.

    Args:
      data_cfg: the data config.
      split: the split role: "train", "validation" or "test" (mapped by `split_names`).
      task: sequence-classification, token-classification or causal-lm.
      labels: when given, labels/tags outside it are bad rows.

    Returns:
      `SplitData` with examples per language (codes in BCP-47 case, see `normalize_language`).

    Raises:
      MissingSplitError: no source has data for the split (for train: any source lacks it).
      DataError: a bad row (with on_bad_row error), a file with no examples, or a language left
        with zero examples.
    """
    _check_request(data_cfg, task)
    reader = _SplitReader(data_cfg, split, task, labels)
    served, missing = _read_sources(data_cfg, split, reader)
    _check_served(split, served, missing)
    return reader.result()


def _check_request(data_cfg: DataConfig, task: str) -> None:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; the data pipeline supports {', '.join(TASKS)}")
    if not data_cfg.sources:
        raise DataError("data.sources is empty; list at least one source")


def _read_sources(data_cfg: DataConfig, split: str, reader: _SplitReader) -> tuple[int, list[str]]:
    """Feeds every source serving `split` to `reader`.

    Returns:
      (sources read, one message per source that serves the split but has no data for it).
    """
    served, missing = 0, []
    for si, src in enumerate(data_cfg.sources):
        if src.splits and split not in src.splits:
            continue
        streams = _streams(src, si, split, data_cfg.split_names.get(split, split), missing)
        if streams is None:
            continue
        for path, fixed_lang, rows in streams:
            reader.read_stream(src, path, fixed_lang, rows)
        served += 1
    return served, missing


def _check_served(split: str, served: int, missing: list[str]) -> None:
    # Training needs every source; an evaluation split may exist in some sources only.
    if missing and (split == "train" or served == 0):
        raise (MissingSplitError if served == 0 else DataError)(missing[0])
    if served == 0:
        raise MissingSplitError(f"no data source serves split {split!r}; add one or fix `splits`")


def _streams(
    src: SourceConfig, si: int, split: str, name: str, missing: list[str]
) -> list[_Stream] | None:
    """(path, language, rows) per file of a source for a split; None (noted in `missing`) when
    the source has no data for it."""
    per_split = "{split}" in src.path or (src.format == "hf" and "{split}" in src.hf_split)
    if not src.splits and not per_split:
        raise DataError(
            f"data.sources[{si}] ({src.path}) has no '{{split}}' placeholder; set its "
            "`splits` (e.g. [train]) so it is not read for every split"
        )
    if src.format == "hf":
        try:
            return [(None, src.language, read_hf(src, name))]
        except MissingSplitError as e:
            missing.append(str(e))
            return None
    files = source_files(src, name)
    if not files:
        missing.append(
            f"data.sources[{si}]: no files match {src.path.replace('{split}', name)!r} "
            f"for split {split!r}; check the path"
        )
        return None
    return [(path, src.language or file_lang, read_rows(src, path)) for path, file_lang in files]


class _SplitReader:
    """Collects the validated examples of one split, stream by stream."""

    def __init__(self, data_cfg: DataConfig, split: str, task: str, labels: list[str] | None):
        self.cfg, self.split, self.task = data_cfg, split, task
        self.label_set = set(labels) if labels is not None else None
        self.examples: dict[str, list[dict]] = {}
        self.seen: dict[str, set[str]] = {}
        self.duplicates: Counter = Counter()
        self.skipped: Counter = Counter()
        self.reasons: Counter = Counter()
        self.first_errors: list[str] = []
        self.renamed: dict[str, str] = {}

    def bad(self, err: BadRow, lang: str | None) -> None:
        if self.cfg.on_bad_row == "error":
            raise DataError(f"{err.where}: {err.reason}  (or set data.on_bad_row: skip)")
        self.skipped[lang or "?"] += 1
        self.reasons[err.reason.split(" (")[0].split(";")[0]] += 1
        if len(self.first_errors) < 20:
            self.first_errors.append(f"{err.where}: {err.reason}")

    def language(self, code: str) -> str:
        norm = normalize_language(code)
        if norm != code.strip():
            self.renamed[code.strip()] = norm
        return norm

    def read_stream(self, src: SourceConfig, path, fixed_lang, rows) -> None:
        fixed = self.language(fixed_lang) if fixed_lang else None
        kept = 0
        label_kind: tuple[str, str] | None = None  # (kind, where) of the stream's first label
        for where, row in rows:
            lang = fixed
            try:
                if isinstance(row, BadRow):
                    raise row
                lang = self._row_language(row, src, fixed, where)
                ex = example_from_row(row, src, self.task, where)
                if self.task == "sequence-classification" and src.label_column is not None:
                    label_kind = _check_label_kind(row[src.label_column], where, label_kind)
                if self.label_set is not None:
                    check_label(ex, self.label_set, self.task)
            except BadRow as err:
                # CSV and Parquet rows all have the header's columns: the file is at fault.
                tabular = path is not None and file_format(src, path) in ("csv", "parquet")
                if err.header and tabular:
                    raise DataError(f"{path}:1: {err.header}") from None
                self.bad(err, lang)
                continue
            kept += 1
            key = _key(ex, ("where",))  # an exact duplicate: labels count
            seen = self.seen.setdefault(lang, set())
            if key in seen:
                self.duplicates[lang] += 1
                if self.cfg.dedupe:
                    continue
            seen.add(key)
            self.examples.setdefault(lang, []).append(ex)
        if path is not None and kept == 0:
            lang_note = f" (language {fixed!r})" if fixed else ""
            raise DataError(
                f"{path}{lang_note}: no usable examples in split {self.split!r}; remove the file "
                "or fix its rows"
            )

    def _row_language(self, row: dict, src: SourceConfig, fixed: str | None, where: str) -> str:
        if fixed is None:
            lang = required_column(
                row,
                src.language_column,
                where,
                "language_column",
                ", or data.sources[].language for a source of one language (langtune eval or "
                "predict --data: --language)",
            )
            if not isinstance(lang, str) or not lang.strip():
                raise BadRow(where, f"empty language in {src.language_column!r}")
            return self.language(lang)
        said = row.get(src.language_column)
        if said is not None and (not isinstance(said, str) or normalize_language(said) != fixed):
            raise BadRow(
                where,
                f"row says language {said!r} but the source gives {fixed!r}; fix the row or "
                "the source's language mapping",
            )
        return fixed

    def result(self) -> SplitData:
        for lang in self.skipped:
            if lang != "?" and lang not in self.examples:
                raise DataError(
                    f"language {lang!r} has zero examples in split {self.split!r} after skipping "
                    f"{self.skipped[lang]} bad rows; fix its rows or remove it"
                )
        if not self.examples:
            raise DataError(f"split {self.split!r} has no examples; check data.sources")
        return SplitData(
            examples=dict(sorted(self.examples.items())),
            skipped=dict(self.skipped),
            reasons=dict(self.reasons),
            first_errors=self.first_errors,
            renamed=dict(self.renamed),
            duplicates=dict(self.duplicates),
            deduped=self.cfg.dedupe,
        )


def _check_label_kind(value, where: str, first: tuple[str, str] | None) -> tuple[str, str]:
    """Labels of one file must all be text or all numbers: `3` among `"pos"`/`"neg"` is a typo
    that would silently become a class of its own."""
    kind = "text" if isinstance(value, str) else "a boolean" if isinstance(value, bool) else ""
    kind = kind or ("a number" if isinstance(value, int | float) else type(value).__name__)
    if first is None:
        return (kind, where)
    if kind != first[0]:
        raise BadRow(
            where,
            f"label {value!r} is {kind} but the file's labels before it are {first[0]} (first at "
            f"{first[1]}); write every label of the column the same way",
        )
    return first


def infer_labels(split: SplitData, task: str) -> list[str]:
    """Sorted label (or tag) vocabulary of a split (`label_order`); [] for causal LM."""
    if task == "sequence-classification":
        return label_order({ex["label"] for rows in split.examples.values() for ex in rows})
    if task == "token-classification":
        return label_order(
            {t for rows in split.examples.values() for ex in rows for t in ex["tags"]}
        )
    return []


def label_order(names: Iterable[str]) -> list[str]:
    """Label names in vocabulary order: by value when every name is an integer, so integer labels
    0..C-1 get ids 0..C-1 (as a transformers user's ``labels`` are), else in string order.

    >>> label_order(["10", "2", "0", "1"])
    ['0', '1', '2', '10']
    """
    names = sorted(set(names))
    if names and all(_INTEGER.fullmatch(n) for n in names):
        return sorted(names, key=int)
    return names
