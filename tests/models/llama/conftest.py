"""Fixtures of the Llama-family tests: each architecture saved by transformers, ours loaded from it,
and a tiny Qwen3-style model built by us."""

from __future__ import annotations

import pytest
import torch
import transformers
from flax import nnx

from langtune_jax.models import from_pretrained, llama
from tests.models.llama.helpers import (
    BASE,
    CASES,
)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, HF causal LM, its folder) for one architecture."""
    name = request.param
    torch.manual_seed(0)
    hf_config = transformers.AutoConfig.for_model(**BASE, **CASES[name])
    hf_config._attn_implementation = "eager"
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    folder = tmp_path_factory.mktemp(name)
    hf_model.save_pretrained(folder)
    return name, hf_model, folder


@pytest.fixture(scope="module")
def ours(case):
    """Our causal LM loaded from the case's transformers checkpoint."""
    return from_pretrained(case[2], "causal-lm")


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised Qwen3-style causal LM built by us (no transformers involved)."""
    cfg = llama.LlamaConfig.from_hf(dict(BASE, **CASES["qwen3"]))
    return llama.LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
