"""A run folder is the run's alone: ownership, lock, fingerprint, restart, and kept history.

``langtune train`` on a folder goes through these checks before it writes anything:

1. :func:`check_run_folder` — the folder is new, empty, or a langtune run (it has ``run.json``, or
   ``checkpoints/`` for runs made before ``run.json`` existed). A folder holding a user's own files
   is refused.
2. :func:`check_resume_config` — the saved ``config.yaml`` against the new config, before any data
   is read: only cadence, ``train.steps`` (with ``--extend``) and evaluation may change.
3. :class:`~langtune_jax.train.run_lock.RunLock` — ``train.lock`` holds the pid and host of the process training in the folder; a
   second process stops at once; a lock left by a dead process on this host is taken over with a
   warning.
4. :func:`fingerprint` / :func:`check_fingerprint` — what the saved state depends on (per-language
   example counts, the label vocabulary, the tokenizer, the trainable tree's shapes, the PEFT method,
   the optimizer) is recorded in ``run.json`` and in every checkpoint; a resume with different
   inputs is refused with what changed, never silently started over. ``--restart``
   (:func:`move_aside`) moves the old run to ``RUN_DIR.old-<timestamp>``; nothing is deleted.
5. History: the eval history travels in each checkpoint's record, and :func:`truncate_metrics`
   drops ``metrics.jsonl`` records written after the restored step, so a resumed run's log and
   ``report.json`` equal an unbroken run's.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import yaml

from langtune_jax.config import ConfigError, RunConfig

log = logging.getLogger("langtune_jax")

RUN_FILE = "run.json"
LOCK_FILE = "train.lock"
#: Flag on the ``metrics.jsonl`` eval records of the final reports (written after the last step).
FINAL_FLAG = "final"


class RunFolderRefused(ConfigError):
    """The run folder cannot be used as asked (foreign files, locked, or holds another run)."""


# ----------------------------------------------------------------------------- ownership


def is_run_folder(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a langtune run (``run.json``, or ``checkpoints/`` of older runs)."""
    return (run_dir / RUN_FILE).is_file() or (run_dir / "checkpoints").is_dir()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds a step folder (training will resume from one)."""
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(p.is_dir() and p.name.isdigit() for p in folder.iterdir())


def check_run_folder(run_dir: Path) -> None:
    """Refuse a ``--run-dir`` that exists and holds files that are not a langtune run.

    Raises:
      RunFolderRefused: naming a few of the foreign entries and the fix.
    """
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunFolderRefused(f"--run-dir {run_dir} is a file, not a folder; pick a new folder")
    # The lock (and its temporary twin) may already be there: process 0 of a multi-host run
    # takes it while the others check the folder.
    entries = sorted(
        p.name for p in run_dir.iterdir() if not p.name.lstrip(".").startswith(LOCK_FILE)
    )
    if not entries or is_run_folder(run_dir):
        return
    shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
    raise RunFolderRefused(
        f"{run_dir} holds files that are not a langtune run ({shown}); nothing was written: "
        "pass a new or empty --run-dir"
    )


def move_aside(run_dir: Path) -> Path | None:
    """``--restart``: rename the old run to ``RUN_DIR.old-<UTC timestamp>``; returns the new path."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
        n += 1
    run_dir.rename(target)
    log.warning("--restart: moved the previous run in %s to %s", run_dir, target)
    return target


# ----------------------------------------------------------------------------- fingerprint


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def tokenizer_digest(tokenizer: Any) -> str:
    """A short hash of the tokenizer's vocabulary and special tokens."""
    vocab = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else []
    special = getattr(tokenizer, "all_special_tokens", [])
    return _digest([vocab, list(special)])


def fingerprint(session: Any, opt_state: Any) -> dict[str, Any]:
    """What a run's saved state depends on, JSON-ready.

    Keys: ``examples`` (per-language training examples), ``labels`` (count and hash of the label
    vocabulary), ``tokenizer`` (hash), ``trainable`` (arrays, parameters and a hash of the
    trainable tree's paths and shapes), ``peft_method`` and ``optimizer`` (name, options and a
    hash of the optimizer state's shapes).
    """
    cfg = session.cfg
    leaves = jax.tree_util.tree_leaves_with_path(session.split.trainable)
    shapes = [(jax.tree_util.keystr(p), list(x.shape), str(x.dtype)) for p, x in leaves]
    opt_shapes = [list(getattr(x, "shape", ())) for x in jax.tree.leaves(opt_state)]
    labels = list(session.dataset.labels or [])
    return {
        "examples": dict(session.dataset.train.counts()),
        "labels": {"count": len(labels), "hash": _digest(labels)},
        "tokenizer": tokenizer_digest(session.tokenizer),
        "trainable": {
            "arrays": len(shapes),
            "params": int(sum(_size(s) for _, s, _ in shapes)),
            "hash": _digest(shapes),
        },
        "peft_method": cfg.peft.method,
        "optimizer": {
            "name": cfg.train.optimizer,
            "weight_decay": cfg.train.weight_decay,
            "max_grad_norm": cfg.train.max_grad_norm,
            "state": _digest(opt_shapes),
        },
    }


