"""Reopening finished run folders: ``langtune eval``, ``export``, ``generate`` and ``compare``.

:func:`load_run` rebuilds the session from ``config.yaml`` and restores the newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import yaml

from langtune_jax import eval as eval_lib
from langtune_jax import peft as peft_lib
from langtune_jax.config import ConfigError, RunConfig, from_dict
from langtune_jax.eval.report import REPORT_FILE
from langtune_jax.models.hub_files import make_readable
from langtune_jax.models.llama.generate import Completion, generate_completions
from langtune_jax.train.checkpoint import Checkpointer
from langtune_jax.train.optim import make_optimizer
from langtune_jax.train.run_folder import read_json
from langtune_jax.train.scoring import evaluate
from langtune_jax.train.session import Session, build_session, check_zero_shot


def base_model_id(name_or_path: str) -> str:
    """``base_model_name_or_path`` for an export: the Hub id when the model came from the Hub,
    else the local folder's absolute path (a relative path would not resolve elsewhere)."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def export_adapter(session: Session, folder: Path) -> None:
    """Write the trained PEFT weights beside the checkpoints (PEFT format for LoRA); a run that
    trained per-language adapters also writes them as ``RUN_DIR/language_adapters/<language>/``."""
    model = session.split.merge()
    method = session.cfg.peft.method
    base = base_model_id(session.cfg.model.name_or_path)
    if "lora" in method and session.cfg.peft.lora_languages:
        # Per-language LoRA: one PEFT folder per language, each loadable on its own.
        for lang in session.cfg.peft.lora_languages:
            peft_lib.export_peft(
                model,
                folder.parent / "language_adapters" / lang,
                adapter_name=lang,
                base_model_name_or_path=base,
                label_names=session.label_names,
            )
    elif "lora" in method:
        peft_lib.export_peft(
            model, folder, base_model_name_or_path=base, label_names=session.label_names
        )
    if "adapters" in method:
        target = folder / "bottleneck" if "lora" in method else folder
        peft_lib.save_adapters(model, target)
        if session.label_names and jax.process_index() == 0:
            peft_lib.write_labels(target, session.label_names)
        adapters = peft_lib.get_adapter_config(model)
        if adapters.languages is not None and adapters.language_adapters is None:
            # Per-language adapters trained in this run: also a library a task run can stack on.
            peft_lib.save_language_library(model, folder.parent / "language_adapters")
    if jax.process_index() == 0:
        for out in (folder, folder.parent / "language_adapters"):
            if out.exists():
                make_readable(out)


def load_run(
    run_dir: Path, step: int | None = None, best: bool = False
) -> tuple[RunConfig, Session]:
    """Rebuild a trained run from its folder: config, model, and a checkpoint.

    Args:
      run_dir: the run folder.
      step: restore this checkpoint step (default: the newest readable one).
      best: restore the checkpoint with the best ``train.best_metric``.
    """
    cfg = saved_config(run_dir)
    # The saved config holds the training job's process id and coordinator; evaluating or
    # exporting later is a new job, multi-host only if its own environment says so.
    cfg.mesh = dataclasses.replace(
        cfg.mesh, distributed=None, coordinator_address=None, num_processes=None, process_id=None
    )
    session = build_session(cfg, run_dir, check=False, reopened=True)
    tx = make_optimizer(cfg.train)
    opt_state = tx.init(session.split.trainable)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
    abstract = (session.split.trainable, opt_state, session.split.mutable)
    try:
        step = _chosen_step(ckpt, run_dir, cfg, step, best)
        if step is None:
            restored = ckpt.restore_latest(abstract)
        else:
            restored = (step, *ckpt.restore(step, abstract))
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{run_dir}/checkpoints holds no readable checkpoint")
    _, (session.split.trainable, _, session.split.mutable), _ = restored
    return cfg, session


def saved_config(run_dir: Path) -> RunConfig:
    config_path = run_dir / "config.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run folder")
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no config.yaml")
    return from_dict(RunConfig, yaml.safe_load(config_path.read_text(encoding="utf-8")))


def _chosen_step(ckpt, run_dir: Path, cfg: RunConfig, step: int | None, best: bool) -> int | None:
    steps = ckpt.all_steps()
    if best:
        metric = cfg.train.best_metric
        if not metric:
            raise ConfigError(
                f"--best: {run_dir} was trained without train.best_metric, so no checkpoint is "
                f"marked best; pick one with --step (saved steps: {steps})"
            )
        lower = not eval_lib.metric_info(metric).higher_is_better
        step = ckpt.best_step(metric, "min" if lower else "max")
        if step is None:
            raise ConfigError(
                f"--best: no checkpoint in {run_dir}/checkpoints was saved with eval metric "
                f"{metric!r}; pick one with --step (saved steps: {steps})"
            )
    elif step is not None and step not in steps:
        raise ConfigError(
            f"--step {step}: {run_dir}/checkpoints has no checkpoint at that step; saved steps: "
            f"{steps}"
        )
    return step


