"""AdapterHub interop: export then import is exact, the folder is the library's layout (file names,
config fields, weight keys and shapes), and what the library cannot express is refused.

The check against the real ``adapters`` package (a separate venv with transformers 4.57) is
``make test-adapterhub`` (scripts/check_adapterhub.py)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from langtune_jax.models import bert, llama
from langtune_jax.peft.adapters import (
    AdapterConfig,
    AdapterParam,
    apply_adapters,
    export_adapterhub,
    export_adapterhub_languages,
    get_adapter_config,
    import_adapterhub,
    with_routing,
)
from langtune_jax.peft.lora import LoraConfig, apply_lora
from tests.peft.adapters.test_apply import BERT_HF as APPLY_BERT_HF
from tests.peft.adapters.test_apply import VOCAB, D

LAYERS = 3  # one more than test_apply's model, so a partial `layers` leaves a layer between
BERT_HF = {**APPLY_BERT_HF, "num_hidden_layers": LAYERS}
CASES = {
    "pfeiffer": AdapterConfig(placement="pfeiffer", reduction_factor=4.0),
    "houlsby": AdapterConfig(placement="houlsby", adapter_size=8, non_linearity="swish"),
    "parallel": AdapterConfig(placement="parallel", adapter_size=4, scaling=4.0),
    "partial": AdapterConfig(
        placement="houlsby", adapter_size=5, non_linearity="gelu", layers=[0, 2]
    ),
}


def make_model(task="sequence-classification", seed=0, model_type="bert"):
    model = bert.from_hf_config(
        {**BERT_HF, "model_type": model_type}, task, rngs=nnx.Rngs(seed), num_labels=3
    )
    model.eval()
    return model


def randomize(model, seed=1):
    """Every adapter weight non-zero (the identity init would hide a dead adapter)."""
    key = jax.random.key(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, AdapterParam):
            key, sub = jax.random.split(key)
            var[...] = 0.5 * jax.random.normal(sub, var.shape, var.dtype)
    return model


def adapted(case, **kw):
    return randomize(apply_adapters(make_model(**kw), CASES[case]))


def outputs(model):
    rs = np.random.RandomState(0)
    ids = jnp.asarray(rs.randint(1, VOCAB, (3, 7)), jnp.int32)
    mask = jnp.ones((3, 7), jnp.int32).at[0, -2:].set(0)
    out = model(ids, mask)
    return np.asarray(out.last_hidden_state), (
        None if out.logits is None else np.asarray(out.logits)
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_then_import_is_exact(tmp_path, case):
    ours = adapted(case)
    export_adapterhub(ours, tmp_path, adapter_name="task")
    back = import_adapterhub(make_model(), tmp_path)
    (h0, l0), (h1, l1) = outputs(ours), outputs(back)
    np.testing.assert_array_equal(h0, h1)
    np.testing.assert_array_equal(l0, l1)
    base_h, _ = outputs(make_model())
    assert np.abs(base_h - h1).max() > 1e-2  # the adapters are on the path
    cfg, want = get_adapter_config(back), CASES[case]
    assert (cfg.placement, cfg.scaling, cfg.non_linearity) == (
        want.placement,
        want.scaling,
        want.non_linearity,
    )
    assert cfg.bottleneck_size(D) == want.bottleneck_size(D)
    assert cfg.layer_indices(LAYERS) == want.layer_indices(LAYERS)


def test_folder_is_the_library_layout(tmp_path):
    export_adapterhub(adapted("partial"), tmp_path, adapter_name="xnli")
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "adapter_config.json",
        "adapter.safetensors",
        "head_config.json",
        "model_head.safetensors",
    }
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert {k: meta[k] for k in ("model_type", "hidden_size", "name", "model_class")} == {
        "model_type": "bert",
        "hidden_size": D,
        "name": "xnli",
        "model_class": "BertForSequenceClassification",
    }
    bn = meta["config"]
    assert bn["architecture"] is None  # the library maps null to BnConfig; "bottleneck" is no key
    assert (bn["mh_adapter"], bn["output_adapter"], bn["is_parallel"]) == (True, True, False)
    assert (bn["original_ln_before"], bn["original_ln_after"], bn["residual_before_ln"]) == (
        False,
        True,
        True,
    )
    assert (bn["ln_before"], bn["ln_after"], bn["leave_out"], bn["non_linearity"]) == (
        False,
        False,
        [1],
        "gelu",
    )
    assert int(D // bn["reduction_factor"]) == 5 and isinstance(bn["scaling"], float)
    tensors = load_file(str(tmp_path / "adapter.safetensors"))
    keys = {
        f"bert.encoder.layer.{i}.{site}.adapters.xnli.{w}"
        for i in (0, 2)
        for site in ("attention.output", "output")
        for w in (
            "adapter_down.0.weight",
            "adapter_down.0.bias",
            "adapter_up.weight",
            "adapter_up.bias",
        )
    }
    assert set(tensors) == keys
    assert tensors["bert.encoder.layer.0.output.adapters.xnli.adapter_down.0.weight"].shape == (
        5,
        D,
    )
    assert tensors["bert.encoder.layer.0.output.adapters.xnli.adapter_up.weight"].shape == (D, 5)
    head = load_file(str(tmp_path / "model_head.safetensors"))
    assert set(head) == {"classifier.weight", "classifier.bias"}
    assert head["classifier.weight"].shape == (3, D)
    head_meta = json.loads((tmp_path / "head_config.json").read_text())
    assert head_meta["model_class"] == "BertForSequenceClassification"
    assert head_meta["num_labels"] == 3


def test_a_trained_pooler_rides_in_the_head_file(tmp_path):
    """A pooler the checkpoint lacked trains (``fresh_modules``); the head file carries it."""
    ours = apply_adapters(make_model(), AdapterConfig(modules_to_save=["classifier", "pooler"]))
    pooler = ours.bert.pooler.dense.kernel
    pooler[...] = pooler[...] + 0.5
    export_adapterhub(randomize(ours), tmp_path)
    head = load_file(str(tmp_path / "model_head.safetensors"))
    assert set(head) == {
        "classifier.weight",
        "classifier.bias",
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
    }
    back = import_adapterhub(make_model(), tmp_path)
    np.testing.assert_array_equal(outputs(ours)[1], outputs(back)[1])
    assert get_adapter_config(back).modules_to_save == ["classifier", "bert.pooler.dense"]


def test_bare_encoder_and_unprefixed_keys(tmp_path):
    """A bare ``BertModel`` exports no head; the library's own bare-model keys have no prefix."""
    ours = randomize(apply_adapters(make_model(task=None), CASES["pfeiffer"]))
    export_adapterhub(ours, tmp_path, adapter_name="a")
    assert not (tmp_path / "head_config.json").exists()
    weights = tmp_path / "adapter.safetensors"
    tensors = load_file(str(weights))
    save_file({k.removeprefix("bert."): v for k, v in tensors.items()}, str(weights))
    back = import_adapterhub(make_model(task=None), tmp_path)
    np.testing.assert_array_equal(outputs(ours)[0], outputs(back)[0])


