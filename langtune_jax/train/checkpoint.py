"""Orbax checkpoints of the training state, with exact resume.

What is saved at step k: the trainable state, the optimizer state, the mutable state (dropout RNG
counters) and a small JSON record (step, config hash, eval metrics). The frozen base weights are not
saved: they are re-read from the pretrained checkpoint the config names, which is what makes
PEFT checkpoints small. The data position needs no state of its own: sampling is a pure function of
(seed, index), so the next batch after a restore is batch ``k``.

Saves are asynchronous and atomic (Orbax writes into a temporary folder and renames it when done),
so a process killed mid-save leaves the previous checkpoint intact. Kept: the last
``keep`` checkpoints, plus the best one by an eval metric when ``best_metric`` is set. If the newest
checkpoint cannot be read, :meth:`Checkpointer.restore_latest` warns and falls back to the one
before it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_libraries():
    """Orbax and absl log (with tracebacks) what :meth:`Checkpointer.restore_latest` handles
    itself; their records would bury the one warning that says what happened."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class Checkpointer:
    """Keeps the training state of a run folder's ``checkpoints/``.

    Args:
      directory: the checkpoint folder (created if missing).
      keep: number of most recent checkpoints to keep.
      best_metric: name of an eval metric (a key of the ``metrics`` passed to :meth:`save`) whose
        best checkpoint is kept as well; ``None`` keeps only the most recent ones.
      best_mode: ``"max"`` when larger is better (F1, accuracy), ``"min"`` for losses/perplexity.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int = 2,
        best_metric: str | None = None,
        best_mode: str = "max",
    ):
        self.directory = Path(directory).absolute()
        policy: Any = policies.LatestN(n=keep)
        if best_metric:
            best = policies.BestN(
                get_metric_fn=lambda m: m[best_metric],
                reverse=best_mode == "min",
                n=1,
                keep_checkpoints_without_metrics=False,
            )
            policy = policies.AnyPreservationPolicy([policy, best])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=True,
            create=True,
            cleanup_tmp_directories=True,
        )
        with _quiet_libraries():  # a corrupt step's metadata is reported by restore_latest
            self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first."""
        with _quiet_libraries():
            return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        record: dict[str, Any],
        metrics: dict[str, float] | None = None,
        *,
        force: bool = True,
    ) -> None:
        """Start an asynchronous save of ``state`` (any pytree of arrays) at ``step``.

        Args:
          step: the number of optimizer steps taken.
          state: the pytree to save; its leaves are saved as a list (the tree structure is rebuilt
            from the abstract state on restore, and checked by leaf count and shapes).
          record: JSON-safe information saved beside it (config hash, data position ...).
          metrics: eval metrics for best-checkpoint selection.
        """
        leaves = jax.tree.leaves(state)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(leaves), record=ocp.args.JsonSave(record)
            ),
            metrics=metrics,
            force=force,
        )

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore the checkpoint at ``step`` into the structure and shardings of ``abstract_state``
        (a pytree of arrays or ``jax.ShapeDtypeStruct`` with ``sharding``)."""
        leaves, treedef = jax.tree.flatten(abstract_state)
        target = [
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
            for x in leaves
        ]
        mismatch = (
            f"checkpoint {self.directory}/{step} does not match this run's state (different "
            "model, PEFT method or optimizer?)"
        )
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()
                ),
            )
        except ValueError as err:
            if "shape" in str(err) or "structure" in str(err):
                raise ValueError(f"{mismatch}: {str(err).splitlines()[0]}") from None
            raise
        restored = list(out["state"])
        if len(restored) != len(target) or any(
            r.shape != t.shape for r, t in zip(restored, target)
        ):
            raise ValueError(mismatch)
        return jax.tree.unflatten(treedef, restored), dict(out["record"])

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """Restore the newest readable checkpoint; ``None`` when there is none.

        A checkpoint that fails to load is reported with a warning and the previous one is tried.
        """
        for step in reversed(self.all_steps()):
            try:
                with _quiet_libraries():
                    state, record = self.restore(step, abstract_state)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint falls back
                log.warning(
                    "checkpoint at step %d in %s is unreadable (%s: %s); falling back to the "
                    "previous one",
                    step,
                    self.directory,
                    type(err).__name__,
                    str(err).splitlines()[0][:200] if str(err) else "",
                )
                continue
            return step, state, record
        return None

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
