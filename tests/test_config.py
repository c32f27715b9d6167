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


# --- the config reference (`langtune config`) ------------------------------------------------


def _dataclass_keys(cls, prefix=""):
    """Every leaf key of a config dataclass tree, walked independently of config_reference."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _dataclass_keys(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield f"{prefix}{f.name}"
            yield from _dataclass_keys(typing.get_args(tp)[0], f"{prefix}{f.name}.<i>.")
        else:
            yield f"{prefix}{f.name}"


def test_config_lists_every_dataclass_field_with_a_doc(capsys):
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line for line in lines if line.startswith("  ")}
    keys = list(_dataclass_keys(RunConfig))
    assert len(keys) > 80
    missing = [k for k in keys if k not in listed]
    assert not missing, missing
    from langtune_jax.config_reference import config_reference

    rows = {r.key: r for r in config_reference()}
    undocumented = [k for k in keys if not rows[k].doc]
    assert not undocumented, undocumented
    assert rows["train.steps"].type == "int" and rows["train.steps"].default == "1000"
    assert rows["model.name_or_path"].default == "required"
    assert rows["train.max_grad_norm"].type == "float | null"
    assert "default 1000" in listed["train.steps"] and "optimizer steps" in listed["train.steps"]


def test_config_shows_the_values_of_a_config(capsys):
    path = ROOT / "configs" / "demo.yaml"
    assert (
        main(["config", str(path), "--set", "train.steps=7", "data.sources.0.splits=[train]"]) == 0
    )
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.split()[:1] == ["train.steps"])
    assert "default 1000" in line and "*7 " in line
    line = next(s for s in out.splitlines() if s.split()[:1] == ["data.sources.0.splits"])
    assert "[train]" in line
    assert "data.sources.<i>.path" not in out  # one row set per source actually there


def test_set_takes_several_pairs_after_one_flag_and_repeats(tmp_path, capsys):
    import argparse

    from langtune_jax.cli import build_parser, parse_args

    parser = build_parser()
    args = parse_args(
        ["train", "c.yaml", "--set", "train.steps=3", "run.seed=4", "--set", "run.name=x", "-v"],
        parser,
    )
    assert args.config == "c.yaml" and args.verbose is True
    assert args.overrides == ["train.steps=3", "run.seed=4", "run.name=x"]
    # CONFIG after --set: argparse hands it to --set; it is taken back.
    args = parse_args(["plan", "--set", "train.steps=3", "run.seed=4", "c.yaml"], parser)
    assert args.config == "c.yaml" and args.overrides == ["train.steps=3", "run.seed=4"]
    assert isinstance(args, argparse.Namespace) and args.verbose is False


def test_version_and_verbose_after_the_subcommand(capsys):
    from langtune_jax import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"langtune {__version__}"
    assert main(["config", "-v"]) == 0


def test_every_cli_argument_has_help():
    import argparse

    from langtune_jax.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("langtune", parser), *subs.choices.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name}: {action.dest} has no help"


def test_list_items_are_overridden_by_index():
    data = {"data": {"sources": [{"path": "a"}, {"path": "b"}]}}
    apply_overrides(
        data, ["data.sources.1.path=c", "data.sources.2.path=d", "data.sources.0.splits=[x]"]
    )
    assert data["data"]["sources"] == [
        {"path": "a", "splits": ["x"]},
        {"path": "c"},
        {"path": "d"},
    ]
    fresh = apply_overrides({}, ["data.sources.0.path=e"])
    assert fresh == {"data": {"sources": [{"path": "e"}]}}
    with pytest.raises(ConfigError, match="has 2 item"):
        apply_overrides({"data": {"sources": [{}, {}]}}, ["data.sources.5.path=x"])
    with pytest.raises(ConfigError, match="is a list; index its items by number"):
        apply_overrides({"data": {"sources": [{}]}}, ["data.sources.path=x"])


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (tmp_path / "model").mkdir()
    path = folder / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": "../model"},
                "data": {
                    "sources": [
                        {"path": "../data/{split}"},
                        {"path": "someone/hub-dataset", "format": "hf", "splits": ["train"]},
                    ]
                },
            }
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path, ["model.tokenizer=tok"])
    assert cfg.model.name_or_path == str(tmp_path / "model")
    assert cfg.data.sources[0].path == str(tmp_path / "data" / "{split}")
    assert cfg.data.sources[1].path == "someone/hub-dataset"  # a Hub name stays one
    assert cfg.model.tokenizer == "tok"  # no such folder here: a Hub id
    assert cfg.run.output_dir == "runs"  # written where you run


def test_shipped_demo_plans_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", str(ROOT / "configs" / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    for lang in ("en", "es", "qu", "sw", "yo"):
        assert lang in out


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
    with pytest.raises((ConfigError, ValueError), match="data.packing.*per-language adapters"):
        load_config(_write(tmp_path, BASE), sets)
    assert load_config(_write(tmp_path, BASE), sets[:2]).data.packing


@pytest.mark.parametrize(
    "sets, key",
    [
        (
            ["model.task=causal-lm", "peft.method=adapters", "peft.adapters.languages=[en, sw]"],
            "peft.adapters.languages",
        ),
        (["peft.method=lora", "peft.lora_languages=[en, sw]"], "peft.lora_languages"),
        (
            ["peft.method=adapters", "peft.adapters.language_adapters={en: a, sw: b}"],
            "peft.adapters.language_adapters",
        ),
    ],
)
def test_packing_with_any_per_language_routing_is_refused(tmp_path, sets, key):
    """Every way of giving languages their own adapter routes a packed row by one language."""
    with pytest.raises(ConfigError, match=f"data.packing.*{key.replace('.', '[.]')}"):
        load_config(_write(tmp_path, BASE), ["data.packing=true", *sets])
    assert not load_config(_write(tmp_path, BASE), sets).data.packing


def test_train_signal_dynamic_weights_with_packed_lm_rows_are_refused(tmp_path):
    """A packed causal row holds several languages: its loss cannot steer one language's weight."""
    sets = ["model.task=causal-lm", "sampling.strategy=dynamic", "data.packing=true"]
    with pytest.raises(ConfigError, match="sampling.dynamic.signal.*data.packing: false"):
        load_config(_write(tmp_path, BASE), sets)
    assert load_config(_write(tmp_path, BASE), [*sets, "sampling.dynamic.signal=eval"])
    assert load_config(_write(tmp_path, BASE), [*sets[1:]]).data.packing  # classification: exact


