"""Typed run configuration: YAML in, validated dataclasses out, before any work starts.

A run config is a tree of small dataclasses, one per concern, each owned by the module that reads it
(``LoraConfig`` lives in ``peft/lora/config.py``, ``SamplingConfig`` in ``data/sampling.py`` ...). This file
only composes them into :class:`RunConfig` and reads the files; :mod:`langtune_jax.config_convert`
converts plain YAML data into that tree, generically, from the type hints:

* unknown keys are errors that name the full dotted key and list the valid ones;
* values are checked against the hint (``int``, ``float``, ``str``, ``bool``, ``X | None``,
  ``Literal[...]``, ``list[T]``, ``dict[str, T]``, nested dataclasses); a wrong type names the key,
  the expected type and the value;
* each dataclass validates its own invariants in ``__post_init__``; the message is prefixed with the
  dotted key of the section.

Overrides use dotted keys, as on the command line: ``--set train.steps=200
sampling.strategy=temperature``; the value is parsed as YAML (``[q_proj, v_proj]``, ``null``, ``1e-3``)
and a number indexes a list (``data.sources.0.path=...``). Relative input paths in a config file
resolve against the file's folder (:func:`load_config`, :mod:`langtune_jax.config_paths`). :mod:`langtune_jax.config_reference` lists
every key with its type, default and doc (``langtune config``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml

from langtune_jax.config_convert import (  # noqa: F401 (public here too)
    ConfigError,
    apply_overrides,
    from_dict,
    parse_override,
)
from langtune_jax.config_paths import resolve_paths
from langtune_jax.data import DataConfig, SamplingConfig
from langtune_jax.peft.adapters import AdapterConfig
from langtune_jax.peft.lora import LoraConfig
from langtune_jax.tasks import Task


@dataclasses.dataclass
class RunSection:
    """Identity of a run.

    Attributes:
      name: the run folder is ``<output_dir>/<name>`` unless ``--run-dir`` says otherwise.
      seed: seeds parameter init, dropout and data order (the sampler is a pure function of it).
      output_dir: parent folder of run folders (relative to the current directory).
      trackers: where scalars go besides metrics.jsonl: tensorboard (event files in the run
        folder), wandb, mlflow (each imported only when named; see train/logging_utils.py).
    """

    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = dataclasses.field(
        default_factory=lambda: ["tensorboard"]
    )

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty folder name without '/', got {self.name!r}")


@dataclasses.dataclass
class ModelSection:
    """Which pretrained model to fine-tune and how to compute.

    Attributes:
      name_or_path: a local Hugging Face folder (tried first) or a Hub id.
      tokenizer: tokenizer folder or Hub id; defaults to ``name_or_path``.
      task: the head put on top of the base model. ``masked-lm`` (BERT family): masked-LM
        training on plain text (``text`` and ``language`` per row), the MLM head loaded from the
        checkpoint (e.g. language adapters, MAD-X); ``causal-lm`` also takes plain ``text`` rows.
      dtype: compute dtype. ``bfloat16`` keeps float32 parameters, softmax, norms and loss;
        ``auto`` (default) is ``bfloat16`` on GPU/TPU (their matmul units are bfloat16 units) and
        ``float32`` on CPU (XLA:CPU has no faster bfloat16 GEMM).
      param_dtype: storage dtype of the parameters.
    """

    name_or_path: str
    tokenizer: str | None = None
    task: Task = "sequence-classification"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    param_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self):
        if not self.name_or_path:
            raise ValueError("name_or_path must name a local model folder or a Hub id")

    def compute_dtype(self, backend: str | None = None) -> str:
        """The compute dtype on ``backend`` (default: JAX's), with ``auto`` resolved."""
        if self.dtype != "auto":
            return self.dtype
        import jax  # the config module stays importable without initialising a backend

        return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


@dataclasses.dataclass
class PeftSection:
    """Parameter-efficient method and its options (``lora`` or ``adapters`` sub-section).

    Attributes:
      method: ``lora``, ``adapters``, ``lora+adapters`` (both) or ``none`` (full fine-tuning).
      lora_languages: per-language LoRA: one LoRA adapter (``lora``'s options) per language,
        named after it, each example routed to its language's adapter in the same batches; a
        language without one runs the base model. Written as one PEFT folder per language,
        ``RUN_DIR/language_adapters/<language>/``. ``None``: one shared LoRA adapter.
    """

    method: Literal["lora", "adapters", "lora+adapters", "none"] = "lora"
    lora_languages: list[str] | None = None
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    adapters: AdapterConfig = dataclasses.field(default_factory=AdapterConfig)

    def unused_options(self) -> list[str]:
        """Options of the method not chosen, set away from their defaults, as dotted keys
        (``peft.adapters.reduction_factor`` with ``method: lora``): the run warns about each."""
        unused = []
        for name, config in (("lora", LoraConfig()), ("adapters", AdapterConfig())):
            if name not in self.method.split("+"):
                unused += [
                    f"peft.{name}.{f.name}"
                    for f in dataclasses.fields(config)
                    if getattr(getattr(self, name), f.name) != getattr(config, f.name)
                ]
        return unused

    def __post_init__(self):
        if self.lora_languages is not None:
            if "lora" not in self.method:
                raise ValueError("lora_languages needs peft.method lora (or lora+adapters)")
            if not self.lora_languages or len(set(self.lora_languages)) != len(self.lora_languages):
                raise ValueError("lora_languages must be a non-empty list of distinct languages")


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and cadence.

    Attributes:
      steps: optimizer steps in the run.
      batch_size: *global* batch size in examples (summed over hosts and devices).
      grad_accum_steps: micro-batches per step; ``batch_size`` must divide by it.
      learning_rate: peak learning rate.
      schedule: decay after warm-up.
      warmup_steps: linear warm-up from 0 to ``learning_rate``.
      optimizer: adamw (default), sgd (momentum 0.9) or adafactor.
      weight_decay: decoupled weight decay, applied to matrices only (not biases or norms).
      max_grad_norm: global-norm clipping threshold; null disables clipping.
      log_every: steps between metric log lines.
      eval_every: steps between per-language evaluations; 0 evaluates only at the end.
      checkpoint_every: steps between checkpoints; 0 saves only at the end.
      keep_checkpoints: how many recent checkpoints to keep.
      best_metric: eval metric whose best checkpoint is also kept: a metric of the task's report
        (``macro_f1``, ``accuracy``; ``f1`` for token classification; ``perplexity``) or its
        mean / gap / worst over languages (``macro_f1_mean``; ``mean_f1`` is read the same).
      remat: activation rematerialisation per layer (a ``jax.checkpoint`` policy): ``none`` keeps
        every activation for the backward pass, ``dots-saveable`` keeps the matmul outputs and
        recomputes the element-wise work, ``full`` keeps only each layer's input (least memory,
        about one more forward pass of compute). For long sequences / big models on accelerators.
      rng_impl: JAX PRNG implementation of the dropout keys (``jax.random.key(seed, impl=...)``).
        ``threefry4x32`` draws dropout masks about 4x faster than JAX's default ``threefry2x32``
        on CPU (``docs/benchmarks.md``) and is, like it, counter-based and splittable; ``rbg`` /
        ``unsafe_rbg`` are JAX's experimental XLA-RBG generators. (JAX's ``philox*`` keys are left
        out: their ``fold_in`` fails to compile with sharded outputs in jax 0.10.2.) Changing it
        changes the dropout masks, so a resumed run must keep the value it started with.
    """

    steps: int = 1000
    batch_size: int = 32
    grad_accum_steps: int = 1
    learning_rate: float = 1e-3
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = 0
    optimizer: Literal["adamw", "sgd", "adafactor"] = "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    best_metric: str | None = None
    rng_impl: Literal["threefry4x32", "threefry2x32", "rbg", "unsafe_rbg"] = "threefry4x32"
    remat: Literal["none", "dots-saveable", "full"] = "none"

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum_steps", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by grad_accum_steps "
                f"({self.grad_accum_steps})"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be > 0 or null")


@dataclasses.dataclass
class EvalConfig:
    """Per-language evaluation.

    Attributes:
      split: split evaluated during training (``eval_every``) and for the final report.
      final_splits: splits evaluated at the end of training, each written to ``eval/<split>/``.
      batch_size: global evaluation batch size (the last batch is padded; padding never counts).
      metric: headline metric of the reports and plots (``macro_f1``, ``accuracy``, ``f1``,
        ``perplexity`` ... as the task's report has it); default the task's primary metric.
      source_language: language the cross-lingual transfer gap is measured from (optional).
    """

    split: str = "validation"
    final_splits: list[str] = dataclasses.field(default_factory=lambda: ["test"])
    batch_size: int = 64
    metric: str | None = None
    source_language: str | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass
class MeshConfig:
    """Device mesh; -1 means "all remaining devices". ``data * fsdp * tensor`` = device count.

    Attributes:
      data: data-parallel replicas.
      fsdp: parameter/optimizer-state sharding axis (also splits the batch).
      tensor: tensor (model) parallel axis.
      distributed: call ``jax.distributed.initialize`` (null: only when the environment says so).
      coordinator_address: ``host:port`` of process 0 for multi-host runs.
      num_processes: number of processes in a multi-host run.
      process_id: this process's id in a multi-host run.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    distributed: bool | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
            raise ValueError(
                f"mesh axes must be positive with at most one -1, got data={self.data} "
                f"fsdp={self.fsdp} tensor={self.tensor}"
            )


@dataclasses.dataclass
class RunConfig:
    """The whole run: one section per concern."""

    model: ModelSection
    run: RunSection = dataclasses.field(default_factory=RunSection)
    peft: PeftSection = dataclasses.field(default_factory=PeftSection)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def __post_init__(self):
        # Metric names are checked against the task's report now, not after training.
        from langtune_jax.eval.metrics import canonical_metric

        for key, section, name, statistics in (
            ("eval.metric", self.eval, "metric", False),
            ("train.best_metric", self.train, "best_metric", True),
        ):
            value = getattr(section, name)
            if value is None:
                continue
            try:
                setattr(
                    section, name, canonical_metric(value, self.model.task, statistics=statistics)
                )
            except ValueError as err:
                raise ConfigError(f"config key '{key}': {err}") from None
        if self.train.best_metric and not self.train.eval_every:
            raise ConfigError(
                "config key 'train.best_metric': the best checkpoint is chosen at evaluations, "
                "but train.eval_every is 0; set train.eval_every (and train.checkpoint_every to "
                "the same cadence) or drop train.best_metric"
            )
        dynamic = self.sampling.strategy == "dynamic" and self.sampling.dynamic.signal == "train"
        if dynamic and not self.losses_have_one_language():
            raise ConfigError(
                "config key 'sampling.dynamic.signal': train-loss weights need one language per "
                f"loss, but packed {self.model.task} rows mix languages; set data.packing: false "
                "or sampling.dynamic.signal: eval"
            )
        if self.data.packing and (routed := self._per_language_peft_key()):
            # Routing picks one adapter per row, and a packed row holds several examples that
            # may be of different languages: refuse rather than route them by the first one.
            raise ConfigError(
                f"config key 'data.packing': with per-language adapters ({routed}) every "
                "example of a packed row would go through its first example's language "
                "adapter; set data.packing: false"
            )
        self._normalize_languages()

    def losses_have_one_language(self) -> bool:
        """Whether each train loss belongs to one language (``loss/<lang>``, train-signal dynamic
        weights): not for packed LM or token-classification rows, where a row's tokens come from
        examples of several languages; packed sequence classification has a loss per segment."""
        return not self.data.packing or self.model.task == "sequence-classification"

    def _per_language_peft_key(self) -> str | None:
        """The config key that gives each language its own adapter, if one does."""
        if self.peft.method in ("adapters", "lora+adapters"):
            if self.peft.adapters.language_adapters:
                return "peft.adapters.language_adapters"
            if self.peft.adapters.languages is not None:
                return "peft.adapters.languages"
        if self.peft.method in ("lora", "lora+adapters") and self.peft.lora_languages:
            return "peft.lora_languages"
        return None

    def _normalize_languages(self) -> None:
        """Languages the config names are read in BCP-47 case, as the data's are."""
        from langtune_jax.data.readers import normalize_language

        if self.eval.source_language is not None:
            self.eval.source_language = normalize_language(self.eval.source_language)
        for name in ("weights", "multipliers"):
            table = getattr(self.sampling, name)
            normalized = {normalize_language(k): v for k, v in table.items()}
            if len(normalized) != len(table):
                raise ConfigError(
                    f"config key 'sampling.{name}': {', '.join(map(repr, table))} name the same "
                    "language twice (codes are case-insensitive: EN = en)"
                )
            setattr(self.sampling, name, normalized)

    def unused_options(self) -> list[str]:
        """Dotted keys set away from their defaults that the chosen ``peft.method`` and
        ``sampling.strategy`` do not read (the options of the other method, ``sampling.alpha``
        with strategy inverse, ...). Legal, since one config may serve several runs through
        ``--set``, but never silent: the run warns about them before it starts."""
        return self.peft.unused_options() + self.sampling.unused_options()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe)."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short stable hash of the resolved config (runs with equal hashes are comparable)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides and validate everything.

    Relative input paths (``model.name_or_path``, ``model.tokenizer``, ``data.sources[].path``)
    written in the file resolve against the file's folder, so a config works from any current
    directory; those given in ``overrides`` resolve against the current directory, like any
    command-line path. ``run.output_dir`` stays relative to the current directory.

    Raises:
      ConfigError: a missing or unreadable file, invalid YAML, unknown key, wrong type or bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        resolve_paths(data, path.resolve().parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    apply_overrides(data, list(overrides or []))
    # Paths from the file are absolute by now; this makes those from --set absolute too.
    resolve_paths(data, Path.cwd())
    try:
        return from_dict(RunConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (the run folder's ``config.yaml``)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
