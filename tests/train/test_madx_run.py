"""MAD-X end to end on the tiny BERT: masked-LM language adapters for every language in one run
(written as a library), then a task run stacked on them that trains on two languages and evaluates
the third zero-shot through its own language adapter; kill -9 then restart equals an unbroken run."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from langtune_jax.config import RunConfig, from_dict
from langtune_jax.peft.adapters.io import read_folder
from langtune_jax.train import train
from langtune_jax.train.runs import load_run
from tests.train.conftest import LANGS, kill_9_at_checkpoint


def _base(assets: Path, name: str) -> dict:
    return {
        "run": {"name": name, "seed": 0},
        "model": {"name_or_path": str(assets / "model")},
        "sampling": {"strategy": "uniform"},
        "train": {"steps": 4, "batch_size": 8, "learning_rate": 1e-2, "log_every": 2},
        "eval": {"split": "validation", "final_splits": [], "batch_size": 16},
        "mesh": {"data": -1},
    }


@pytest.fixture(scope="module")
def library(assets, tmp_path_factory):
    cfg = _base(assets, "lang")
    cfg["model"]["task"] = "masked-lm"
    cfg["peft"] = {
        "method": "adapters",
        "adapters": {
            "adapter_size": 4,
            "languages": sorted(LANGS),
            "shared_task_adapter": False,
            "modules_to_save": [],
            "inv_adapter": "nice",  # MAD-X's invertible adapters, one per language
        },
    }
    cfg["data"] = {"sources": [{"path": str(assets / "data" / "{split}")}], "max_length": 16}
    run = train(from_dict(RunConfig, cfg), run_dir=tmp_path_factory.mktemp("lang") / "run")
    return run


def test_masked_lm_run_writes_a_language_library(library):
    report = json.loads((library / "eval/validation/report.json").read_text())
    assert report["task"] == "masked-lm" and report["primary_metric"] == "perplexity"
    assert set(report["per_language"]) == set(LANGS)
    assert all(np.isfinite(r["loss"]) for r in report["per_language"].values())
    lib = library / "language_adapters"
    assert json.loads((lib / "library.json").read_text())["languages"] == sorted(LANGS)
    for lang in LANGS:
        meta, tensors = read_folder(lib / lang)
        assert meta["language"] == lang and meta["config"]["languages"] is None
        # Trained: the up-projections left their zero init, the invertible adapter's too.
        assert any(np.abs(v).max() > 0 for k, v in tensors.items() if k.endswith("up_kernel"))
        assert np.abs(tensors["bert.embeddings.adapter.G.up_kernel"]).max() > 0


@pytest.mark.slow
def test_language_run_exports_one_adapterhub_adapter_per_language(assets, library, tmp_path):
    """`langtune export --format adapterhub` of a language-adapter run: OUT/<language>/ each, the
    same function as that language's library folder."""
    import jax.numpy as jnp

    from langtune_jax.models import from_pretrained
    from langtune_jax.peft.adapters import import_adapterhub, load_adapters
    from langtune_jax.train.runs import export_run

    export_run(library, "adapterhub", tmp_path / "hub")
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == sorted(LANGS)
    ids = jnp.asarray(np.arange(3, 3 + 2 * 9).reshape(2, 9) % 50 + 3, jnp.int32)
    for lang in LANGS:
        fresh = lambda: from_pretrained(assets / "model", "masked-lm")  # noqa: E731
        hub = import_adapterhub(fresh(), tmp_path / "hub" / lang)
        ours = load_adapters(fresh(), library / "language_adapters" / lang)
        hub.eval(), ours.eval()
        np.testing.assert_allclose(
            np.asarray(hub(ids).logits), np.asarray(ours(ids).logits), atol=1e-5
        )


def _task_config(assets: Path, library: Path, **train_cfg) -> RunConfig:
    data = assets / "data"
    cfg = _base(assets, "task")
    cfg["peft"] = {
        "method": "adapters",
        "adapters": {"adapter_size": 4, "language_adapters": str(library / "language_adapters")},
    }
    cfg["data"] = {
        "sources": [
            {"path": str(data / "train" / "en.jsonl"), "splits": ["train"]},
            {"path": str(data / "train" / "es.jsonl"), "splits": ["train"]},
            {"path": str(data / "{split}"), "splits": ["validation"]},
        ],
        "max_length": 16,
    }
    cfg["train"].update(train_cfg)
    return from_dict(RunConfig, cfg)


def _trainable(run_dir):
    _, session = load_run(run_dir)
    return [np.asarray(x) for x in jax.tree.leaves(session.split.trainable)]


@pytest.mark.slow  # heavy (>15 s on 2 cores): make test-slow, run by CI after make test
def test_stacked_task_run_zero_shot_and_kill_9_resume(assets, library, tmp_path):
    cfg = _task_config(assets, library, steps=8, checkpoint_every=2)
    unbroken = train(cfg, run_dir=tmp_path / "unbroken")
    report = json.loads((unbroken / "eval/validation/report.json").read_text())
    assert report["zero_shot"] == ["sw"] and "sw" in report["per_language"]
    assert report["gaps"]["macro_f1"]["transfer_gap"] is not None
    # The language adapters are frozen: only the task adapter and the head are trained state.
    _, session = load_run(unbroken)
    paths = [".".join(map(str, p)) for p, _ in nnx_flat(session.split.trainable)]
    assert paths and not any("language_adapters" in p for p in paths)

    kill_9_at_checkpoint(cfg, tmp_path / "cfg.yaml", tmp_path / "killed", 4)
    done = sorted(
        int(p.name) for p in (tmp_path / "killed/checkpoints").iterdir() if p.name.isdigit()
    )
    assert done and done[-1] < 8
    train(cfg, run_dir=tmp_path / "killed")
    for a, b in zip(_trainable(unbroken), _trainable(tmp_path / "killed"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def nnx_flat(state):
    from flax import nnx

    return nnx.to_flat_state(state)


@pytest.mark.slow  # heavy (>15 s on 2 cores): make test-slow, run by CI after make test
def test_per_language_lora_in_one_run_writes_one_peft_folder_per_language(assets, tmp_path):
    from langtune_jax.models import from_pretrained
    from langtune_jax.peft import adapter_routing, import_peft

    cfg = _base(assets, "lora-lang")
    cfg["model"]["task"] = "masked-lm"
    cfg["peft"] = {
        "method": "lora",
        "lora_languages": sorted(LANGS),
        "lora": {"r": 4, "lora_alpha": 8, "modules_to_save": []},
    }
    cfg["data"] = {"sources": [{"path": str(assets / "data" / "{split}")}], "max_length": 16}
    cfg["train"]["steps"] = 2
    run = train(from_dict(RunConfig, cfg), run_dir=tmp_path / "run")
    _, session = load_run(run)
    trained = session.split.merge()
    ids = np.asarray([[2, 10, 11, 12, 3], [2, 13, 14, 15, 3]], np.int32)
    mask = np.ones_like(ids)
    for i, lang in enumerate(sorted(LANGS)):
        # Each language's folder loads alone and gives what the run's routed model gives.
        alone = import_peft(
            from_pretrained(str(assets / "model"), task="masked-lm"),
            run / "language_adapters" / lang,
        )
        alone.eval()
        with adapter_routing(trained, np.full((2,), i, np.int32), sorted(LANGS)):
            want = np.asarray(trained(ids, mask).logits)
        np.testing.assert_allclose(np.asarray(alone(ids, mask).logits), want, atol=1e-5)
