"""Round trips with the real Hugging Face ``peft`` library (torch, CPU) on tiny random models.

(a) an adapter trained in JAX, exported, loaded by ``PeftModel.from_pretrained``: same logits;
(b) an adapter the ``peft`` library created (non-zero B) imported into JAX: same logits;
(c) the merged export loaded by plain transformers: same logits.
"""

import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from peft import LoraConfig as TorchLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.numpy import load_file
from transformers import BertConfig as HFBertConfig
from transformers import BertForSequenceClassification as HFBert
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlama
from transformers import XLMRobertaConfig as HFXLMRConfig
from transformers import XLMRobertaForSequenceClassification as HFXLMR

from langtune_jax.models.hub import from_pretrained
from langtune_jax.peft import (
    LoraConfig,
    apply_lora,
    export_peft,
    get_lora_config,
    import_peft,
    lora_layers,
    merge_and_save,
    trainable_filter,
)

SMALL = dict(vocab_size=100, hidden_size=32, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)  # fmt: skip
IDS = np.random.RandomState(0).randint(1, 100, (3, 10))
MASK = (np.arange(10)[None] < np.array([[10], [7], [4]])).astype(np.int64)
TASK = {"SEQ_CLS": "sequence-classification", "CAUSAL_LM": "causal-lm"}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Tiny random HF checkpoints: BERT (sequence classification), Llama (causal LM), XLM-R."""
    torch.manual_seed(0)
    out = {}
    for name, cls, cfg in [
        ("bert", HFBert, HFBertConfig(num_hidden_layers=2, num_labels=3, **SMALL)),
        (
            "llama",
            HFLlama,
            HFLlamaConfig(
                num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=False, **SMALL
            ),
        ),  # fmt: skip
        ("xlmr", HFXLMR, HFXLMRConfig(num_hidden_layers=2, num_labels=3, **SMALL)),
    ]:
        folder = tmp_path_factory.mktemp(name)
        cls(cfg).save_pretrained(folder)
        out[name] = (cls, folder)
    return out


def jax_logits(model, ids, mask):  # eager: cheaper than one compile per model here
    return model(ids, attention_mask=mask).logits


def _valid(logits):
    # Token logits at padding positions are arbitrary (no query attends from there): compare the
    # real tokens only.
    return logits[MASK.astype(bool)] if logits.ndim == 3 else logits


def ours(model):
    return _valid(np.asarray(jax_logits(model, jnp.asarray(IDS), jnp.asarray(MASK))))


def theirs(torch_model):
    with torch.no_grad():
        out = torch_model(torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    return _valid(out)


def train(model, task_type, steps=2):
    filt = trainable_filter(model)
    opt = nnx.Optimizer(model, optax.adam(2e-2), wrt=filt)
    ids, mask = jnp.asarray(IDS), jnp.asarray(MASK)

    def loss_fn(model):
        logits = model(ids, attention_mask=mask).logits
        if task_type == "SEQ_CLS":
            return optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.array([0, 2, 1])
            ).mean()
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    @nnx.jit
    def step(model, opt):
        _, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, filt))(model)
        opt.update(model, grads)

    for _ in range(steps):
        step(model, opt)


CASES = {
    "bert": dict(task_type="SEQ_CLS", r=4, lora_alpha=16, bias="lora_only",
                 target_modules=["query", "value", "dense"], rank_pattern={"output.dense": 2}),
    "llama": dict(task_type="CAUSAL_LM", r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                  lora_dropout=0.1, bias="none"),  # the seed configuration
}  # fmt: skip


@pytest.mark.parametrize("arch", ["bert", pytest.param("llama", marks=pytest.mark.slow)])
def test_jax_trained_adapter_loads_in_peft_and_merged_in_transformers(arch, bases, tmp_path):
    cls, base = bases[arch]
    kwargs = CASES[arch]
    model = from_pretrained(base, TASK[kwargs["task_type"]])
    base_logits = ours(model)
    apply_lora(model, LoraConfig(**kwargs))
    model.train()
    train(model, kwargs["task_type"])
    model.eval()
    adapted = ours(model)
    assert np.abs(adapted - base_logits).max() > 1e-3  # training really changed the model

    export_peft(model, tmp_path / "adapter", base_model_name_or_path=str(base))
    # Same file layout as the peft library writes for this configuration.
    torch.manual_seed(0)
    reference = get_peft_model(cls.from_pretrained(base), TorchLoraConfig(**kwargs))
    reference.save_pretrained(tmp_path / "reference")
    mine = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    ref = load_file(tmp_path / "reference" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in ref.items()}
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(base)

    # (a) PEFT + PyTorch on the same base weights gives our logits.
    peft_model = PeftModel.from_pretrained(cls.from_pretrained(base), tmp_path / "adapter").eval()
    np.testing.assert_allclose(theirs(peft_model), adapted, atol=1e-4)

    # (c) the merged checkpoint is a plain transformers model with the same logits.
    merge_and_save(model, tmp_path / "merged")
    merged = cls.from_pretrained(tmp_path / "merged").eval()
    np.testing.assert_allclose(theirs(merged), adapted, atol=1e-4)
    assert lora_layers(model) and all(not m.merged_adapters for m in lora_layers(model).values())
    np.testing.assert_allclose(ours(model), adapted, atol=1e-6)  # model left as it was


PEFT_MADE = {
    "bert": dict(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "key"],
                 use_rslora=True, alpha_pattern={"key": 4}),
    "llama": dict(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "down_proj"],
                  layers_to_transform=[1], layers_pattern="layers"),
    "xlmr": dict(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules="all-linear", bias="all"),
}  # fmt: skip


@pytest.mark.parametrize("arch", ["bert", "llama", "xlmr"])
def test_peft_created_adapter_imports(arch, bases, tmp_path):
    cls, base = bases[arch]
    kwargs = PEFT_MADE[arch]
    torch.manual_seed(1)
    peft_model = get_peft_model(
        cls.from_pretrained(base), TorchLoraConfig(init_lora_weights=False, **kwargs)
    )
    with torch.no_grad():  # move the fully trained parts (heads, biases) away from the base too
        for name, p in peft_model.named_parameters():
            if p.requires_grad and "lora_" not in name:
                p.add_(0.1 * torch.randn_like(p))
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = theirs(peft_model.eval())

    model = from_pretrained(base, TASK[kwargs["task_type"]])
    base_logits = ours(model)
    import_peft(model, tmp_path / "adapter")
    assert np.abs(expected - base_logits).max() > 1e-3
    np.testing.assert_allclose(ours(model), expected, atol=1e-4)
    assert get_lora_config(model).r == kwargs["r"]


def test_import_errors_are_readable(bases, tmp_path):
    cls, base = bases["llama"]
    peft_model = get_peft_model(
        cls.from_pretrained(base), TorchLoraConfig(r=2, target_modules=["q_proj"])
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    model = from_pretrained(bases["bert"][1], "sequence-classification")
    with pytest.raises(ValueError, match="target_modules=\\['q_proj'\\] matched no module"):
        import_peft(model, tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        import_peft(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_dora=True"):
        import_peft(model, tmp_path / "adapter")
