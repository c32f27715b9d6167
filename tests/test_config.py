"""Config loading: every shipped preset parses; bad configs fail early with the key named."""

from pathlib import Path

import pytest
import yaml

from langtune_jax.cli import main
from langtune_jax.config import ConfigError, RunConfig, apply_overrides, from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.name_or_path


def _write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"model": {"name_or_path": "demo/tiny-mbert"}, "data": {"sources": [{"path": "d/{split}"}]}}


def test_overrides_parse_values_as_yaml(tmp_path):
    cfg = load_config(
        _write(tmp_path, BASE),
        [
            "train.steps=7",
            "train.learning_rate=1e-4",
            "peft.lora.target_modules=[q_proj, v_proj]",
            "sampling.strategy=temperature",
            "train.max_grad_norm=null",
        ],
    )
    assert cfg.train.steps == 7
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.peft.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.sampling.strategy == "temperature"
    assert cfg.train.max_grad_norm is None


def test_seed_lora_block_works_as_written(tmp_path):
    data = dict(BASE)
    data["peft"] = {
        "method": "lora",
        "lora": yaml.safe_load(
            "{r: 8, lora_alpha: 32, target_modules: [q_proj, v_proj], lora_dropout: 0.1, "
            "bias: none, task_type: CAUSAL_LM}"
        ),
    }
    cfg = load_config(_write(tmp_path, data))
    assert (cfg.peft.lora.r, cfg.peft.lora.lora_alpha, cfg.peft.lora.lora_dropout) == (8, 32, 0.1)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["train.stepz=3"], "unknown config key 'train.stepz'"),
        (["train.steps=ten"], "config key 'train.steps': expected int"),
        (["train.steps=1.5"], "config key 'train.steps': expected int"),
        (["sampling.strategy=balanced"], "sampling.strategy"),
        (["model.task=summarisation"], "config key 'model.task'"),
        (["train.batch_size=10", "train.grad_accum_steps=3"], "divisible"),
        (["peft.lora.r=0"], "r"),
        (["nonsense.key=1"], "unknown config key 'nonsense'"),
        (["train=5"], "config key 'train': expected a mapping"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, BASE), overrides)
    assert needle in str(err.value)


def test_missing_model_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing required config key 'model'"):
        load_config(_write(tmp_path, {"train": {"steps": 3}}))


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"train": {"steps": 3}}, ["train.steps.x=1"])


def test_round_trip_through_dict():
    cfg = from_dict(RunConfig, BASE)
    again = from_dict(RunConfig, cfg.to_dict())
    assert again == cfg
    assert again.hash() == cfg.hash()


def test_cli_bad_config_exits_nonzero_with_one_line(tmp_path, capsys):
    path = _write(tmp_path, {**BASE, "train": {"stepz": 3}})
    code = main(["train", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "unknown config key 'train.stepz'" in err[0]


def test_compute_dtype_auto_and_remat(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["train.remat=dots-saveable"])
    assert cfg.train.remat == "dots-saveable" and cfg.model.dtype == "auto"
    assert cfg.model.compute_dtype("cpu") == "float32"
    assert cfg.model.compute_dtype("gpu") == cfg.model.compute_dtype("tpu") == "bfloat16"
    forced = load_config(_write(tmp_path, BASE), ["model.dtype=float32"])
    assert forced.model.compute_dtype("gpu") == "float32"
    with pytest.raises(ConfigError, match="remat"):
        load_config(_write(tmp_path, BASE), ["train.remat=some"])


def test_packing_with_per_language_adapters_is_refused(tmp_path):
    sets = ["data.packing=true", "peft.method=adapters", "peft.adapters.languages=[en, sw]"]
    with pytest.raises((ConfigError, ValueError), match="data.packing with per-language adapters"):
        load_config(_write(tmp_path, BASE), sets)
    assert load_config(_write(tmp_path, BASE), sets[:2]).data.packing