def evaluate_run(
    run_dir: Path,
    split: str | None = None,
    data: str | Path | None = None,
    language: str | None = None,
) -> dict[str, Any]:
    """``langtune eval``: per-language report of a trained run on a split, written to
    ``eval/<split>/`` (with ``predictions.jsonl``, one line per example, for classification).

    Args:
      run_dir: the run folder.
      split: a split of the run's data (default ``eval.split``); with ``data``, the name of
        the report (default: the file's stem).
      data: evaluate this file, folder or glob instead (``--data``): read with the run's first
        source's columns and format options, its labels checked against the run's vocabulary.
        ``{language}`` in it, ``language`` or the language column gives the language.
      language: the language of every row of ``data`` (``--language``).

    Raises:
      ConfigError: ``data`` matches no file, or ``split`` names one of the run's own splits
        (its report would be overwritten with other data).
    """
    source = None
    if data is not None:
        source, split = other_source(run_dir, str(data), split, language)
    elif language is not None:
        raise ConfigError("--language needs --data (the language of the rows of that file)")
    cfg, session = load_run(run_dir)
    split = split or cfg.eval.split
    if source is not None:
        session.dataset.add_split(split, source)
        # Its new languages need an adapter or a fallback, as the run's own splits did.
        check_zero_shot(session.model, session.dataset, [split])
    elif not session.dataset.has_split(split):
        raise ValueError(f"the data of {run_dir} has no split {split!r}")
    predictions = eval_lib.prediction_log(session.cfg.model.task, session.label_names)
    result = evaluate(session, split, predictions=predictions)
    if jax.process_index() == 0:
        out = run_dir / "eval" / split
        # The training-time history of this split's report stays (its curves still describe
        # the run).
        previous = read_json(out / REPORT_FILE) or {}
        files = {}
        if predictions is not None:
            files["predictions"] = eval_lib.save_predictions(
                out, predictions, session.dataset, split, session.tokenizer
            )
        eval_lib.write_report(
            out,
            result,
            config_hash=cfg.hash(),
            step=None,
            plan=read_json(run_dir / "plan.json"),
            history=previous.get("history"),
            run_name=cfg.run.name,
            metric=cfg.eval.metric,
            files=files,
        )
        print(eval_lib.markdown_table(result))
    return result


