"""Setting up a run: hosts, mesh, data, model + PEFT, and the trainable / frozen / mutable split.

:func:`build_session` is shared by training (:mod:`langtune_jax.train.loop`) and by the commands that
reopen a finished run (:mod:`langtune_jax.train.runs`: eval, export, generate, predict);
:mod:`langtune_jax.train.scoring` scores a session's current state on a data split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from langtune_jax import data as data_lib
from langtune_jax import peft as peft_lib
from langtune_jax.config import ConfigError, RunConfig
from langtune_jax.models import from_pretrained, load_tokenizer
from langtune_jax.models.common import set_remat
from langtune_jax.train import mesh as mesh_lib
from langtune_jax.train.step import Routing, SplitModel, split_model

if TYPE_CHECKING:  # transformers is imported when a tokenizer is loaded, not with this module
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("langtune_jax")


def maybe_initialize_distributed(cfg) -> None:
    """Call ``jax.distributed.initialize`` when the mesh config or the environment asks for it.

    ``mesh.distributed: true`` with ``coordinator_address``/``num_processes``/``process_id`` set
    explicitly, or left null so JAX reads them from the environment (Cloud TPU, SLURM, Open MPI).
    ``mesh.distributed: null`` initializes only when ``JAX_COORDINATOR_ADDRESS`` is set.
    """
    wanted = cfg.distributed
    if wanted is None:
        wanted = bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if not wanted or jax.distributed.is_initialized():
        return
    kwargs = {
        k: v
        for k, v in (
            ("coordinator_address", cfg.coordinator_address),
            ("num_processes", cfg.num_processes),
            ("process_id", cfg.process_id),
        )
        if v is not None
    }
    jax.distributed.initialize(**kwargs)
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def resolve_run_dir(cfg: RunConfig, run_dir: str | Path | None) -> Path:
    """``--run-dir`` or ``<run.output_dir>/<run.name>``.

    Raises:
      ConfigError: the path exists and is not a folder.
    """
    path = Path(run_dir) if run_dir else Path(cfg.run.output_dir) / cfg.run.name
    if path.exists() and not path.is_dir():
        what = "--run-dir" if run_dir else "run.output_dir/run.name"
        raise ConfigError(f"{what} {path} is a file, not a folder; pass a folder for the run")
    return path


def apply_peft(model: nnx.Module, cfg: RunConfig, rngs: nnx.Rngs) -> tuple[nnx.Module, Any]:
    """Wrap ``model`` with the configured PEFT method; returns the model and its trainable filter."""
    method = cfg.peft.method
    filters = []
    if "lora" in method:
        for name in cfg.peft.lora_languages or ["default"]:
            model = peft_lib.apply_lora(model, cfg.peft.lora, adapter_name=name, rngs=rngs)
        filters.append(peft_lib.trainable_filter(model))
    if "adapters" in method:
        model = peft_lib.apply_adapters(model, cfg.peft.adapters, rngs=rngs)
        filters.append(peft_lib.adapter_trainable_filter(model))
    if method == "none":
        filters.append(nnx.Param)
    return model, filters[0] if len(filters) == 1 else nnx.Any(*filters)


def frozen_fresh_modules(model: nnx.Module, trainable: Any) -> list[str]:
    """Freshly initialised modules (absent from the checkpoint) that the PEFT filter leaves frozen.

    Such a module stays random for the whole run (a new head or pooler the config forgot in
    ``modules_to_save``); the run warns about each one.
    """
    fresh = tuple(getattr(model, "fresh_modules", ()) or ())
    if not fresh:
        return []
    frozen = nnx.state(model, nnx.All(nnx.Param, nnx.Not(trainable)))
    paths = [".".join(str(k) for k in p) for p, _ in nnx.to_flat_state(frozen)]
    return [m for m in fresh if any(p == m or p.startswith(m + ".") for p in paths)]


def warn_frozen_fresh(model: nnx.Module, trainable: Any) -> None:
    """Warn once per module that starts random and stays frozen."""
    for name in frozen_fresh_modules(model, trainable):
        log.warning(
            "%s is freshly initialised (not in the pretrained checkpoint) but frozen: it stays "
            "random for the whole run; add it to peft.<method>.modules_to_save to train it",
            name,
        )


def language_routing(model: nnx.Module, languages: list[str]) -> Routing | None:
    """Per-language routing for the step (bottleneck rows and / or per-language LoRA adapters),
    or None when the model has neither."""
    contexts = []
    if peft_lib.has_language_adapters(model):
        table = jnp.asarray(peft_lib.language_rows(model, languages))
        contexts.append(lambda m, b: peft_lib.with_routing(m, b["language_id"], table=table))
    names = peft_lib.adapter_names_of(model)
    if names and names != ("default",):  # per-language LoRA: adapter index, -1 = base model
        lora = jnp.asarray([names.index(x) if x in names else -1 for x in languages], jnp.int32)
        contexts.append(
            lambda m, b: peft_lib.adapter_routing(m, jnp.take(lora, b["language_id"]), names)
        )
    if not contexts:
        return None

    @contextlib.contextmanager
    def routing(m, batch):
        with contextlib.ExitStack() as stack:
            for open_context in contexts:
                stack.enter_context(open_context(m, batch))
            yield

    return routing


def check_zero_shot(
    model: nnx.Module, dataset: data_lib.DataPipeline, splits: list[str]
) -> list[str]:
    """Load the evaluation ``splits`` and check how ``model`` serves their zero-shot languages.

    A language an evaluation split has but train does not is evaluated zero-shot: with
    per-language adapters through its own adapter (a language adapter library), ``fallback`` or
    ``default_fallback``; otherwise through the shared adapter. Called before step 0, so a language
    that no adapter would serve stops the run before training.

    Returns:
      The zero-shot languages (``dataset.zero_shot``).

    Raises:
      DataError: with per-language adapters and no shared task adapter, a zero-shot language
        that neither has an adapter nor a fallback (it would run the bare base model).
    """
    for split in splits:
        if dataset.has_split(split):
            dataset.split(split)
    if peft_lib.has_language_adapters(model):
        adapters = peft_lib.get_adapter_config(model)  # languages resolved from a library
        rows = peft_lib.language_rows(adapters, dataset.zero_shot)
        bare = [z for z, r in zip(dataset.zero_shot, rows) if r < 0]
        if bare and not adapters.shared_task_adapter:
            raise data_lib.DataError(
                f"evaluation language(s) {', '.join(map(repr, bare))} are not in train and have "
                "no adapter: set peft.adapters.fallback (e.g. {"
                f"{bare[0]}: {adapters.languages[0]}}}) or peft.adapters.default_fallback to one "
                f"of {adapters.languages}, or keep shared_task_adapter: true"
            )
        for z, r in zip(dataset.zero_shot, rows):  # the data pipeline said they are zero-shot
            served = f"the {adapters.languages[r]!r} adapter" if r >= 0 else "the shared adapter"
            log.info("zero-shot language %r is evaluated through %s", z, served)
    return list(dataset.zero_shot)


# ----------------------------------------------------------------------------- the session


class StateShardings(TypedDict):
    """Sharding trees of the split state (:func:`~langtune_jax.train.mesh.state_shardings`), one
    ``NamedSharding`` per leaf; the ``param_shardings`` of :mod:`langtune_jax.train.step`. The
    training loop adds ``opt_state`` (the optimizer state's shardings) to its own copy."""

    trainable: nnx.State
    frozen: nnx.State
    mutable: nnx.State


@dataclasses.dataclass
class Session:
    """Everything a run needs after set-up; shared by training, evaluation and export.

    Attributes:
      cfg: the run config.
      run_dir: the run folder.
      mesh: the device mesh (``data``, ``fsdp``, ``tensor`` axes) every array is placed on.
      tokenizer: the transformers tokenizer of ``model.tokenizer`` (or ``model.name_or_path``).
      dataset: the data pipeline: per-language splits, the sampling plan, train/eval batches.
      model: the NNX model wrapped by the PEFT method (its state lives in ``split``).
      split: the model split into trainable / frozen / mutable state, placed on ``mesh``.
      shardings: the sharding trees of ``split``'s three states.
      routing: the per-language routing around the forward pass (language adapters or
        per-language LoRA), or None when the model has neither.
      routing_size: the number of languages ``routing``'s table covers
        (``len(dataset.all_languages)`` when it was built; :func:`evaluate` rebuilds it when an
        evaluation split adds zero-shot languages).
    """

    cfg: RunConfig
    run_dir: Path
    mesh: Mesh
    tokenizer: PreTrainedTokenizerBase
    dataset: data_lib.DataPipeline
    model: nnx.Module
    split: SplitModel
    shardings: StateShardings
    routing: Routing | None
    routing_size: int

    @property
    def label_names(self) -> list[str] | None:
        """The label vocabulary of classification runs (index = class id); None otherwise."""
        return self.dataset.labels or None


class _NoFreshHeadNote(logging.Filter):
    """Drops the loader's "newly initialised" note while a trained run is reopened or resumed:
    its heads are restored from the run's checkpoint right after loading."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "newly initialised" not in str(record.msg)


def build_session(
    cfg: RunConfig,
    run_dir: Path,
    *,
    check: bool = True,
    reopened: bool = False,
    resuming: bool = False,
) -> Session:
    """Mesh, tokenizer, data, model + PEFT, split state placed on the mesh.

    Args:
      cfg: the run config.
      run_dir: the run folder (its ``data_cache`` keeps the tokenized splits).
      check: run the :func:`~langtune_jax.train.preflight.preflight` checks (training) after the
        data is read and before the model is loaded.
      reopened: rebuilding a trained run (eval, export, generate): training-time warnings and
        notes (chat-template fallback, freshly initialised heads) are not repeated.
      resuming: training resumes from a checkpoint of the run, which restores the heads: the
        loader's "newly initialised" note is not shown.
    """
    from langtune_jax.train.preflight import check_model_config, eval_splits, preflight

    maybe_initialize_distributed(cfg.mesh)
    mesh = _mesh(cfg)
    if check:
        check_model_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path)
    dataset = _pipeline(
        cfg, tokenizer, cache_dir=run_dir / "data_cache", warn=not reopened, defer_cache=check
    )
    if check:
        preflight(cfg, dataset, mesh)
    quiet = _NoFreshHeadNote() if reopened or resuming else None
    hub_log = logging.getLogger("langtune_jax.models.hub")
    if quiet:
        hub_log.addFilter(quiet)
    try:
        model = _load_model(cfg, mesh, dataset)
    finally:
        if quiet:
            hub_log.removeFilter(quiet)
    dropout_key = jax.random.key(cfg.run.seed + 2, impl=cfg.train.rng_impl)
    rngs = nnx.Rngs(params=cfg.run.seed + 1, dropout=dropout_key)
    model, trainable = apply_peft(model, cfg, rngs)
    check_zero_shot(model, dataset, [split for _, split in eval_splits(cfg)])
    set_remat(model, cfg.train.remat)
    split, shardings = _placed_split(model, trainable, mesh)
    dataset.commit_cache()  # the run's checks passed and its model loaded
    return Session(
        cfg=cfg,
        run_dir=run_dir,
        mesh=mesh,
        tokenizer=tokenizer,
        dataset=dataset,
        model=model,
        split=split,
        shardings=shardings,
        routing=language_routing(model, dataset.all_languages),
        routing_size=len(dataset.all_languages),
    )


def _placed_split(
    model: nnx.Module, trainable: Any, mesh: Mesh
) -> tuple[SplitModel, StateShardings]:
    """The model split by the ``trainable`` filter, each state placed on ``mesh`` by its logical
    axes; and the shardings used."""
    split = split_model(model, trainable)
    shardings = StateShardings(
        trainable=mesh_lib.state_shardings(split.trainable, mesh),
        frozen=mesh_lib.state_shardings(split.frozen, mesh),
        mutable=mesh_lib.state_shardings(split.mutable, mesh),
    )
    split.trainable = jax.device_put(split.trainable, shardings["trainable"])
    split.frozen = jax.device_put(split.frozen, shardings["frozen"])
    split.mutable = jax.device_put(split.mutable, shardings["mutable"])
    return split, shardings


def _mesh(cfg: RunConfig) -> Mesh:
    try:
        return mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    except ValueError as err:
        raise ConfigError(f"config section 'mesh': {err}") from None


def num_labels(cfg: RunConfig, dataset: data_lib.DataPipeline) -> int | None:
    """Classes of the task head: the data's label vocabulary (classification tasks), else None."""
    return len(dataset.labels) if "classification" in cfg.model.task else None


def _load_model(cfg: RunConfig, mesh, dataset) -> nnx.Module:
    dtype = jnp.bfloat16 if cfg.model.compute_dtype() == "bfloat16" else jnp.float32
    param_dtype = jnp.bfloat16 if cfg.model.param_dtype == "bfloat16" else jnp.float32
    return from_pretrained(
        cfg.model.name_or_path,
        task=cfg.model.task,
        dtype=dtype,
        param_dtype=param_dtype,
        num_labels=num_labels(cfg, dataset),
        mesh=mesh,
        seed=cfg.run.seed,
        rng_impl=cfg.train.rng_impl,
    )


def _pipeline(
    cfg: RunConfig,
    tokenizer,
    cache_dir: Path | None = None,
    warn: bool = True,
    defer_cache: bool = False,
) -> data_lib.DataPipeline:
    return data_lib.DataPipeline(
        cfg.data,
        cfg.sampling,
        tokenizer,
        task=cfg.model.task,
        seed=cfg.run.seed,
        total_samples=cfg.train.steps * cfg.train.batch_size,
        batch_size=cfg.train.batch_size,
        cache_dir=cache_dir,
        warn=warn,
        defer_cache=defer_cache,
    )


def sampling_plan(cfg: RunConfig) -> data_lib.SamplingPlan:
    """The sampling plan of a config (``langtune plan``), without loading a model.

    Runs the same pre-step-0 checks as training (on this machine's devices), so a plan that
    prints is a run that starts.
    """
    from langtune_jax.train.preflight import check_model_config, preflight, warn_config

    warn_config(cfg)
    mesh = _mesh(cfg)
    check_model_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path)
    dataset = _pipeline(cfg, tokenizer)
    preflight(cfg, dataset, mesh)
    return dataset.plan
