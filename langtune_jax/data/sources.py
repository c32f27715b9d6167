"""Data sources: JSONL / CSV / Parquet files, folders, Hugging Face `datasets` -> examples per language.

A source is one `SourceConfig`; `DataConfig.sources` lists them. Paths may hold two placeholders:
`{split}` (replaced by the split name: train, validation, test) and `{language}` (a glob whose
match is the language), so the demo layout `demo/data/{train,validation,test}/<lang>.jsonl` is

    data:
      sources:
        - path: demo/data/{split}/{language}.jsonl

Every row is validated while it is read. A bad row (malformed JSON, invalid UTF-8, missing column,
empty text, unknown label, missing language) raises `DataError` naming `file:line` and the fix;
with `on_bad_row: skip` it is skipped and counted in `SplitData.skipped` (shown in the plan).
The per-format readers and the row checks are in `langtune_jax.data.readers`; this module holds
the configs and `load_split`, which drives them.

Examples are plain dicts, by task:
  sequence-classification: {"text", "text_pair" (or None), "label"}
  token-classification:    {"tokens": list[str], "tags": list[str]}
  causal-lm:               {"text"} | {"prompt", "response"} | {"messages": [{"role", "content"}]}
Each also carries "where" ("file:line") for later error messages.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any, ClassVar, Literal

from langtune_jax.data.readers import (
    DataError,
    MissingSplitError,
    _BadRow,
    _column,
    _example,
    _files,
    _format,
    _read_csv,
    _read_hf,
    _read_jsonl,
    _read_parquet,
    check_label,
    normalize_language,
)
from langtune_jax.tasks import TASKS


@dataclasses.dataclass
class SourceConfig:
    """One data source.

    Attributes:
      path: a file, a folder (every .jsonl/.csv/.tsv/.parquet file in it), a glob, or with format
        `hf` a `datasets.save_to_disk` folder or a Hub dataset name. May hold `{split}` and
        `{language}` placeholders (see the module docstring).
      format: auto (from the file extension), jsonl, csv, parquet or hf.
      hf_config: Hugging Face dataset configuration name (format hf).
      hf_split: Hugging Face split name; `{split}` is replaced by the split being read.
      splits: the splits this source serves; empty = every split (needs `{split}` in path or
        hf_split).
      language: a fixed language for every row of this source.
      file_languages: file name (or stem) -> language, for files without a language column.
      language_column: the column holding the language when neither of the above applies.
      text_column, text_pair_column, label_column: sequence classification (and causal-lm text).
      tokens_column, tags_column: token classification (words and their BIO tags).
      prompt_column, response_column: causal LM prompt + response (prompt masked from the loss);
        used when prompt_column is set.
      messages_column: causal LM chat messages (list of {role, content}); the last message is the
        response. Used when set.
      delimiter: CSV field separator; default `,` (`\t` for .tsv files).
    """

    path: str = ""
    format: Literal["auto", "jsonl", "csv", "parquet", "hf"] = "auto"
    hf_config: str | None = None
    hf_split: str = "{split}"
    splits: list[str] = dataclasses.field(default_factory=list)
    language: str | None = None
    file_languages: dict[str, str] = dataclasses.field(default_factory=dict)
    language_column: str = "language"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    prompt_column: str | None = None
    response_column: str = "response"
    messages_column: str | None = None
    delimiter: str | None = None
    # An in-memory ``datasets.Dataset`` / ``DatasetDict`` (Python only, see `from_dataset`); not a
    # config key: it cannot be written to YAML.
    dataset: ClassVar[Any] = None

    @classmethod
    def from_dataset(cls, dataset: Any, **options: Any) -> SourceConfig:
        """A source reading an in-memory Hugging Face ``datasets.Dataset`` or ``DatasetDict``.

        Args:
          dataset: a ``DatasetDict`` (its splits are the run's splits, mapped by `hf_split`) or a
            ``Dataset`` (give `splits`, e.g. ``["train"]``).
          **options: other `SourceConfig` fields (columns, `language`, `splits` ...).

        The run folder's ``config.yaml`` records the dataset's fingerprint as the path; ``langtune
        eval``/``export`` of such a run read its tokenized splits from the run folder's cache.
        """
        if not hasattr(dataset, "column_names"):
            raise ValueError(
                f"SourceConfig.from_dataset needs a datasets.Dataset or DatasetDict, got "
                f"{type(dataset).__name__}"
            )
        options.setdefault("path", _dataset_label(dataset))
        src = cls(format="hf", **options)
        src.dataset = dataset
        return src

    def __post_init__(self):
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(
                f"data.sources[].delimiter must be one character, got {self.delimiter!r}"
            )
        if not self.path:
            raise ValueError("data.sources[].path: every source needs a path (file, folder, glob)")
        if self.format not in ("auto", "jsonl", "csv", "parquet", "hf"):
            raise ValueError(f"data.sources[].format: unknown format {self.format!r}")
        if self.path.count("{language}") > 1:
            raise ValueError("data.sources[].path: '{language}' may appear once")


@dataclasses.dataclass
class DataConfig:
    """The data of a run.

    Attributes:
      sources: where examples come from (see `SourceConfig`).
      split_names: role -> the name used in files/`{split}` when it differs (e.g.
        {validation: dev}).
      max_length: tokens per row; longer examples are truncated.
      length_buckets: padded lengths a batch may take (each <= max_length; max_length is always
        one); empty = max_length/4, /2 and max_length. Few buckets = few recompiles.
      labels: label vocabulary (tags for token classification); None = sorted labels of train.
      packing: pack several examples per row, train and eval (segment ids, per-segment
        positions; classification pools / labels per segment): no padding compute.
      mlm_probability: masked LM only: the share of maskable tokens chosen per row (BERT: 0.15).
      on_bad_row: error (stop with file:line) or skip (skip and count).
      dedupe: drop exact duplicate rows within a language of a split (the plan counts them
        either way).
      validation_fraction: when the data has no validation split, hold out this fraction of
        each language's training examples as one (the same rows whatever the run seed); 0 = off.
    """

    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    split_names: dict[str, str] = dataclasses.field(default_factory=dict)
    max_length: int = 128
    length_buckets: list[int] = dataclasses.field(default_factory=list)
    labels: list[str] | None = None
    packing: bool = False
    mlm_probability: float = 0.15
    on_bad_row: Literal["error", "skip"] = "error"
    dedupe: bool = False
    validation_fraction: float = 0.0

    def __post_init__(self):
        self.sources = [_as_source(s) for s in self.sources]
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"data.validation_fraction must be in [0, 1) (got {self.validation_fraction})"
            )
        if self.max_length < 2:
            raise ValueError(f"data.max_length must be >= 2 (got {self.max_length})")
        for b in self.length_buckets:
            if not 1 <= b <= self.max_length:
                raise ValueError(
                    f"data.length_buckets: {b} is outside [1, max_length={self.max_length}]"
                )
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"data.mlm_probability must be in (0, 1) (got {self.mlm_probability})")
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"data.on_bad_row must be 'error' or 'skip' (got {self.on_bad_row!r})")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("data.labels has duplicates")

    def buckets(self) -> list[int]:
        """The sorted padded lengths (always ending with max_length)."""
        if self.length_buckets:
            b = set(self.length_buckets)
        else:
            b = {max(8, -(-self.max_length // 4)), max(8, -(-self.max_length // 2))}
        return sorted({x for x in b if x <= self.max_length} | {self.max_length})


def _as_source(item: Any) -> SourceConfig:
    """A `SourceConfig` from itself, a plain mapping, or a ``datasets.Dataset``/``DatasetDict``."""
    if isinstance(item, SourceConfig):
        return item
    if hasattr(item, "column_names"):  # a Hugging Face datasets object
        return SourceConfig.from_dataset(item)
    return SourceConfig(**item)


def _dataset_label(dataset: Any) -> str:
    """``<datasets.DatasetDict 1a2b...>``: the path a config records for an in-memory dataset."""
    parts = dataset.values() if hasattr(dataset, "values") else [dataset]
    prints = "+".join(str(getattr(d, "_fingerprint", "?")) for d in parts)
    return f"<datasets.{type(dataset).__name__} {prints}>"


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
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; the data pipeline supports {', '.join(TASKS)}")
    if not data_cfg.sources:
        raise DataError("data.sources is empty; list at least one source")
    reader = _SplitReader(data_cfg, split, task, labels)
    n_sources = 0
    missing: list[str] = []  # sources without data for this split
    for si, src in enumerate(data_cfg.sources):
        if src.splits and split not in src.splits:
            continue
        streams = _streams(src, si, split, data_cfg.split_names.get(split, split), missing)
        if streams is None:
            continue
        for path, fixed_lang, rows in streams:
            reader.read_stream(src, path, fixed_lang, rows)
        n_sources += 1
    # Training needs every source; an evaluation split may exist in some sources only.
    if missing and (split == "train" or n_sources == 0):
        raise (MissingSplitError if n_sources == 0 else DataError)(missing[0])
    if n_sources == 0:
        raise MissingSplitError(f"no data source serves split {split!r}; add one or fix `splits`")
    return reader.result()


def _streams(src: SourceConfig, si: int, split: str, name: str, missing: list[str]):
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
            return [(None, src.language, _read_hf(src, name))]
        except MissingSplitError as e:
            missing.append(str(e))
            return None
    files = _files(src, name)
    if not files:
        missing.append(
            f"data.sources[{si}]: no files match {src.path.replace('{split}', name)!r} "
            f"for split {split!r}; check the path"
        )
        return None
    streams = []
    for path, file_lang in files:
        fmt = _format(src, path)
        if fmt == "hf":
            raise DataError(f"{path}: format hf needs a folder or dataset name as path")
        rows = _read_csv(path, src.delimiter) if fmt == "csv" else None
        if rows is None:
            rows = _read_jsonl(path) if fmt == "jsonl" else _read_parquet(path)
        streams.append((path, src.language or file_lang, rows))
    return streams


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

    def bad(self, err: _BadRow, lang: str | None) -> None:
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
                if isinstance(row, _BadRow):
                    raise row
                lang = self._row_language(row, src, fixed, where)
                ex = _example(row, src, self.task, where)
                if self.task == "sequence-classification":
                    label_kind = _check_label_kind(row[src.label_column], where, label_kind)
                if self.label_set is not None:
                    check_label(ex, self.label_set, self.task)
            except _BadRow as err:
                self.bad(err, lang)
                continue
            kept += 1
            key = json.dumps(
                {k: v for k, v in ex.items() if k != "where"}, sort_keys=True, default=str
            )
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
            lang = _column(row, src.language_column, where, "language_column")
            if not isinstance(lang, str) or not lang.strip():
                raise _BadRow(where, f"empty language in {src.language_column!r}")
            return self.language(lang)
        said = row.get(src.language_column)
        if said is not None and (not isinstance(said, str) or normalize_language(said) != fixed):
            raise _BadRow(
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
        raise _BadRow(
            where,
            f"label {value!r} is {kind} but the file's labels before it are {first[0]} (first at "
            f"{first[1]}); write every label of the column the same way",
        )
    return first


def infer_labels(split: SplitData, task: str) -> list[str]:
    """Sorted label (or tag) vocabulary of a split; [] for causal LM."""
    if task == "sequence-classification":
        return sorted({ex["label"] for rows in split.examples.values() for ex in rows})
    if task == "token-classification":
        return sorted({t for rows in split.examples.values() for ex in rows for t in ex["tags"]})
    return []