def test_xlm_roberta_keys(tmp_path):
    ours = adapted("houlsby", model_type="xlm-roberta")
    export_adapterhub(ours, tmp_path, adapter_name="a")
    keys = load_file(str(tmp_path / "adapter.safetensors"))
    assert all(k.startswith("roberta.encoder.layer.") for k in keys)
    back = import_adapterhub(make_model(model_type="xlm-roberta"), tmp_path)
    np.testing.assert_array_equal(outputs(ours)[1], outputs(back)[1])


def test_invertible_adapters_travel_with_the_masked_lm(tmp_path):
    """MAD-X's NICE block: the library's keys and shapes, and export -> import is exact."""
    cfg = AdapterConfig(adapter_size=4, inv_adapter="nice", modules_to_save=[])
    ours = randomize(apply_adapters(make_model(task="masked-lm"), cfg))
    export_adapterhub(ours, tmp_path, adapter_name="sw")
    bn = json.loads((tmp_path / "adapter_config.json").read_text())["config"]
    assert (bn["inv_adapter"], bn["inv_adapter_reduction_factor"]) == ("nice", 2.0)
    tensors = load_file(str(tmp_path / "adapter.safetensors"))
    inv = {k: v.shape for k, v in tensors.items() if "invertible" in k}
    prefix = "bert.invertible_adapters.sw"
    half = D // 2
    assert inv == {
        **{f"{prefix}.{s}.0.weight": (half // 2, half) for s in "FG"},
        **{f"{prefix}.{s}.0.bias": (half // 2,) for s in "FG"},
        **{f"{prefix}.{s}.2.weight": (half, half // 2) for s in "FG"},
        **{f"{prefix}.{s}.2.bias": (half,) for s in "FG"},
    }
    back = import_adapterhub(make_model(task="masked-lm"), tmp_path)
    assert get_adapter_config(back).inv_adapter == "nice"
    np.testing.assert_array_equal(outputs(ours)[1], outputs(back)[1])
    base = outputs(make_model(task="masked-lm"))[1]
    assert np.abs(base - outputs(back)[1]).max() > 1e-2


def test_a_library_masked_lm_head_file_with_its_tied_decoder_imports(tmp_path):
    """The library saves a masked-LM head with the decoder keys transformers ties (to the word
    embeddings and to ``cls.predictions.bias``); they are checked and dropped, or refused."""
    ours = randomize(apply_adapters(make_model(task="masked-lm"), AdapterConfig(adapter_size=4)))
    export_adapterhub(ours, tmp_path, adapter_name="a")
    head_file = tmp_path / "model_head.safetensors"
    head = load_file(str(head_file))
    table = np.asarray(ours.bert.embeddings.word_embeddings.embedding[...])
    tied = {
        **head,
        "cls.predictions.decoder.weight": table,
        "cls.predictions.decoder.bias": head["cls.predictions.bias"],
    }
    save_file(tied, str(head_file))
    back = import_adapterhub(make_model(task="masked-lm"), tmp_path)
    np.testing.assert_array_equal(outputs(ours)[1], outputs(back)[1])
    save_file({**tied, "cls.predictions.decoder.weight": table + 1.0}, str(head_file))
    with pytest.raises(ValueError, match="differs from the model's word embeddings"):
        import_adapterhub(make_model(task="masked-lm"), tmp_path)


# ------------------------------------------------------------------------------------- refusals


def test_export_refuses_what_the_library_cannot_express(tmp_path):
    langs = apply_adapters(make_model(), AdapterConfig(languages=["en", "sw"]))
    with pytest.raises(ValueError, match=r"AdapterConfig.languages=\['en', 'sw'\]"):
        export_adapterhub(langs, tmp_path)
    with_lora = apply_lora(make_model(), LoraConfig(r=2, target_modules=["query"]))
    apply_adapters(with_lora, CASES["pfeiffer"])
    with pytest.raises(ValueError, match="also carries LoRA"):
        export_adapterhub(with_lora, tmp_path)
    bare = apply_adapters(make_model(task=None), AdapterConfig(modules_to_save=["pooler"]))
    with pytest.raises(ValueError, match=r"AdapterConfig.modules_to_save=\['pooler'\] on a bare"):
        export_adapterhub(bare, tmp_path)
    hf = dict(
        model_type="llama",
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    causal = apply_adapters(
        llama.from_hf_config(hf, "causal-lm", rngs=nnx.Rngs(0)), CASES["pfeiffer"]
    )
    with pytest.raises(ValueError, match="not Llama-family"):
        export_adapterhub(causal, tmp_path)
    with pytest.raises(ValueError, match="adapter_name"):
        export_adapterhub(adapted("pfeiffer"), tmp_path, adapter_name="a.b")
    assert not (tmp_path / "adapter_config.json").exists()


def _edit_config(folder, **fields):
    path = folder / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta["config"].update(fields)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(original_ln_before=True), "original_ln_before"),  # the library's SeqBnConfig
        (dict(ln_after=True), "ln_after"),
        (dict(ln_before=True), "ln_before"),
        (dict(original_ln_after=False), "original_ln_after"),
        (dict(use_gating=True), "use_gating"),
        (dict(phm_layer=True), "phm_layer"),
        (dict(inv_adapter="glow"), "inv_adapter"),
        (dict(scaling="learned"), "scaling"),
        (dict(reduction_factor={"0": 4, "default": 8}), "reduction_factor"),
        (dict(residual_before_ln="post_add"), "residual_before_ln"),
        (dict(non_linearity="tanh"), "non_linearity"),
        (dict(mh_adapter=True, output_adapter=False), "mh_adapter"),
        (dict(architecture="lora"), "architecture"),
        (dict(stochastic_depth=0.1), "stochastic_depth"),
    ],
)
def test_import_refuses_other_semantics(tmp_path, fields, field):
    export_adapterhub(adapted("pfeiffer"), tmp_path)
    _edit_config(tmp_path, **fields)
    with pytest.raises(ValueError, match=f"has {field}="):
        import_adapterhub(make_model(), tmp_path)


def test_import_refuses_mismatched_folders(tmp_path):
    export_adapterhub(adapted("pfeiffer"), tmp_path)
    wider = bert.from_hf_config({**BERT_HF, "hidden_size": 64}, None, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden_size=32"):
        import_adapterhub(wider, tmp_path)
    with pytest.raises(ValueError, match="a head of 'BertForSequenceClassification'"):
        import_adapterhub(make_model(task="token-classification"), tmp_path)
    weights = tmp_path / "adapter.safetensors"
    tensors = load_file(str(weights))
    tensors["bert.invertible_adapters.adapter.F.0.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match="unexpected keys"):
        import_adapterhub(make_model(), tmp_path)
    weights.unlink()
    with pytest.raises(ValueError, match="neither adapter.safetensors nor pytorch_adapter.bin"):
        import_adapterhub(make_model(), tmp_path)


def test_import_refuses_an_adapted_model(tmp_path):
    export_adapterhub(adapted("pfeiffer"), tmp_path)
    with pytest.raises(ValueError, match="already has adapters"):
        import_adapterhub(adapted("pfeiffer"), tmp_path)


def test_each_language_adapter_exports_as_its_own_adapterhub_folder(tmp_path):
    """A MAD-X language-adapter model (per-language adapters and invertible adapters, no task
    adapter): one library folder per language, each equal to that language's routed model."""
    cfg = AdapterConfig(
        adapter_size=4,
        languages=["en", "sw"],
        shared_task_adapter=False,
        inv_adapter="nice",
        modules_to_save=[],
    )
    ours = randomize(apply_adapters(make_model(task="masked-lm"), cfg))
    folders = export_adapterhub_languages(ours, tmp_path)
    assert sorted(folders) == ["en", "sw"]
    rs = np.random.RandomState(0)
    ids = jnp.asarray(rs.randint(1, VOCAB, (3, 7)), jnp.int32)
    mask = jnp.ones((3, 7), jnp.int32)
    for row, lang in enumerate(["en", "sw"]):
        meta = json.loads((folders[lang] / "adapter_config.json").read_text())
        assert meta["name"] == lang and meta["config"]["inv_adapter"] == "nice"
        back = import_adapterhub(make_model(task="masked-lm"), folders[lang])
        with with_routing(ours, jnp.full((3,), row, jnp.int32)):
            want = np.asarray(ours(ids, mask).logits)
        np.testing.assert_allclose(np.asarray(back(ids, mask).logits), want, atol=1e-5)
    assert get_adapter_config(ours).languages == ["en", "sw"]  # the model itself is unchanged
    stacked = AdapterConfig(adapter_size=4, languages=["en"], shared_task_adapter=True)
    with pytest.raises(ValueError, match="shared task adapter"):
        export_adapterhub_languages(apply_adapters(make_model(), stacked), tmp_path / "x")
