"""BERT / XLM-R in NNX against transformers PyTorch: parity per layer and head, round trips, shapes.

Every model is a tiny random transformers model saved with ``save_pretrained`` and loaded with
ours; the batch mixes full rows, right padding and left padding (left padding exercises RoBERTa's
position ids, which count non-pad tokens only). Token outputs are compared on real tokens only.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from langtune_jax.models import (
    BertConfig,
    BertModel,
    from_pretrained,
    hf_key,
    save_pretrained,
)
from langtune_jax.models import bert as bert_lib

TOL = 1e-4
TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=40,
    num_labels=3,
)
FAMILIES = {
    "bert": (
        transformers.BertConfig,
        {
            None: transformers.BertModel,
            "sequence-classification": transformers.BertForSequenceClassification,
            "token-classification": transformers.BertForTokenClassification,
            "masked-lm": transformers.BertForMaskedLM,
        },
    ),
    "xlm-roberta": (
        transformers.XLMRobertaConfig,
        {
            None: transformers.XLMRobertaModel,
            "sequence-classification": transformers.XLMRobertaForSequenceClassification,
            "token-classification": transformers.XLMRobertaForTokenClassification,
            "masked-lm": transformers.XLMRobertaForMaskedLM,
        },
    ),
}
CASES = [(fam, task) for fam in FAMILIES for task in FAMILIES[fam][1]]


def _batch(pad_id: int, type_vocab: int):
    rng = np.random.RandomState(0)
    ids = rng.randint(3, TINY["vocab_size"], size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    ids = np.where(mask == 1, ids, pad_id)
    types = (np.arange(9)[None, :] >= 4).astype(np.int64).repeat(3, 0) if type_vocab > 1 else None
    return ids, mask, types


def _scale_up(model):
    """Re-draw weights at unit pre-activation scale (HF's std 0.02 makes every non-linearity
    nearly linear, which would hide e.g. tanh-vs-erf GELU); perturb LayerNorms and biases."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 1.0 if "embeddings" in name else p.shape[1] ** -0.5)
            else:
                p.add_(0.1 * torch.randn_like(p))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{(family, task): (torch model, folder, ids, mask, types)}, built once per module."""
    out = {}
    for fam, (config_cls, classes) in FAMILIES.items():
        cfg = config_cls(**TINY)
        for task, cls in classes.items():
            torch.manual_seed(len(out))
            model = cls(cfg).eval()
            _scale_up(model)
            folder = tmp_path_factory.mktemp(f"{fam}_{task}")
            model.save_pretrained(folder)
            out[fam, task] = (model, folder, *_batch(cfg.pad_token_id, cfg.type_vocab_size))
    return out


def _torch_outputs(model, ids, mask, types):
    kw = {} if types is None else {"token_type_ids": torch.tensor(types)}
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
            **kw,
        )


def _ours_outputs(model, ids, mask, types):
    kw = {} if types is None else {"token_type_ids": jnp.asarray(types)}
    return model(
        jnp.asarray(ids), attention_mask=jnp.asarray(mask), output_hidden_states=True, **kw
    )


def _max_diff_tokens(a, b, mask):
    """Max |a - b| over real (non-pad) tokens of [B, T, ...] arrays."""
    keep = mask.astype(bool)
    return float(np.abs(np.asarray(a)[keep] - np.asarray(b)[keep]).max())


@pytest.mark.parametrize(("family", "task"), CASES)
def test_parity_with_transformers(checkpoints, family, task):
    ref_model, folder, ids, mask, types = checkpoints[family, task]
    ref = _torch_outputs(ref_model, ids, mask, types)
    ours = _ours_outputs(from_pretrained(folder, task), ids, mask, types)

    # Layer by layer: embeddings output, then every block.
    assert len(ours.hidden_states) == len(ref.hidden_states) == TINY["num_hidden_layers"] + 1
    for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states, strict=True)):
        assert _max_diff_tokens(a, b.numpy(), mask) < TOL, f"hidden state {i}"
    assert ours.last_hidden_state is ours.hidden_states[-1]

    if task is None:  # bare model: our .logits carries the pooled output
        np.testing.assert_allclose(ours.logits, ref.pooler_output.numpy(), atol=TOL, rtol=0)
    elif task == "sequence-classification":
        assert ours.logits.shape == (3, TINY["num_labels"])
        np.testing.assert_allclose(ours.logits, ref.logits.numpy(), atol=TOL, rtol=0)
    else:
        assert ours.logits.shape == ref.logits.shape
        assert _max_diff_tokens(ours.logits, ref.logits.numpy(), mask) < TOL


@pytest.mark.parametrize(("family", "task"), CASES)
def test_save_pretrained_loads_in_transformers(checkpoints, family, task, tmp_path):
    ref_model, folder, ids, mask, types = checkpoints[family, task]
    ours = from_pretrained(folder, task)
    save_pretrained(ours, tmp_path)
    back = type(ref_model).from_pretrained(tmp_path).eval()
    ref_sd, back_sd = ref_model.state_dict(), back.state_dict()
    assert set(ref_sd) == set(back_sd)
    for key in ref_sd:
        np.testing.assert_array_equal(back_sd[key].numpy(), ref_sd[key].numpy(), err_msg=key)
    a = _torch_outputs(ref_model, ids, mask, types)
    b = _torch_outputs(back, ids, mask, types)
    out_a = a.logits if task else a.last_hidden_state
    out_b = b.logits if task else b.last_hidden_state
    np.testing.assert_allclose(out_b.numpy(), out_a.numpy(), atol=TOL, rtol=0)
    assert back.config.num_labels == TINY["num_labels"]


def test_roberta_position_ids_count_non_pad_tokens(checkpoints):
    embeddings = from_pretrained(checkpoints["xlm-roberta", None][1]).embeddings
    ids = np.array([[5, 6, 7, 1, 1], [1, 1, 5, 6, 7]])
    expected = np.array([[2, 3, 4, 1, 1], [1, 1, 2, 3, 4]])  # from pad+1, pads stay at pad
    np.testing.assert_array_equal(embeddings.position_ids(jnp.asarray(ids)), expected)
    ref = transformers.models.roberta.modeling_roberta.RobertaEmbeddings
    np.testing.assert_array_equal(
        ref.create_position_ids_from_input_ids(torch.tensor(ids), 1).numpy(), expected
    )


@pytest.mark.parametrize(("family", "limit"), [("bert", 40), ("xlm-roberta", 38)])
def test_too_long_input_is_a_clear_error(checkpoints, family, limit):
    model = from_pretrained(checkpoints[family, None][1])
    forward = lambda n: nnx.eval_shape(lambda m: m(jnp.full((1, n), 5)), model)  # noqa: E731
    assert forward(limit).last_hidden_state.shape == (1, limit, 32)  # the longest input works
    with pytest.raises(ValueError, match=rf"input length {limit + 1} exceeds .*max {limit} tokens"):
        forward(limit + 1)


@nnx.jit
def _jit_logits(model, ids, mask):
    return model(ids, attention_mask=mask).logits


def test_bf16_compute_keeps_float32_params_and_stays_close(checkpoints):
    ref_model, folder, ids, mask, types = checkpoints["xlm-roberta", "masked-lm"]
    ref = _torch_outputs(ref_model, ids, mask, None).logits.numpy()
    ids, jmask = jnp.asarray(ids), jnp.asarray(mask)
    f32 = from_pretrained(folder, "masked-lm")
    bf16 = from_pretrained(folder, "masked-lm", dtype=jnp.bfloat16)
    kernel = bf16.roberta.encoder.layer[0].attention.self.query.kernel
    assert kernel[...].dtype == jnp.float32
    a, b = _jit_logits(f32, ids, jmask), _jit_logits(bf16, ids, jmask)
    assert _max_diff_tokens(a, ref, mask) < TOL  # the jitted float32 path keeps parity
    assert b.dtype == jnp.bfloat16
    assert _max_diff_tokens(b.astype(jnp.float32), a, mask) < 0.1
    stored = nnx.eval_shape(lambda: from_pretrained(folder, "masked-lm", param_dtype=jnp.bfloat16))
    assert stored.lm_head.bias.get_value().dtype == jnp.bfloat16


def test_dropout_follows_train_and_eval_modes(checkpoints):
    ref_model, folder, ids, mask, types = checkpoints["xlm-roberta", "token-classification"]
    model = from_pretrained(folder, "token-classification")  # eval mode, like transformers
    x, jmask = jnp.asarray(ids), jnp.asarray(mask)
    model.train()
    assert not np.allclose(model(x, jmask).logits, model(x, jmask).logits)  # fresh masks per call
    model.eval()
    ref = _torch_outputs(ref_model, ids, mask, None).logits.numpy()
    assert _max_diff_tokens(model(x, jmask).logits, ref, mask) < TOL


def test_full_size_mbert_by_shape_only():
    """mBERT-base (vocab 119547): parameter tree and count equal transformers' on the meta device."""
    hf_cfg = transformers.BertConfig(vocab_size=119547)
    with torch.device("meta"):
        ref = transformers.BertModel(hf_cfg)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    ref_count = sum(p.numel() for p in ref.parameters())

    model = nnx.eval_shape(
        lambda: bert_lib.from_hf_config(hf_cfg.to_dict(), None, rngs=nnx.Rngs(0))
    )
    assert isinstance(model, BertModel)
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    ours = {}
    for path, var in params:
        shape = var.get_value().shape
        ours[hf_key(tuple(path))] = tuple(reversed(shape)) if path[-1] == "kernel" else shape
    assert ours == ref_shapes
    count = sum(int(np.prod(s)) for s in ours.values())
    assert count == ref_count == 177_853_440


