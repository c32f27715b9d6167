"""Target matching: PEFT's rules, checked against the real ``peft`` on the same architectures."""

import jax
import pytest
import torch
from flax import nnx
from peft import LoraConfig as TorchLoraConfig
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import BertConfig as HFBertConfig
from transformers import BertForSequenceClassification as HFBert
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlama
from transformers import XLMRobertaConfig as HFXLMRConfig
from transformers import XLMRobertaForSequenceClassification as HFXLMR

from langtune_jax.models import bert, llama
from langtune_jax.peft import LoraConfig, apply_lora, find_targets, lora_layers
from langtune_jax.peft.targets import layer_index

SMALL = dict(vocab_size=100, hidden_size=32, num_attention_heads=4, intermediate_size=64)


class MLP(nnx.Module):
    """A user-written model: no config, no head_modules."""

    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(8, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs)])
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.lm_head = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.lm_head(self.norm(x))


def _hf_models():
    bert_cfg = HFBertConfig(num_hidden_layers=3, num_labels=3, **SMALL)
    xlmr_cfg = HFXLMRConfig(num_hidden_layers=2, num_labels=3, **SMALL)
    llama_cfg = HFLlamaConfig(
        num_hidden_layers=3, num_key_value_heads=2, tie_word_embeddings=False, **SMALL
    )
    return [
        ("SEQ_CLS", HFBert, bert_cfg, bert, "sequence-classification"),
        ("SEQ_CLS", HFXLMR, xlmr_cfg, bert, "sequence-classification"),
        ("CAUSAL_LM", HFLlama, llama_cfg, llama, "causal-lm"),
    ]


CASES = [
    dict(),  # architecture default (query/value; q_proj/v_proj)
    dict(target_modules="all-linear"),
    dict(target_modules=["dense"], exclude_modules=["output.dense"]),
    dict(target_modules=r".*\.(1|2)\..*(query|key|gate_proj|o_proj)"),
    dict(target_modules=["query", "v_proj", "up_proj"], layers_to_transform=[0, 2]),
    dict(
        target_modules=["value", "k_proj"],
        layers_to_transform=1,
        layers_pattern=["layer", "layers"],
    ),
    dict(target_modules="all-linear", exclude_modules=r".*(intermediate|mlp).*"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_layers_as_peft(case):
    torch.manual_seed(0)
    for task_type, hf_cls, hf_cfg, module, task in _hf_models():
        kwargs = CASES[case]
        if kwargs.get("target_modules") == ["dense"] and module is llama:
            continue  # no "dense" layer in Llama: covered by the error test below
        peft_model = get_peft_model(hf_cls(hf_cfg), TorchLoraConfig(task_type=task_type, **kwargs))
        expected = sorted(
            n.removeprefix("base_model.model.")
            for n, m in peft_model.named_modules()
            if isinstance(m, LoraLayer)
        )
        ours = module.from_hf_config(hf_cfg.to_dict(), task, rngs=nnx.Rngs(0), num_labels=3)
        apply_lora(ours, LoraConfig(task_type=task_type, **kwargs))
        assert sorted(lora_layers(ours)) == expected, (hf_cls.__name__, kwargs)


def test_user_model_all_linear_skips_head_and_norm():
    model = MLP(nnx.Rngs(0))
    assert find_targets(model, "all-linear") == ["layers.0", "layers.1"]
    assert find_targets(model, ["0"]) == ["layers.0"]
    assert find_targets(model, r"layers\.\d") == ["layers.0", "layers.1"]
    # layers_to_transform reads the index after a root-level "layers" list as well.
    assert find_targets(model, ["0", "1"], layers_to_transform=[1], layers_pattern="layers") == [
        "layers.1"
    ]


def test_head_modules_attribute_wins():
    model = MLP(nnx.Rngs(0))
    model.head_modules = ("layers.1",)
    assert find_targets(model, "all-linear") == ["layers.0", "lm_head"]


def test_no_match_lists_existing_layers():
    with pytest.raises(ValueError) as err:
        find_targets(MLP(nnx.Rngs(0)), ["q_proj", "v_proj"], what="LoraConfig.target_modules")
    msg = str(err.value)
    assert "LoraConfig.target_modules=['q_proj', 'v_proj'] matched no module of MLP" in msg
    assert "layers.0" in msg and "lm_head" in msg


def test_non_linear_match_is_an_error():
    with pytest.raises(ValueError, match="'norm', a LayerNorm; only Linear"):
        find_targets(MLP(nnx.Rngs(0)), ["norm"])


def test_modules_inside_a_wrapper_are_not_candidates():
    model = MLP(nnx.Rngs(0))
    apply_lora(model, LoraConfig(target_modules=r"layers\.\d|lm_head"))
    assert sorted(lora_layers(model)) == ["layers.0", "layers.1", "lm_head"]
    # A second adapter wraps the same layers again, not their base_layer.
    assert find_targets(model, r".*(\d|head)", module_types=(nnx.Linear, type(model.lm_head))) == [
        "layers.0",
        "layers.1",
        "lm_head",
    ]


@pytest.mark.parametrize(
    "path,pattern,expected",
    [
        ("bert.encoder.layer.3.attention.self.query", None, 3),
        ("model.layers.12.mlp.experts.4.up", None, 12),
        ("layers.1", None, 1),
        ("layers.1.fc", None, 1),
        ("model.layers.2.self_attn.q_proj", "layers", 2),
        ("model.layers.2.self_attn.q_proj", ["h", "layers"], 2),
        ("model.layers.2.self_attn.q_proj", "blocks", None),
    ],
)
def test_layer_index(path, pattern, expected):
    assert layer_index(path, pattern) == expected