def _safe_name(text: str) -> str:
    """``text`` with every character but letters, digits, ``_`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text)


def other_source(
    run_dir: Path, data: str, name: str | None, language: str | None, *, report: bool = True
):
    """The source and split name of ``langtune eval --data`` (``report``: the name must not be
    one of the run's own splits, whose report it would overwrite) or ``langtune predict``,
    checked before the model loads."""
    cfg = saved_config(run_dir)
    path = str(Path(data).expanduser().absolute())
    if not glob.glob(path.replace("{language}", "*")):
        raise ConfigError(f"--data {data}: no file matches it")
    name = name or _safe_name(Path(data.replace("{language}", "")).stem)
    own = {"train", "validation", "test", cfg.eval.split, *cfg.eval.final_splits}
    if report and name in own | set(cfg.data.split_names.values()):
        raise ConfigError(
            f"--split {name!r}: the run's data has a split of that name, and its report "
            f"(eval/{name}/) would be overwritten with other data; name the report with another "
            "--split"
        )
    first = cfg.data.sources[0]
    source = dataclasses.replace(
        first,
        path=path,
        format=first.format if first.format != "hf" else "auto",
        hf_config=None,
        hf_split="{split}",
        splits=[name],
        language=language,
        file_languages={},
    )
    return source, name


def export_run(
    run_dir: Path, fmt: str, out: Path, step: int | None = None, best: bool = False
) -> Path:
    """``langtune export``: a PEFT adapter folder, a merged HF checkpoint, or an AdapterHub adapter.

    Args:
      run_dir: the run folder.
      fmt: ``"peft"`` (LoRA runs), ``"merged"`` (LoRA folded into a full checkpoint) or
        ``"adapterhub"`` (bottleneck-adapter runs, in the ``adapters`` library's layout; a
        language-adapter run writes one adapter per language, ``out/<language>/``).
      out: output folder.
      step: export this checkpoint step (``--step``); default the newest.
      best: export the checkpoint with the best ``train.best_metric`` (``--best``).

    Raises:
      ConfigError: ``out`` is a file; a format the run's PEFT method cannot be exported to
        (bottleneck adapters have no place in a plain transformers checkpoint); an unknown
        ``step``.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export --out {out} is a file, not a folder; pass a folder to write to")
    _check_export_format(run_dir, saved_config(run_dir).peft.method, fmt)
    cfg, session = load_run(run_dir, step=step, best=best)
    model = session.split.merge()
    if fmt == "adapterhub" and peft_lib.adapters.has_language_adapters(model):
        # A language-adapter run (MAD-X step 1): one AdapterHub adapter per language, OUT/<lang>/
        peft_lib.adapters.export_adapterhub_languages(model, out, label_names=session.label_names)
    elif fmt == "adapterhub":
        peft_lib.adapters.export_adapterhub(
            model,
            out,
            adapter_name=_safe_name(cfg.run.name),
            label_names=session.label_names,
        )
    elif fmt == "peft":
        peft_lib.export_peft(
            model,
            out,
            base_model_name_or_path=base_model_id(cfg.model.name_or_path),
            label_names=session.label_names,
        )
    else:
        peft_lib.merge_and_save(model, out, label_names=session.label_names)
        if jax.process_index() == 0:
            session.tokenizer.save_pretrained(out)
            make_readable(out)
    print(f"exported {run_dir} as {fmt} to {out}")
    return out


def _check_export_format(run_dir: Path, method: str, fmt: str) -> None:
    """Refuse an export format the run's PEFT method has no place in (before loading anything)."""
    if fmt == "peft" and "lora" not in method:
        raise ConfigError(
            f"{run_dir} was trained with peft.method={method}; PEFT export needs LoRA; its adapter "
            f"weights are in {run_dir / 'adapter'} (langtune_jax.peft.load_adapters reads them; "
            "--format adapterhub writes them for the adapters library)"
        )
    if fmt == "adapterhub" and method != "adapters":
        raise ConfigError(
            f"{run_dir} was trained with peft.method={method}; AdapterHub export needs bottleneck "
            "adapters alone (peft.method: adapters); for LoRA use --format peft"
        )
    if fmt == "merged" and "adapters" in method:
        where = run_dir / "adapter" / ("bottleneck" if "lora" in method else "")
        raise ConfigError(
            f"{run_dir} has bottleneck adapters (peft.method={method}), which a plain transformers "
            "checkpoint has no modules for: a merged export would silently drop them. Their "
            f"weights are in {where} (load with langtune_jax.peft.load_adapters), or evaluate "
            "the run with `langtune eval`"
        )


def compare_run_folders(
    run_dirs: Sequence[Path],
    *,
    metric: str | None = None,
    split: str | None = None,
    out: Path | None = None,
) -> str:
    """``langtune compare``: the side-by-side per-language table of runs (printed, returned).

    Args:
      run_dirs: run folders with reports (the first is the baseline).
      metric: the metric to compare (default: each run's headline).
      split: the report split (default: test when the runs have several).
      out: also write ``comparison.md``, ``comparison.png`` and, for runs with dynamic weights,
        ``weights.png`` into this folder.

    Returns:
      The markdown table.
    """
    table, data = eval_lib.compare_runs(list(run_dirs), metric=metric, split=split)
    print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(table + "\n", encoding="utf-8")
        eval_lib.plot_comparison(data, out / "comparison.png")
        print(f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}")
        if data["weights"]:
            print(f"wrote {eval_lib.plot_weight_segments(data['weights'], out / 'weights.png')}")
    return table


def generate_run(
    run_dir: str | Path,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    languages: Sequence[str] | None = None,
    verbose: bool = True,
) -> list[Completion]:
    """``langtune generate``: complete prompts with a trained causal-LM run (newest checkpoint).

    Args:
      run_dir: the run folder (``config.yaml`` + ``checkpoints/``).
      prompts, max_new_tokens, temperature, top_p, seed: see :func:`generate_completions`.
      languages: for runs with per-language adapters, the language of the prompts: one name for
        all of them or one per prompt; each prompt then runs through its language's adapter
        (with the run's fallbacks), as in training.
      verbose: print each prompt and its completion.

    Returns:
      One :class:`Completion` per prompt.
    """
    cfg, session = load_run(Path(run_dir))
    if cfg.model.task != "causal-lm":
        raise ValueError(
            f"{run_dir} was trained with model.task={cfg.model.task}; generation needs causal-lm"
        )
    chat = any(s.messages_column for s in cfg.data.sources)
    language_id = _language_ids(session, prompts, languages, run_dir)
    completions = generate_completions(
        session.split.merge(),
        session.tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        chat=chat,
        routing=session.routing if language_id is not None else None,
        language_id=language_id,
    )
    if verbose and jax.process_index() == 0:
        for c in completions:
            print(f">>> {c.prompt}\n{c.text}\n")
    return completions


def _language_ids(session, prompts, languages, run_dir) -> list[int] | None:
    """Data-pipeline language ids of the prompts, or None for a run without language adapters."""
    known = list(session.dataset.languages)
    if session.routing is None:
        if languages:
            raise ValueError(
                f"{run_dir} has no per-language adapters, so --language has no effect; drop it"
            )
        return None
    if not languages:
        raise ValueError(
            f"{run_dir} has per-language adapters: give the prompts' language with --language "
            f"(once for all prompts or once per prompt; one of {', '.join(known)})"
        )
    names = list(languages) * len(prompts) if len(languages) == 1 else list(languages)
    if len(names) != len(prompts):
        raise ValueError(
            f"got {len(languages)} --language values for {len(prompts)} prompts: give one for "
            "all prompts or one per prompt"
        )
    unknown = sorted({n for n in names if n not in known})
    if unknown:
        raise ValueError(
            f"language(s) {', '.join(unknown)} not in the run's data (languages: {', '.join(known)})"
        )
    return [known.index(n) for n in names]
