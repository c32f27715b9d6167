"""Reopening a finished run folder: ``langtune eval``, ``langtune export`` and the adapter export.

:func:`load_run` rebuilds the session from ``config.yaml`` and restores the newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import yaml

from langtune_jax import eval as eval_lib
from langtune_jax import peft as peft_lib
from langtune_jax.config import ConfigError, RunConfig, from_dict
from langtune_jax.train.checkpoint import Checkpointer
from langtune_jax.train.optim import make_optimizer
from langtune_jax.train.session import Session, build_session, evaluate


def export_adapter(session: Session, folder: Path) -> None:
    """Write the trained PEFT weights beside the checkpoints (PEFT format for LoRA); a run that
    trained per-language adapters also writes them as ``RUN_DIR/language_adapters/<language>/``."""
    model = session.split.merge()
    method = session.cfg.peft.method
    base = session.cfg.model.name_or_path
    if "lora" in method and session.cfg.peft.lora_languages:
        # Per-language LoRA: one PEFT folder per language, each loadable on its own.
        for lang in session.cfg.peft.lora_languages:
            peft_lib.export_peft(
                model,
                folder.parent / "language_adapters" / lang,
                adapter_name=lang,
                base_model_name_or_path=base,
            )
    elif "lora" in method:
        peft_lib.export_peft(model, folder, base_model_name_or_path=base)
    if "adapters" in method:
        peft_lib.save_adapters(model, folder / "bottleneck" if "lora" in method else folder)
        adapters = peft_lib.get_adapter_config(model)
        if adapters.languages is not None and adapters.language_adapters is None:
            # Per-language adapters trained in this run: also a library a task run can stack on.
            peft_lib.save_language_library(model, folder.parent / "language_adapters")


def load_run(run_dir: Path) -> tuple[RunConfig, Session]:
    """Rebuild a trained run from its folder: config, model, and the newest checkpoint."""
    config_path = run_dir / "config.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run folder")
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no config.yaml")
    cfg = from_dict(RunConfig, yaml.safe_load(config_path.read_text(encoding="utf-8")))
    # The saved config holds the training job's process id and coordinator; evaluating or
    # exporting later is a new job, multi-host only if its own environment says so.
    cfg.mesh = dataclasses.replace(
        cfg.mesh, distributed=None, coordinator_address=None, num_processes=None, process_id=None
    )
    session = build_session(cfg, run_dir, check=False, reopened=True)
    tx = make_optimizer(cfg.train)
    opt_state = tx.init(session.split.trainable)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
    restored = ckpt.restore_latest((session.split.trainable, opt_state, session.split.mutable))
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{run_dir}/checkpoints holds no readable checkpoint")
    _, (session.split.trainable, _, session.split.mutable), _ = restored
    return cfg, session


def evaluate_run(run_dir: Path, split: str | None = None) -> dict[str, Any]:
    """``langtune eval``: per-language report of a trained run on a split, written to
    ``eval/<split>/``."""
    cfg, session = load_run(run_dir)
    split = split or cfg.eval.split
    if not session.dataset.has_split(split):
        raise ValueError(f"the data of {run_dir} has no split {split!r}")
    result = evaluate(session, split)
    if jax.process_index() == 0:
        eval_lib.write_report(
            run_dir / "eval" / split,
            result,
            config_hash=cfg.hash(),
            step=None,
            plan=_read_json(run_dir / "plan.json"),
            run_name=cfg.run.name,
            metric=cfg.eval.metric,
        )
        print(eval_lib.markdown_table(result))
    return result


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def export_run(run_dir: Path, fmt: str, out: Path) -> Path:
    """``langtune export``: the run's LoRA as a PEFT adapter folder, or a merged HF checkpoint.

    Raises:
      ConfigError: ``out`` is a file.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export --out {out} is a file, not a folder; pass a folder to write to")
    cfg, session = load_run(run_dir)
    model = session.split.merge()
    if fmt == "peft":
        if "lora" not in cfg.peft.method:
            raise ValueError(
                f"{run_dir} was trained with peft.method={cfg.peft.method}; "
                "PEFT export needs LoRA (use --format merged)"
            )
        peft_lib.export_peft(model, out, base_model_name_or_path=cfg.model.name_or_path)
    else:
        peft_lib.merge_and_save(model, out)
        session.tokenizer.save_pretrained(out)
    print(f"exported {run_dir} as {fmt} to {out}")
    return out
