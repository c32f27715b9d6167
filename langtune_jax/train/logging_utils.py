"""Run-time reporting of the training loop: a progress bar, ``metrics.jsonl`` and TensorBoard events.

Only process 0 writes; other processes get a silent logger, so multi-host runs write one log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    Args:
      run_dir: the run folder; files go to ``run_dir/metrics.jsonl`` and ``run_dir/tensorboard``.
      enabled: write anything at all (``jax.process_index() == 0`` by default).
    """

    def __init__(self, run_dir: Path, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._file = None
        self._tb = None
        if self.enabled:
            self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                self._tb = None

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """Write ``values`` (scalars or nested dicts of scalars) for ``step`` under ``kind``."""
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in _flatten(values).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


class Progress:
    """A tqdm bar over optimizer steps showing loss, tokens/s and the ETA (process 0 only)."""

    def __init__(self, start: int, total: int, *, enabled: bool | None = None):
        from tqdm.auto import tqdm

        enabled = jax.process_index() == 0 if enabled is None else enabled
        self._bar = tqdm(
            total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True
        )

    def update(self, n: int, **postfix: Any) -> None:
        """Advance by ``n`` steps and show ``postfix`` values."""
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(n)

    def write(self, line: str) -> None:
        """Print a line without breaking the bar."""
        self._bar.write(line)

    def close(self) -> None:
        self._bar.close()
