"""``LoraConfig`` (Hugging Face PEFT's LoRA options) and the adapters recorded on a model.

``apply_lora`` (:mod:`langtune_jax.peft.lora`) keeps each adapter's resolved config on the model as
``model._lora_configs = ((adapter_name, config_json), ...)`` in the order the adapters were added;
:func:`adapter_names_of` and :func:`get_lora_config` read that record back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Literal

from flax import nnx

TaskType = Literal[
    "SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM", "SEQ_2_SEQ_LM", "QUESTION_ANS", "FEATURE_EXTRACTION"
]
_TASK_TYPES = (
    "SEQ_CLS",
    "TOKEN_CLS",
    "CAUSAL_LM",
    "SEQ_2_SEQ_LM",
    "QUESTION_ANS",
    "FEATURE_EXTRACTION",
)
#: PEFT's ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`` for the families we implement.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
}
#: Task heads PEFT adds to ``modules_to_save`` for ``SEQ_CLS`` / ``TOKEN_CLS`` when the model does
#: not name its heads (``head_modules``).
PEFT_CLS_HEADS = ["classifier", "score"]
_INIT_KINDS = (True, False, "gaussian", "pissa")


@dataclasses.dataclass
class LoraConfig:
    """Hugging Face PEFT's ``LoraConfig`` (the options we implement), same names and defaults.

    Attributes:
      r: rank of the update.
      lora_alpha: numerator of the scale: ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``).
      lora_dropout: dropout on the LoRA branch's input (training only).
      target_modules: list of module names matched by path suffix, a string that must fully match
        the dotted path (regex), or ``"all-linear"`` (every linear layer but the output head).
        ``None``: PEFT's default for the architecture (BERT/XLM-R ``query``, ``value``; Llama
        family ``q_proj``, ``v_proj``).
      exclude_modules: names (suffix) or a full-match regex of modules never wrapped.
      layers_to_transform: only wrap these layer indices (with a list ``target_modules``).
      layers_pattern: name(s) of the layer list that ``layers_to_transform`` indexes
        (``"layer"`` for BERT, ``"layers"`` for Llama); ``None`` reads the first index in the path.
      rank_pattern: ``{regex: r}`` overriding ``r`` for modules whose path ends with a match.
      alpha_pattern: ``{regex: alpha}`` overriding ``lora_alpha`` likewise.
      bias: ``"none"``, ``"all"`` (every bias trains) or ``"lora_only"`` (biases of wrapped layers).
      modules_to_save: modules trained fully and saved with the adapter (e.g. a new classifier).
      use_rslora: rank-stabilised scale ``lora_alpha / sqrt(r)``.
      init_lora_weights: ``True`` (A kaiming-uniform, B zero: identity at init), ``"gaussian"``
        (A ~ N(0, 1/r), B zero), ``False`` (both random: *not* the identity; for tests), or
        ``"pissa"`` (A, B from the top-r SVD of the kernel, which keeps the residual).
      task_type: ``SEQ_CLS`` / ``TOKEN_CLS`` add the task head to ``modules_to_save`` (as PEFT);
        ``CAUSAL_LM`` etc. are recorded for the exported ``adapter_config.json``.
    """

    r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, int] = dataclasses.field(default_factory=dict)
    alpha_pattern: dict[str, int] = dataclasses.field(default_factory=dict)
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    init_lora_weights: bool | Literal["gaussian", "pissa"] = True
    task_type: TaskType | None = None

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r={self.r!r}: must be a positive integer (e.g. 8)")
        if self.lora_alpha <= 0:
            raise ValueError(f"LoraConfig.lora_alpha={self.lora_alpha!r}: must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout={self.lora_dropout!r}: must be in [0, 1)")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(
                f"LoraConfig.bias={self.bias!r}: expected 'none', 'all' or 'lora_only'"
            )
        if self.init_lora_weights not in _INIT_KINDS or (
            isinstance(self.init_lora_weights, int) and not isinstance(self.init_lora_weights, bool)
        ):
            raise ValueError(
                f"LoraConfig.init_lora_weights={self.init_lora_weights!r}: expected true, false, "
                "'gaussian' or 'pissa'"
            )
        if self.task_type is not None and self.task_type not in _TASK_TYPES:
            raise ValueError(
                f"LoraConfig.task_type={self.task_type!r}: expected one of {_TASK_TYPES}"
            )
        for name in ("rank_pattern", "alpha_pattern"):
            for key, value in getattr(self, name).items():
                if value <= 0:
                    raise ValueError(f"LoraConfig.{name}[{key!r}]={value!r}: must be positive")
        if isinstance(self.target_modules, list | tuple):
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ValueError("LoraConfig.target_modules=[]: name at least one module")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError(
                "LoraConfig.layers_pattern is set but layers_to_transform is not: give the layer "
                "indices to wrap as well (PEFT's rule)"
            )
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError(
                "LoraConfig.layers_to_transform cannot be used when target_modules is a regex "
                "string (PEFT's rule): put the layer numbers into the regex instead"
            )

    def rank_and_alpha(self, path: str) -> tuple[int, int]:
        """``(r, lora_alpha)`` for the module at ``path`` after ``rank_pattern``/``alpha_pattern``.

        PEFT's rule (``get_pattern_key``): the first pattern key ``k`` for which
        ``re.match(rf"(.*\\.)?({k})$", path)`` succeeds.
        """
        return (
            _pattern_value(self.rank_pattern, path, self.r),
            _pattern_value(self.alpha_pattern, path, self.lora_alpha),
        )

    def scaling(self, path: str) -> float:
        """The LoRA scale of the module at ``path``: ``alpha / r`` or ``alpha / sqrt(r)`` (rsLoRA)."""
        r, alpha = self.rank_and_alpha(path)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoraConfig:
        return cls(**json.loads(text))


def _pattern_value(patterns: dict[str, int], path: str, default: int) -> int:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


# --------------------------------------------------------------------------------------------------
# Adapters recorded on a model


def adapter_names_of(model: nnx.Module) -> tuple[str, ...]:
    """Names of the LoRA adapters on ``model``, in the order they were added."""
    return tuple(name for name, _ in getattr(model, "_lora_configs", ()))


def get_lora_config(model: nnx.Module, adapter_name: str = "default") -> LoraConfig:
    """The resolved ``LoraConfig`` adapter ``adapter_name`` was created with (targets filled in)."""
    for name, text in getattr(model, "_lora_configs", ()):
        if name == adapter_name:
            return LoraConfig.from_json(text)
    raise ValueError(
        f"no LoRA adapter named {adapter_name!r}; this model has {list(adapter_names_of(model))}"
    )