def test_axis_names_on_parameters():
    cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16)  # fmt: skip
    model = nnx.eval_shape(lambda: bert_lib.BertForMaskedLM(cfg, rngs=nnx.Rngs(0)))
    layer = model.bert.encoder.layer[0]
    names = lambda v: v.get_metadata()["out_sharding"]  # noqa: E731
    assert names(model.bert.embeddings.word_embeddings.embedding) == ("vocab", "embed")
    assert names(layer.attention.self.query.kernel) == ("embed", "heads")
    assert names(layer.attention.output.dense.kernel) == ("heads", "embed")
    assert names(layer.intermediate.dense.kernel) == ("embed", "mlp")
    assert names(layer.output.dense.kernel) == ("mlp", "embed")
    assert names(model.cls.predictions.bias) == ("vocab",)
    # every parameter carries names, one per dimension
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        assert len(names(var)) == var.get_value().ndim, path


def test_config_validation_names_the_field():
    with pytest.raises(
        ValueError, match="hidden_size=30 is not divisible by num_attention_heads=4"
    ):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act='mish'"):
        BertConfig(hidden_act="mish")
    with pytest.raises(ValueError, match="task='causal-lm'"):
        bert_lib.from_hf_config({"model_type": "bert"}, "causal-lm", rngs=nnx.Rngs(0))


def test_config_round_trips_through_hf_dict():
    hf = transformers.XLMRobertaConfig(**TINY, id2label={0: "neg", 1: "neu", 2: "pos"}).to_dict()
    cfg = BertConfig.from_hf(hf)
    assert cfg.labels == ("neg", "neu", "pos") and cfg.pad_token_id == 1 and cfg.is_roberta
    back = cfg.to_hf()
    for key in ("vocab_size", "hidden_size", "bos_token_id", "eos_token_id", "layer_norm_eps"):
        assert back[key] == hf[key], key
    assert back["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
    assert BertConfig.from_hf(hf, num_labels=5).num_labels == 5
    hash(cfg)  # static graph metadata must be hashable
