"""The data section of a run config: `DataConfig` and the `SourceConfig` of each source.

A source is one `SourceConfig`; `DataConfig.sources` lists them. Paths may hold two placeholders:
`{split}` (replaced by the split name: train, validation, test) and `{language}` (a glob whose
match is the language), so the demo layout `demo/data/{train,validation,test}/<lang>.jsonl` is

    data:
      sources:
        - path: demo/data/{split}/{language}.jsonl

How the sources are read is `langtune_jax.data.sources.load_split`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal


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
        given = [name for name in ("language", "file_languages") if getattr(self, name)]
        if "{language}" in self.path and given:
            raise ValueError(
                f"data.sources[].{given[0]}: the path's {{language}} already names each file's "
                f"language; drop {given[0]} (or {{language}} from the path)"
            )
        if len(given) == 2:
            raise ValueError(
                "data.sources[].language gives every row one language, and file_languages gives "
                "each file its own; set one of them"
            )


@dataclasses.dataclass
class DataConfig:
    """The data of a run.

    Attributes:
      sources: where examples come from (see `SourceConfig`).
      split_names: role -> the name used in files/`{split}` when it differs (e.g.
        {validation: dev}).
      max_length: tokens per row; longer examples are truncated.
      length_buckets: padded lengths a batch may take (each <= max_length; max_length is always
        one); empty = max_length/8, /4, /2 (each at least 8) and max_length. Each bucket a batch
        uses compiles once; fewer buckets = fewer compiles, more padding.
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
        else:  # max_length/8, /4, /2 (at least 8): short texts pad to a short bucket
            b = {max(8, -(-self.max_length // k)) for k in (8, 4, 2)}
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
