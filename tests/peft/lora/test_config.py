"""LoraConfig: YAML, PEFT's defaults and task types, errors that name the field."""

import pytest
import yaml
from flax import nnx
from peft import LoraConfig as TorchLoraConfig

from langtune_jax.peft import (
    LoraConfig,
)
from langtune_jax.peft.lora import resolve_config
from tests.peft.lora.helpers import (
    MLP,
    tiny_bert,
)


def test_seed_yaml_config_constructs():
    text = """
    r: 8
    lora_alpha: 32
    target_modules: [q_proj, v_proj]
    lora_dropout: 0.1
    bias: none
    task_type: CAUSAL_LM
    """
    cfg = LoraConfig(**yaml.safe_load(text))
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.bias) == (8, 32, 0.1, "none")
    assert cfg.target_modules == ["q_proj", "v_proj"] and cfg.task_type == "CAUSAL_LM"
    assert cfg.scaling("model.layers.0.self_attn.q_proj") == 4.0


def test_task_type_adds_the_head_to_modules_to_save():
    mlp = MLP(nnx.Rngs(0))
    resolved = resolve_config(mlp, LoraConfig(task_type="TOKEN_CLS", target_modules=["0"]))
    assert resolved.modules_to_save is None  # no head_modules, no "classifier"/"score" module
    mlp.head_modules = ("head",)
    resolved = resolve_config(mlp, LoraConfig(task_type="TOKEN_CLS", target_modules=["0"]))
    assert resolved.modules_to_save == ["head"]
    assert resolve_config(tiny_bert(), LoraConfig(task_type="SEQ_CLS")).modules_to_save == [
        "classifier"
    ]
    assert resolve_config(tiny_bert(), LoraConfig()).target_modules == ["query", "value"]


def test_defaults_match_peft():
    ours, theirs = LoraConfig(), TorchLoraConfig()
    for field in ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "init_lora_weights"):
        assert getattr(ours, field) == getattr(theirs, field), field


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(r=0), "r="),
        (dict(lora_dropout=1.0), "lora_dropout"),
        (dict(bias="some"), "bias"),
        (dict(init_lora_weights="olora"), "init_lora_weights"),
        (dict(task_type="CLS"), "task_type"),
        (dict(layers_pattern="layer"), "layers_pattern"),
        (dict(target_modules="q.*", layers_to_transform=[0]), "layers_to_transform"),
        (dict(rank_pattern={"q": 0}), "rank_pattern"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LoraConfig(**kwargs)
