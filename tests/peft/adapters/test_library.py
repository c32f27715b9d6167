"""MAD-X stacking: a library of language adapters (one folder per language, each loadable alone),
frozen language adapters under one trainable task adapter, exact against a hand-composed reference,
identity at init, per-example routing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from langtune_jax.peft import targets
from langtune_jax.peft.adapters import (
    AdapterConfig,
    AdapterWrapper,
    BottleneckAdapter,
    LanguageAdapterParam,
    adapter_layers,
    adapter_trainable_filter,
    apply_adapters,
    language_rows,
    load_adapters,
    save_adapters,
    save_language_library,
    with_routing,
)
from langtune_jax.peft.adapters.io import read_folder
from tests.peft.adapters.test_apply import LANGS, batch, make_model, randomize_up, routed

M_LANG, M_TASK = 6, 4


def _library(tmp_path, placement="houlsby"):
    cfg = AdapterConfig(
        placement=placement,
        adapter_size=M_LANG,
        languages=LANGS,
        shared_task_adapter=False,
        init="bert",
        modules_to_save=[],
    )
    lang_model = apply_adapters(make_model("bert"), cfg, rngs=nnx.Rngs(3))
    randomize_up(lang_model)  # every language's adapter matters
    return lang_model, save_language_library(lang_model, tmp_path / "lib")


def _stacked(library, placement="houlsby", **kw):
    cfg = AdapterConfig(
        placement=placement, adapter_size=M_TASK, language_adapters=str(library), **kw
    )
    return apply_adapters(make_model("bert"), cfg, rngs=nnx.Rngs(5))


def _single_adapter(tensors, site, m, non_linearity="relu"):
    adapter = BottleneckAdapter(
        tensors[f"{site}.adapter.down_kernel"].shape[0],
        m,
        non_linearity=non_linearity,
        init="identity",
        rngs=nnx.Rngs(0),
    )
    for w in ("down_kernel", "down_bias", "up_kernel", "up_bias"):
        getattr(adapter, w)[...] = jnp.asarray(tensors[f"{site}.adapter.{w}"])
    return adapter


def _wrap(base, adapter):
    return AdapterWrapper(
        base,
        mode="serial",
        adapter=adapter,
        language_adapters=None,
        dropout=0.0,
        scaling=1.0,
        deterministic=True,
        rngs=nnx.Rngs(0),
    )


def test_library_has_one_folder_per_language_each_loadable_alone(tmp_path):
    lang_model, lib = _library(tmp_path)
    assert sorted(p.name for p in lib.iterdir() if p.is_dir()) == sorted(LANGS)
    ids, mask = batch(b=3)
    for row, lang in enumerate(LANGS):
        alone = load_adapters(make_model("bert"), lib / lang)
        cfg = alone._adapter_config_json
        assert '"languages": null' in cfg and '"modules_to_save": []' in cfg
        want = routed(lang_model, ids, mask, jnp.full((3,), row, jnp.int32))
        np.testing.assert_allclose(np.asarray(alone(ids, mask).logits), want, atol=1e-6)


@pytest.mark.parametrize("placement", ["pfeiffer", "houlsby"])
def test_stacked_forward_equals_hand_composed_reference(tmp_path, placement):
    _, lib = _library(tmp_path, placement)
    stacked = _stacked(lib, placement, init="bert")
    randomize_up(stacked, seed=7)  # a task adapter that is not the identity
    ids, mask = batch(b=3)
    for row, lang in enumerate(LANGS):
        # Reference: the base model with, at every site, lang's adapter from its own folder and
        # then a copy of the stacked model's task adapter, composed by hand as two wrappers.
        _, tensors = read_folder(lib / lang)
        ref = make_model("bert")
        for site, wrapper in adapter_layers(stacked).items():
            task = nnx.clone(wrapper.adapter)
            inner = _wrap(targets.module_at(ref, site), _single_adapter(tensors, site, M_LANG))
            targets.set_module_at(ref, site, _wrap(inner, task))
        got = routed(stacked, ids, mask, jnp.full((3,), row, jnp.int32))
        np.testing.assert_allclose(got, np.asarray(ref(ids, mask).logits), atol=1e-6)


def test_identity_at_init_equals_the_language_adapted_model_exactly(tmp_path):
    lang_model, lib = _library(tmp_path)
    stacked = _stacked(lib)  # task adapter: zero up-projection
    ids, mask = batch(b=4)
    rows = jnp.array([2, 0, 1, 2], jnp.int32)
    outs = []
    for model in (stacked, lang_model):
        with with_routing(model, rows):  # eager: the same ops, so bit for bit
            outs.append(np.asarray(model(ids, mask).logits))
    np.testing.assert_array_equal(*outs)


def test_mixed_language_batch_equals_each_language_alone(tmp_path):
    _, lib = _library(tmp_path)
    stacked = _stacked(lib, init="bert")
    randomize_up(stacked, seed=7)
    ids, mask = batch(b=6)
    rows = jnp.array([0, 2, 1, 1, 0, 2], jnp.int32)
    mixed = routed(stacked, ids, mask, rows)
    for row in range(len(LANGS)):
        sel = np.nonzero(np.asarray(rows) == row)[0]
        alone = routed(stacked, ids[sel], mask[sel], rows[sel])
        np.testing.assert_allclose(mixed[sel], alone, rtol=1e-5, atol=1e-6)
    assert np.abs(mixed[2] - routed(stacked, ids[2:3], mask[2:3], rows[:1])[0]).max() > 1e-4


def test_language_adapters_are_frozen_and_the_task_adapter_trains(tmp_path):
    _, lib = _library(tmp_path)
    stacked = _stacked(lib)
    trainable = nnx.state(stacked, adapter_trainable_filter(stacked))
    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)]
    assert paths and not any("language_adapters" in p for p in paths)
    assert any(p.endswith(".adapter.up_kernel") for p in paths)
    frozen = [p for p, v in nnx.iter_graph(stacked) if isinstance(v, LanguageAdapterParam)]
    assert len(frozen) == 4 * 2 * 2  # 4 weights x 2 sites (houlsby) x 2 layers
    # The task adapter's checkpoint holds no language weights; reloading it restacks the library.
    randomize_up(stacked, seed=7)
    folder = save_adapters(stacked, tmp_path / "task")
    _, saved = read_folder(folder)
    assert not any("language_adapters" in k for k in saved)
    again = load_adapters(make_model("bert"), folder)
    ids, mask = batch(b=3)
    rows = jnp.array([1, 2, 0], jnp.int32)
    np.testing.assert_array_equal(routed(again, ids, mask, rows), routed(stacked, ids, mask, rows))


def test_library_languages_route_and_zero_shot_fallback(tmp_path):
    _, lib = _library(tmp_path)
    stacked = _stacked(lib, fallback={"qu": "sw"})
    # Languages come from the library; a language outside it falls back as configured.
    assert list(language_rows(stacked, ["sw", "en", "qu", "yo"])) == [2, 0, 2, -1]


def test_stacking_config_errors(tmp_path):
    _, lib = _library(tmp_path)
    # A config may name a library a previous step writes; the folders are read with the model.
    later = AdapterConfig(language_adapters=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="is not a language adapter library"):
        apply_adapters(make_model("bert"), later)
    with pytest.raises(ValueError, match=r"language_adapters\['en'\].*holds no adapter"):
        AdapterConfig(language_adapters={"en": str(tmp_path)}).resolve_language_adapters()
    with pytest.raises(ValueError, match="shared_task_adapter: true"):
        AdapterConfig(language_adapters=str(lib), shared_task_adapter=False)
    with pytest.raises(ValueError, match="differs from the languages of language_adapters"):
        AdapterConfig(language_adapters=str(lib), languages=["en"]).resolve_language_adapters()
    with pytest.raises(ValueError, match="use the same model, placement, layers and scaling"):
        _stacked(lib, placement="houlsby", layers=[1])
    with pytest.raises(ValueError, match="no per-language adapters"):
        model = apply_adapters(make_model("bert"), AdapterConfig(adapter_size=4))
        save_language_library(model, tmp_path / "x")


def test_jit_reuses_one_program_for_any_language_mix(tmp_path):
    _, lib = _library(tmp_path)
    stacked = _stacked(lib)
    graph_state = nnx.split(stacked)
    fn = jax.jit(lambda gs, i, m, r: _call(gs, i, m, r))
    ids, mask = batch(b=4)
    fn(graph_state, ids, mask, jnp.array([0, 1, 2, 0], jnp.int32))
    before = fn._cache_size()
    fn(graph_state, ids, mask, jnp.array([2, 2, 1, 0], jnp.int32))
    assert fn._cache_size() == before


def _call(graph_state, ids, mask, rows):
    model = nnx.merge(*graph_state)
    with with_routing(model, rows):
        return model(ids, mask).logits
