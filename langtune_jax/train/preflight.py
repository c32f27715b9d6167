"""Checks that run before step 0: everything a run will need later is read and refused now.

A mistake found after training (a misspelt metric, a missing test split, a batch that does not
split over the devices) costs the whole run. :func:`preflight` runs after the data is read and the
mesh is built, before the model is loaded; ``langtune plan`` runs it too, so a plan that prints is
a run that starts. Each check is a small function raising :class:`~langtune_jax.config.ConfigError`
(or the data layer's ``DataError``) with the key, the value and the fix.
"""

from __future__ import annotations

import logging
from typing import Any

from flax import nnx

from langtune_jax.config import ConfigError, RunConfig
from langtune_jax.data import DataPipeline
from langtune_jax.data.errors import MissingSplitError
from langtune_jax.peft.adapters import resolve_library
from langtune_jax.train import mesh as mesh_lib

log = logging.getLogger("langtune_jax")


def check_model_config(cfg: RunConfig) -> None:
    """The checks that need only the model's ``config.json`` (run before the tokenizer is read,
    which would warn about a config it does not understand): a supported ``model_type`` and
    ``data.max_length`` within the position table."""
    check_max_length(cfg)


def preflight(cfg: RunConfig, dataset: DataPipeline, mesh: Any) -> None:
    """Every check a run can make before its first step, once the data is read (see the module
    docstring); :func:`check_model_config` runs before it.

    Args:
      cfg: the validated run config.
      dataset: the run's data pipeline (train read and tokenized).
      mesh: the device mesh the run will use.

    Raises:
      ConfigError: a key whose value cannot work with this data, model or mesh.
      DataError: an evaluation split with bad rows, unknown labels or languages train lacks.
    """
    check_batch_sizes(cfg, mesh)
    check_language_library(cfg)
    check_peft_targets(cfg, dataset)
    check_eval_splits(cfg, dataset)
    check_source_language(cfg, dataset)


def warn_config(cfg: RunConfig) -> None:
    """Warn about options that the chosen method and strategy do not read
    (:meth:`RunConfig.unused_options`) and about a warm-up longer than the run;
    ``langtune train`` and ``langtune plan`` both do."""
    warn_long_warmup(cfg)
    if unused := cfg.unused_options():
        it = "it" if len(unused) == 1 else "them"
        log.warning(
            "config: %s %s set but not read with peft.method %r and sampling.strategy %r; drop "
            "%s or choose the method/strategy that reads %s",
            ", ".join(unused),
            "is" if len(unused) == 1 else "are",
            cfg.peft.method,
            cfg.sampling.strategy,
            it,
            it,
        )


def warn_long_warmup(cfg: RunConfig) -> None:
    """Warn when the warm-up outlasts the run: the learning rate never reaches its peak."""
    warmup, steps = cfg.train.warmup_steps, cfg.train.steps
    if warmup > steps:
        log.warning(
            "train.warmup_steps (%d) is more than train.steps (%d): the learning rate rises for "
            "the whole run and ends near %.0f%% of train.learning_rate (as in transformers); lower "
            "train.warmup_steps for a full warm-up",
            warmup,
            steps,
            100 * steps / warmup,
        )


def check_peft_targets(cfg: RunConfig, dataset: DataPipeline) -> None:
    """The PEFT config finds its modules in the model (``target_modules``, ``layers_to_transform``,
    adapter layers and sites): applied to the model's shapes, before any weight is read."""
    from langtune_jax.models.hub import abstract_model
    from langtune_jax.train.session import apply_peft, num_labels

    if cfg.peft.method == "none":
        return
    try:
        abstract_model(
            cfg.model.name_or_path,
            cfg.model.task,
            num_labels=num_labels(cfg, dataset),
            transform=lambda model: apply_peft(model, cfg, nnx.Rngs(0))[0],
        )
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        section = "peft.lora" if cfg.peft.method == "lora" else "peft.adapters"
        if cfg.peft.method == "lora+adapters":
            section = "peft.lora / peft.adapters"
        raise ConfigError(f"config key '{section}': {err}") from None


def check_language_library(cfg: RunConfig) -> None:
    """A MAD-X run's ``peft.adapters.language_adapters`` names a library (or folders) that exists
    and holds adapters, before the model loads."""
    library = cfg.peft.adapters.language_adapters
    if "adapters" not in cfg.peft.method or not library:
        return
    try:
        resolve_library(library)
    except ValueError as err:
        raise ConfigError(f"peft.adapters.language_adapters: {err}") from None


def data_parallel_size(mesh: Any) -> int:
    """Devices a batch is split over (the mesh's data x fsdp axes)."""
    size = 1
    for axis in mesh_lib.BATCH_AXES:
        size *= int(mesh.shape[axis])
    return size


def check_batch_sizes(cfg: RunConfig, mesh: Any) -> None:
    """Train micro-batches and eval batches must split evenly over the data-parallel devices."""
    dp = data_parallel_size(mesh)
    shape = " x ".join(f"{a}={mesh.shape[a]}" for a in mesh_lib.BATCH_AXES)
    micro = cfg.train.batch_size // cfg.train.grad_accum_steps
    for key, value, what in (
        ("train.batch_size", micro, "micro-batch"),
        ("eval.batch_size", cfg.eval.batch_size, "batch"),
    ):
        if value % dp:
            accum = (
                f" (batch_size / grad_accum_steps = {micro})"
                if key == "train.batch_size" and cfg.train.grad_accum_steps > 1
                else ""
            )
            raise ConfigError(
                f"config key '{key}': the {what} of {value}{accum} does not divide over the {dp} "
                f"data-parallel devices (mesh {shape}); use a multiple of {dp}, e.g. "
                f"{max(dp, value // dp * dp)}"
            )


def check_max_length(cfg: RunConfig) -> None:
    """``data.max_length`` must fit the model's position table (longer rows would index past it)."""
    from langtune_jax.models.hub_files import position_limit

    limit = position_limit(cfg.model.name_or_path)
    if limit is not None and cfg.data.max_length > limit:
        raise ConfigError(
            f"config key 'data.max_length': {cfg.data.max_length} is longer than the "
            f"{limit} positions of model {cfg.model.name_or_path}; set data.max_length <= {limit}"
        )


def eval_splits(cfg: RunConfig) -> list[tuple[str, str]]:
    """(config key, split) of every split the run evaluates, ``eval.split`` first."""
    out = [("eval.split", cfg.eval.split)]
    out += [("eval.final_splits", s) for s in cfg.eval.final_splits if s != cfg.eval.split]
    return out


def check_eval_splits(cfg: RunConfig, dataset: DataPipeline) -> None:
    """Every evaluated split exists, and is read, validated and tokenized now (then cached)."""
    for key, split in eval_splits(cfg):
        try:
            dataset.split(split)
        except MissingSplitError as err:
            fix = (
                "set eval.split to a split the data has"
                if key == "eval.split"
                else f"remove {split!r} from eval.final_splits"
            )
            raise ConfigError(
                f"config key '{key}': the data has no {split!r} split ({err}); add it to "
                f"data.sources or {fix}"
            ) from None


def check_source_language(cfg: RunConfig, dataset: DataPipeline) -> None:
    """``eval.source_language`` must be a training language (the transfer gap is measured
    from it)."""
    lang = cfg.eval.source_language
    if lang is not None and lang not in dataset.languages:
        raise ConfigError(
            f"config key 'eval.source_language': {lang!r} is not a training language "
            f"({', '.join(dataset.languages)})"
        )
