"""Data: sources, language weighting strategies, the stateless mixture and the batch pipelines."""

from langtune_jax.data.features import (
    IGNORE,
    Tokenized,
    choose_bucket,
    collate,
    pack,
    tokenize,
    unpack_segments,
)
from langtune_jax.data.mixture import LanguageMixture, apportion, permute
from langtune_jax.data.pipeline import DataPipeline, eval_batches, train_batches
from langtune_jax.data.sampling import (
    STRATEGIES,
    PlanRow,
    SamplingConfig,
    SamplingPlan,
    build_plan,
    language_weights,
)
from langtune_jax.data.sources import (
    DataConfig,
    DataError,
    MissingSplitError,
    SourceConfig,
    SplitData,
    infer_labels,
    load_split,
)

__all__ = [
    "IGNORE",
    "STRATEGIES",
    "DataConfig",
    "DataError",
    "DataPipeline",
    "LanguageMixture",
    "MissingSplitError",
    "PlanRow",
    "SamplingConfig",
    "SamplingPlan",
    "SourceConfig",
    "SplitData",
    "Tokenized",
    "apportion",
    "build_plan",
    "choose_bucket",
    "collate",
    "eval_batches",
    "infer_labels",
    "language_weights",
    "load_split",
    "pack",
    "permute",
    "tokenize",
    "train_batches",
    "unpack_segments",
]
