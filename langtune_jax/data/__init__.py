"""Data: sources, language weighting strategies, the stateless mixture and the batch pipelines."""

from langtune_jax.data.config import DataConfig, SourceConfig
from langtune_jax.data.errors import DataError, MissingSplitError
from langtune_jax.data.features import Tokenized, choose_bucket, collate, tokenize
from langtune_jax.data.mixture import LanguageMixture, apportion, permute
from langtune_jax.data.packing import pack, unpack_segments
from langtune_jax.data.pipeline import DataPipeline, eval_batches, train_batches
from langtune_jax.data.plan import PlanRow, SamplingPlan, build_plan, dynamic_lines
from langtune_jax.data.sampling import (
    STATIC_STRATEGIES,
    STRATEGIES,
    DynamicConfig,
    SamplingConfig,
    language_weights,
)
from langtune_jax.data.sources import SplitData, infer_labels, load_split
from langtune_jax.data.weight_record import WeightRecord

__all__ = [
    "STATIC_STRATEGIES",
    "STRATEGIES",
    "DataConfig",
    "DataError",
    "DataPipeline",
    "DynamicConfig",
    "LanguageMixture",
    "MissingSplitError",
    "PlanRow",
    "SamplingConfig",
    "SamplingPlan",
    "SourceConfig",
    "SplitData",
    "Tokenized",
    "WeightRecord",
    "apportion",
    "build_plan",
    "choose_bucket",
    "collate",
    "dynamic_lines",
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
