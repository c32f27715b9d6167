"""The errors of the data layer.

`DataError` and `MissingSplitError` reach users (the CLI prints them); `BadRow` stays inside the
data layer: a reader yields it, or a row check raises it, and `load_split` decides whether it
stops the run (``on_bad_row: error``, as a `DataError`) or is skipped and counted.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad data or data configuration; the message names file:line or the language and the fix."""


class MissingSplitError(DataError):
    """No source has data for a requested split (e.g. a data set without a test split)."""


class BadRow(Exception):
    """One row that cannot become an example.

    Args:
      where: ``"file:line"`` (or ``"file:row i"``) of the row.
      reason: what is wrong with it and the fix, for people.
      language: the row's language when known (skipped rows are counted per language).
      header: for a missing column, what is wrong with a tabular file's header (CSV, Parquet:
        every row has the header's columns, so the file, not the row, is at fault).
    """

    def __init__(
        self, where: str, reason: str, language: str | None = None, header: str | None = None
    ):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason, self.language, self.header = where, reason, language, header