def _size(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _describe(key: str, old: Any, new: Any, old_labels: list | None, new_labels: list) -> str:
    if key == "labels" and old_labels is not None:
        added = [x for x in new_labels if x not in old_labels]
        removed = [x for x in old_labels if x not in new_labels]
        what = []
        if added:
            what.append(f"added {added}")
        if removed:
            what.append(f"removed {removed}")
        return f"labels {old_labels} → {new_labels}" + (f" ({', '.join(what)})" if what else "")
    if key == "examples" and isinstance(old, dict):
        langs = sorted(set(old) | set(new))
        diffs = [f"{lang} {old.get(lang, 0)} → {new.get(lang, 0)}" for lang in langs
                 if old.get(lang) != new.get(lang)]  # fmt: skip
        return "training examples per language: " + ", ".join(diffs)
    if key == "trainable" and isinstance(old, dict):
        return (
            f"trainable state {old.get('arrays')} arrays / {old.get('params'):,} params → "
            f"{new['arrays']} arrays / {new['params']:,} params"
        )
    return f"{key} {_short(old)} → {_short(new)}"


def _short(x: Any) -> str:
    if isinstance(x, dict):
        return ", ".join(f"{k}={v}" for k, v in x.items() if k != "state") or "{}"
    return str(x)


def check_fingerprint(
    run_dir: Path,
    old: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    old_labels: list | None = None,
    new_labels: list | None = None,
) -> None:
    """Refuse to resume when the recorded fingerprint ``old`` differs from ``new``.

    Raises:
      RunFolderRefused: one line naming each change (old → new) and the two ways out.
    """
    if not old:
        return
    changes = [
        _describe(k, old.get(k), new[k], old_labels, list(new_labels or []))
        for k in new
        if k in old and old[k] != new[k]
    ]
    if changes:
        raise RunFolderRefused(
            f"{run_dir} holds a run trained on different inputs ({'; '.join(changes)}); "
            + ways_out(run_dir)
        )


def ways_out(run_dir: Path) -> str:
    """The two ways out of a refused resume, for the end of an error message."""
    return (
        "nothing was changed: restore the original data/config to resume it, or rerun with "
        f"--restart to move the old run aside to {run_dir.name}.old-<timestamp> and start over"
    )


# ----------------------------------------------------------------------------- run.json


def read_run_file(run_dir: Path) -> dict[str, Any] | None:
    """The contents of ``RUN_DIR/run.json``; ``None`` when absent."""
    path = run_dir / RUN_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_run_file(run_dir: Path, info: dict[str, Any]) -> None:
    """Write ``run.json`` atomically (temporary file, then rename)."""
    path = run_dir / RUN_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- history


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Keep the ``metrics.jsonl`` records an unbroken run has written by the end of ``step``.

    Records of later steps (written after the checkpoint that was restored, then lost with the
    process), the final-report records of a finished run that is rerun, and everything when no
    checkpoint was restored (``step`` 0), are dropped: they are written again. Returns the number
    of records dropped.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a kill -9
            dropped += 1
            continue
        if step == 0 or record.get("step", 0) > step or record.get(FINAL_FLAG):
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


# ----------------------------------------------------------------------------- resume


def restore_or_refuse(
    ckpt: Any, run_dir: Path, abstract_state: Any, fp: dict[str, Any], labels: list
) -> tuple[int, Any, list[dict[str, Any]], dict[str, Any] | None]:
    """Restore the newest checkpoint of a run whose fingerprint matches ``fp``.

    Returns:
      ``(step, state, history, record)``: ``(0, None, [], None)`` for a new run; else the restored
      step, state, the eval history recorded with it and the checkpoint's whole record.

    Raises:
      RunFolderRefused: the fingerprint in ``run.json`` or in the checkpoint differs, or there are
        checkpoints but none can be read into this run's state. Nothing is written before.
    """
    info = read_run_file(run_dir) or {}
    check_fingerprint(
        run_dir, info.get("fingerprint"), fp, old_labels=info.get("labels"), new_labels=labels
    )
    steps = ckpt.all_steps()
    if not steps:
        return 0, None, [], None
    restored = ckpt.restore_latest(abstract_state)
    if restored is None:
        raise RunFolderRefused(
            f"none of the checkpoints in {ckpt.directory} (steps {', '.join(map(str, steps))}) "
            "can be read into this run's state (corrupt, or saved for another model, label set or "
            "PEFT method); " + ways_out(run_dir)
        )
    step, state, record = restored
    check_fingerprint(
        run_dir, record.get("fingerprint"), fp, old_labels=info.get("labels"), new_labels=labels
    )
    return step, state, list(record.get("history") or []), record


#: Config keys a resume may change (``None``: every key of the section): cadence, the step count
#: (with ``--extend``) and evaluation; how processes meet is per launch (``config.yaml`` holds
#: process 0's ``process_id`` and port). Any other change is refused.
RESUME_FREE_KEYS: dict[str, tuple[str, ...] | None] = {
    "train": ("steps", "log_every", "eval_every", "checkpoint_every"),
    "eval": None,
    "run": ("output_dir", "name", "trackers"),
    "mesh": ("distributed", "coordinator_address", "num_processes", "process_id"),
}


def check_resume_config(run_dir: Path, cfg: RunConfig, extend: bool = False) -> None:
    """Refuse to resume a run folder with a config that changes what is trained.

    Read before any data or model: ``config.yaml`` of a folder with checkpoints against ``cfg``.
    ``train.steps`` may change only with ``extend`` (``--extend``); the keys of
    :data:`RESUME_FREE_KEYS` may change freely. What the config does not say (the data, the
    tokenizer, the trainable shapes) is the fingerprint's to check (:func:`restore_or_refuse`).

    Raises:
      RunFolderRefused: naming each changed key (old -> new) and the ways out.
    """
    saved = run_dir / "config.yaml"
    if not saved.exists() or not (run_dir / "checkpoints").exists():
        return
    old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    old_steps = old.get("train", {}).get("steps")
    if old_steps is not None and any((run_dir / "checkpoints").iterdir()):
        _check_steps_change(run_dir, old_steps, cfg.train.steps, extend)
    diffs = [
        f"{section}.{key}: {old.get(section, {}).get(key)!r} -> {value!r}"
        for section, values in cfg.to_dict().items()
        for key, value in values.items()
        if not _free_on_resume(section, key) and old.get(section, {}).get(key) != value
    ]
    if diffs:
        raise RunFolderRefused(
            f"{run_dir} holds checkpoints of a run with a different config ({'; '.join(diffs)}); "
            "use another --run-dir, restore the original settings, or --restart to move the old "
            "run aside and start over"
        )


def _free_on_resume(section: str, key: str) -> bool:
    if section not in RESUME_FREE_KEYS:
        return False
    free = RESUME_FREE_KEYS[section]
    return free is None or key in free


def _check_steps_change(run_dir: Path, old_steps: int, new_steps: int, extend: bool) -> None:
    """Refuse a resume that changes ``train.steps`` unless ``--extend`` is given."""
    if old_steps == new_steps or extend:
        return
    raise RunFolderRefused(
        f"{run_dir} holds checkpoints of a run of train.steps={old_steps}; resuming it with "
        f"train.steps={new_steps} would restart the learning-rate schedule and recompute the "
        "sampling plan mid-run: rerun with --extend to continue from its last step with the "
        f"schedule and plan recomputed from there, or set train.steps={old_steps} (or --restart "
        "to start over, keeping the old run aside)"
    )


def extend_segments(
    run_dir: Path,
    old_steps: int,
    start: int,
    new_steps: int,
    plan: Any,
) -> tuple[list[dict[str, int]], dict[str, Any]]:
    """The segments of a run continued by ``--extend`` and the ``plan.json`` that records them.

    The first segments (from ``run.json``, else one from step 0 to ``old_steps``) are kept; a new
    one runs from ``start`` to ``new_steps``. ``plan.json`` keeps its earlier plan(s) under
    ``segments`` and holds the new plan at the top level.

    Raises:
      RunFolderRefused: the new plan draws languages with other probabilities (a total-dependent
        strategy such as UniMax): the stateless mixture cannot switch weights mid-run yet.
    """
    if new_steps <= start:
        raise RunFolderRefused(
            f"--extend to train.steps={new_steps}: {run_dir} is already at step {start}; give a "
            "larger train.steps"
        )
    info = read_run_file(run_dir) or {}
    segments = list(info.get("segments") or [{"start_step": 0, "steps": old_steps}])
    old_plan = read_json(run_dir / "plan.json") or {}
    plan_segments = list(old_plan.get("segments") or [])
    if not plan_segments:
        first = {k: v for k, v in old_plan.items() if k != "segments"}
        plan_segments = [{"start_step": 0, "steps": old_steps, "plan": first}]
    new = plan.to_dict()
    old_p = {
        r["language"]: r["probability"] for r in plan_segments[-1]["plan"].get("languages", [])
    }
    new_p = {r["language"]: r["probability"] for r in new["languages"]}
    if old_p and any(abs(old_p.get(k, -1.0) - v) > 1e-9 for k, v in new_p.items()):
        diffs = ", ".join(f"{k} {old_p.get(k, 0):.4f} → {v:.4f}" for k, v in new_p.items())
        raise RunFolderRefused(
            f"--extend to train.steps={new_steps} changes the sampling probabilities of "
            f"{run_dir} ({diffs}; sampling.strategy={new['strategy']} depends on the run "
            "length); continuing with another mixture mid-run is not supported: set "
            "sampling.budget to keep the plan, or --restart"
        )
    segments.append({"start_step": start, "steps": new_steps})
    plan_segments.append({"start_step": start, "steps": new_steps, "plan": new})
    return segments, {**new, "segments": plan_segments}


def read_json(path: Path) -> Any:
    """A JSON file's contents; ``None`` when absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
