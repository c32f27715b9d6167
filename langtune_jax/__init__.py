"""langtune_jax: balanced multilingual parameter-efficient fine-tuning in JAX + Flax NNX."""

__version__ = "0.1.0"