@pytest.mark.parametrize(
    "sets, unused",
    [
        (
            ["peft.method=lora", "peft.adapters.reduction_factor=8"],
            ["peft.adapters.reduction_factor"],
        ),
        (["peft.method=adapters", "peft.lora.r=4"], ["peft.lora.r"]),
        (["peft.method=none", "peft.lora.r=4"], ["peft.lora.r"]),
        (["peft.method=lora+adapters", "peft.lora.r=4", "peft.adapters.reduction_factor=8"], []),
        (["sampling.strategy=inverse", "sampling.alpha=0.5"], ["sampling.alpha"]),
        (["sampling.strategy=temperature", "sampling.alpha=0.5"], []),
        (["sampling.strategy=natural", "sampling.weights={en: 1}"], ["sampling.weights"]),
        (["sampling.strategy=unimax", "sampling.budget=100", "sampling.max_epochs=2"], []),
        (["sampling.strategy=uniform", "sampling.dynamic.eta=2"], ["sampling.dynamic.eta"]),
        (
            [
                "sampling.strategy=dynamic",
                "sampling.dynamic.prior=temperature",
                "sampling.alpha=0.5",
            ],
            [],
        ),
        (["sampling.strategy=dynamic", "sampling.alpha=0.5"], ["sampling.alpha"]),
        (["sampling.strategy=inverse", "sampling.multipliers={en: 2}"], []),
    ],
)
def test_options_the_run_does_not_read_are_listed(tmp_path, sets, unused):
    """An option of the other method or strategy changes nothing: the run names it (warning)."""
    assert load_config(_write(tmp_path, BASE), sets).unused_options() == unused


def test_train_warns_about_unread_options_before_it_loads_anything(tmp_path, caplog):
    from langtune_jax.train import train

    cfg = load_config(
        _write(tmp_path, BASE), ["sampling.alpha=0.5", "peft.adapters.reduction_factor=8"]
    )
    cfg.model.name_or_path = str(tmp_path / "no-such-model")
    with caplog.at_level("WARNING"), pytest.raises(FileNotFoundError, match="no-such-model"):
        train(cfg, tmp_path / "run")
    (warning,) = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert "peft.adapters.reduction_factor, sampling.alpha are set but not read" in warning
    assert "peft.method 'lora' and sampling.strategy 'natural'" in warning
    assert not (tmp_path / "run").exists()


def test_a_warmup_longer_than_the_run_is_kept_and_warned_about(tmp_path, caplog):
    from langtune_jax.train.preflight import warn_config

    cfg = load_config(_write(tmp_path, BASE), ["train.steps=60", "train.warmup_steps=100"])
    with caplog.at_level("WARNING"):
        warn_config(cfg)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "train.warmup_steps (100) is more than train.steps (60)" in warning
    assert "ends near 60% of train.learning_rate" in warning
    caplog.clear()
    with caplog.at_level("WARNING"):
        warn_config(
            load_config(_write(tmp_path, BASE), ["train.steps=60", "train.warmup_steps=60"])
        )
    assert not caplog.records
