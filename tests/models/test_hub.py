"""Loading and saving Hugging Face folders: head surgery, legacy names, shards, meshes, errors.

The Hugging Face Hub is never contacted: ``resolve`` is exercised with a stand-in
``snapshot_download``.
"""

import json
import logging
import shutil

import huggingface_hub
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from langtune_jax.models import (
    DEFAULT_RULES,
    from_pretrained,
    hf_key,
    hub_files,
    load_tokenizer,
    logical_to_spec,
    module_at,
    save_pretrained,
)

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=24)  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny transformers checkpoints, built once: {name: (torch model, folder)}."""
    out = {}
    specs = {
        "bert-mlm": transformers.BertForMaskedLM(transformers.BertConfig(**TINY)),
        "bert-base": transformers.BertModel(transformers.BertConfig(**TINY)),
        "xlmr-mlm": transformers.XLMRobertaForMaskedLM(transformers.XLMRobertaConfig(**TINY)),
    }
    for name, model in specs.items():
        folder = tmp_path_factory.mktemp(name)
        model.eval().save_pretrained(folder)
        out[name] = (model, folder)
    return out


def _copy(folders, name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(folders[name][1], dst)
    return dst


def _weights(folder):
    return load_file(folder / "model.safetensors")


def _torch_weight(model, key):
    return model.state_dict()[key].numpy()


# ----------------------------------------------------------------------------- head surgery


def test_mlm_checkpoint_gives_classifier_with_fresh_head(folders, caplog):
    ref, folder = folders["bert-mlm"]
    with caplog.at_level(logging.INFO, logger="langtune_jax.models.hub"):
        model = from_pretrained(folder, "sequence-classification", num_labels=4)
    log = caplog.text
    assert "newly initialised" in log and "classifier.weight" in log and "bert.pooler.dense" in log
    assert "ignored" in log and "cls.predictions.bias" in log
    assert model.classifier.kernel[...].shape == (32, 4)
    assert model.config.num_labels == 4
    np.testing.assert_array_equal(
        model.bert.encoder.layer[1].attention.self.query.kernel[...],
        _torch_weight(ref, "bert.encoder.layer.1.attention.self.query.weight").T,
    )
    # Fresh heads: HF-style init (normal(0.02), zero bias), reproducible from the seed.
    kernel = np.asarray(model.classifier.kernel[...])
    assert 0.01 < kernel.std() < 0.03 and not np.asarray(model.classifier.bias[...]).any()
    again = from_pretrained(folder, "sequence-classification", num_labels=4)
    other = from_pretrained(folder, "sequence-classification", num_labels=4, seed=1)
    np.testing.assert_array_equal(again.classifier.kernel[...], kernel)
    assert not np.allclose(other.classifier.kernel[...], kernel)


def test_base_model_prefix_is_added_or_stripped(folders):
    ref, folder = folders["bert-base"]  # keys without "bert."
    model = from_pretrained(folder, "token-classification")
    np.testing.assert_array_equal(
        model.bert.embeddings.word_embeddings.embedding[...],
        _torch_weight(ref, "embeddings.word_embeddings.weight"),
    )
    ref_mlm, folder_mlm = folders["xlmr-mlm"]  # keys with "roberta."; bare model strips them
    bare = from_pretrained(folder_mlm)
    np.testing.assert_array_equal(
        bare.encoder.layer[0].output.dense.kernel[...],
        _torch_weight(ref_mlm, "roberta.encoder.layer.0.output.dense.weight").T,
    )


def test_legacy_gamma_beta_layer_norm_names(folders, tmp_path):
    ref, _ = folders["bert-mlm"]
    folder = _copy(folders, "bert-mlm", tmp_path)
    tensors = _weights(folder)
    renamed = {}
    for k, v in tensors.items():
        if "LayerNorm" in k:
            k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
        renamed[k] = v
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    model = from_pretrained(folder, "masked-lm")
    np.testing.assert_array_equal(
        model.bert.encoder.layer[0].attention.output.LayerNorm.scale[...],
        _torch_weight(ref, "bert.encoder.layer.0.attention.output.LayerNorm.weight"),
    )


def test_sharded_safetensors_index(folders, tmp_path):
    ref, _ = folders["xlmr-mlm"]
    folder = _copy(folders, "xlmr-mlm", tmp_path)
    tensors = _weights(folder)
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": keys[:10],
        "model-00002-of-00002.safetensors": keys[10:],
    }
    for name, part in shards.items():
        save_file({k: tensors[k] for k in part}, folder / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    model = from_pretrained(folder, "masked-lm")
    np.testing.assert_array_equal(model.lm_head.bias[...], _torch_weight(ref, "lm_head.bias"))
    np.testing.assert_array_equal(
        model.roberta.encoder.layer[1].intermediate.dense.kernel[...],
        _torch_weight(ref, "roberta.encoder.layer.1.intermediate.dense.weight").T,
    )


# ----------------------------------------------------------------------------- mesh


def test_sharded_load_on_a_2x4_mesh(folders):
    _, folder = folders["bert-mlm"]
    auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(auto, auto))
    plain = from_pretrained(folder, "masked-lm")
    sharded = from_pretrained(folder, "masked-lm", mesh=mesh)
    layer = sharded.bert.encoder.layer[0]
    expected = [
        (layer.attention.self.query.kernel, P("fsdp", "tensor")),  # [embed, heads]
        (layer.attention.self.query.bias, P("tensor")),
        (layer.attention.output.dense.kernel, P("tensor", "fsdp")),  # [heads, embed]
        (layer.intermediate.dense.kernel, P("fsdp", "tensor")),  # [embed, mlp]
        (layer.output.LayerNorm.scale, P("fsdp")),
        # vocab 99 is not divisible by tensor=4: that dimension stays replicated
        (sharded.bert.embeddings.word_embeddings.embedding, P(None, "fsdp")),
        (sharded.cls.predictions.bias, P(None)),
    ]
    for var, spec in expected:
        assert var[...].sharding == jax.sharding.NamedSharding(mesh, spec)
    for (path, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(plain, nnx.Param)),
        nnx.to_flat_state(nnx.state(sharded, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(
            np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path)
        )
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 99, size=(4, 8)))
    got = nnx.jit(lambda m, x: m(x).logits)(sharded, ids)  # shardings travel with the arrays
    np.testing.assert_allclose(got, plain(ids).logits, atol=1e-5, rtol=0)

    # A fresh head is initialised straight into its sharding, with the same values as unsharded.
    head = from_pretrained(folder, "sequence-classification", mesh=mesh).classifier.kernel[...]
    assert head.sharding == jax.sharding.NamedSharding(mesh, P("fsdp", None))
    plain_head = from_pretrained(folder, "sequence-classification").classifier.kernel[...]
    np.testing.assert_array_equal(np.asarray(head), np.asarray(plain_head))


def test_logical_to_spec_rules():
    mesh = jax.make_mesh((1, 2, 4), ("data", "fsdp", "tensor"))
    assert logical_to_spec(("embed", "mlp"), (8, 16), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", "length"), (4, 7), mesh) == P(("data", "fsdp"), None)
    assert logical_to_spec(("vocab", "embed"), (10, 8), mesh) == P(None, "fsdp")  # 10 % 4
    assert logical_to_spec(("heads", "mlp"), (8, 8), mesh) == P("tensor", None)  # axis used once
    assert logical_to_spec(None, (3,), mesh) == P()
    small = jax.make_mesh((8,), ("data",))  # rules naming absent axes degrade to replication
    assert logical_to_spec(("embed", "mlp"), (8, 8), small, DEFAULT_RULES) == P(None, None)


# ----------------------------------------------------------------------------- errors


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _edit_weights(folder, fn):
    tensors = _weights(folder)
    fn(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


ERRORS = {
    "unknown model_type": (
        lambda f: _edit_config(f, model_type="gpt2"),
        ValueError,
        r"model_type='gpt2' is not supported; supported: bert, llama, mistral, qwen2, qwen3, "
        r"roberta, xlm-roberta",
    ),
    "no config": (lambda f: (f / "config.json").unlink(), FileNotFoundError, "has no config.json"),
    "no weights": (
        lambda f: (f / "model.safetensors").unlink(),
        FileNotFoundError,
        "neither model.safetensors nor model.safetensors.index.json",
    ),
    "missing base weight": (
        lambda f: _edit_weights(f, lambda t: t.pop("bert.encoder.layer.1.output.dense.weight")),
        ValueError,
        r"lacks 1 weight\(s\) of BertForMaskedLM: bert.encoder.layer.1.output.dense.weight",
    ),
    "shape mismatch": (
        lambda f: _edit_weights(
            f,
            lambda t: t.update(
                {"bert.encoder.layer.0.intermediate.dense.weight": np.zeros((60, 32), np.float32)}
            ),
        ),
        ValueError,
        r"bert.encoder.layer.0.intermediate.dense.weight: expected \[64, 32\], got \[60, 32\]",
    ),
    "unexpected base weight": (
        lambda f: _edit_weights(
            f,
            lambda t: t.update(
                {"bert.encoder.layer.2.output.dense.bias": np.zeros(32, np.float32)}
            ),
        ),
        ValueError,
        r"1 checkpoint weight\(s\) have no place in BertForMaskedLM: "
        r"bert.encoder.layer.2.output.dense.bias",
    ),
    "unsupported mlm": (
        lambda f: _edit_config(f, tie_word_embeddings=False),
        ValueError,
        "tie_word_embeddings=False is not supported",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_checkpoints_fail_with_one_clear_error(folders, tmp_path, case):
    edit, exc, message = ERRORS[case]
    folder = _copy(folders, "bert-mlm", tmp_path)
    edit(folder)
    with pytest.raises(exc, match=message):
        from_pretrained(folder, "masked-lm")


def test_bad_arguments(folders, tmp_path):
    _, folder = folders["bert-mlm"]
    with pytest.raises(
        ValueError, match=r"task='causal-lm' is not available for model_type='bert'"
    ):
        from_pretrained(folder, "causal-lm")
    with pytest.raises(ValueError, match="unknown config override 'hidden_dropout'"):
        from_pretrained(folder, "masked-lm", hidden_dropout=0.0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is a file"):
        from_pretrained(folder / "config.json")


def test_config_overrides_apply(folders):
    _, folder = folders["bert-mlm"]
    model = from_pretrained(folder, "token-classification", hidden_dropout_prob=0.0,
                            id2label={"0": "O", "1": "B-PER", "2": "I-PER"})  # fmt: skip
    assert model.config.hidden_dropout_prob == 0.0
    assert model.config.labels == ("O", "B-PER", "I-PER")
    assert model.classifier.kernel[...].shape == (32, 3)


def test_hub_ids_go_through_snapshot_download(folders, monkeypatch):
    _, folder = folders["bert-base"]
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append(repo_id)
        if repo_id != "org/tiny-bert":
            raise huggingface_hub.errors.RepositoryNotFoundError("404")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = from_pretrained("org/tiny-bert")
    assert calls == ["org/tiny-bert"] and model.pooler is not None
    with pytest.raises(FileNotFoundError, match="'org/absent' is not a local folder"):
        from_pretrained("org/absent")


# ----------------------------------------------------------------------------- naming + saving


def test_hf_key_and_module_at(folders):
    _, folder = folders["bert-mlm"]
    model = from_pretrained(folder, "masked-lm")
    path = ("bert", "encoder", "layer", 1, "attention", "self", "query", "kernel")
    assert hf_key(path) == "bert.encoder.layer.1.attention.self.query.weight"
    assert (
        hf_key(("bert", "embeddings", "LayerNorm", "scale")) == "bert.embeddings.LayerNorm.weight"
    )
    query = model.bert.encoder.layer[1].attention.self.query
    assert module_at(model, "bert.encoder.layer.1.attention.self.query") is query
    assert module_at(model, "bert.encoder.layer.1.attention.self.query.weight") is query
    with pytest.raises(KeyError, match="'bert.encoder' has no 'layers'"):
        module_at(model, "bert.encoder.layers.0")
    saved = {hf_key(tuple(p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert saved == set(_weights(folder))  # exactly the keys transformers wrote


def test_save_bfloat16_params_loads_in_transformers(folders, tmp_path):
    ref, folder = folders["xlmr-mlm"]
    model = from_pretrained(folder, "masked-lm", param_dtype=jnp.bfloat16)
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert type(back).__name__ == "XLMRobertaForMaskedLM"
    key = "roberta.encoder.layer.0.attention.self.value.weight"
    np.testing.assert_array_equal(
        back.state_dict()[key].float().numpy(),
        torch.from_numpy(_torch_weight(ref, key)).bfloat16().float().numpy(),
    )


def test_load_tokenizer_from_a_local_folder(tmp_path):
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"])}
    transformers.BertTokenizer(vocab=vocab).save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer("hi hi")["input_ids"] == [2, 5, 5, 3]
    assert tokenizer.pad_token_id == 0


def test_hub_module_table_points_at_real_modules():
    assert set(hub_files.MODEL_TYPES) >= {
        "bert",
        "xlm-roberta",
        "roberta",
        "llama",
        "qwen2",
        "qwen3",
    }
    assert hub_files.MODEL_TYPES["xlm-roberta"] == "langtune_jax.models.bert"
