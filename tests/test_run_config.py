"""The run configuration (common/run_config.py): defaults from pyproject.toml, choices from
the registries, what ``auto`` values resolve to, and a clear error for every bad value."""

from __future__ import annotations

import re

import pytest

from common.run_config import ConfigError, parse_run_config


def test_defaults_come_from_pyproject():
    """The app's [tool.flwr.app.config] is the one place defaults live; every key is there."""
    import tomllib

    from common.defenses import DEFENSES
    from common.run_config import PYPROJECT, RunConfig

    with PYPROJECT.open("rb") as f:
        table = tomllib.load(f)["tool"]["flwr"]["app"]["config"]
    shared = {k.replace("_", "-") for k in RunConfig.__dataclass_fields__} - {"defense-options"}
    assert set(table) == shared | {k for d in DEFENSES.values() for k in d.options}
    # region-size 0 is resolved against image-size, and model auto against the defense: the
    # parsed config holds what is in use.
    assert parse_run_config({}).to_dict() == {**table, "region-size": 8, "model": "region-invariant"}


def test_run_config_choices_come_from_the_registries():
    from flwr.serverapp import strategy as flower_strategies

    from common.data import DATASETS
    from common.models import MODELS
    from common.run_config import EXCHANGES, STRATEGIES
    from common.training import OPTIMIZERS
    from server.exchanges import EXCHANGE_CLASSES

    assert set(EXCHANGE_CLASSES) == set(EXCHANGES)
    assert all(isinstance(getattr(flower_strategies, name), type) for name in STRATEGIES.values())
    for key, registry in (("model", MODELS), ("optimizer", OPTIMIZERS), ("dataset", DATASETS), ("strategy", STRATEGIES)):
        for name in registry:
            assert parse_run_config({key: name}).to_dict()[key] == name
        allowed = ("auto", *registry) if key == "model" else registry
        with pytest.raises(ConfigError, match=f"{key}='nope' is not one of: {', '.join(allowed)}"):
            parse_run_config({key: "nope"})


@pytest.mark.parametrize("defense, scope, model", [
    ("visualmixer", 1, "region-invariant"), ("visualmixer+dp-sgd", 1, "region-invariant"),
    ("visualmixer", 0, "small-cnn"), ("visualmixer", 2, "small-cnn"), ("none", 1, "small-cnn"),
    ("dp-sgd", 1, "small-cnn"),
])
def test_model_auto_trains_the_region_invariant_model_on_images_shuffled_in_place(defense, scope, model):
    config = parse_run_config({"model": "auto", "defense": defense, "region-scope": scope, "exchange": "weights"})
    assert config.model == model and config.learning_keys()["model"] == model
    assert parse_run_config({"model": "small-cnn", "defense": defense}).model == "small-cnn"  # a choice stays


def test_region_scope_reaches_the_transform_the_nodes_use():
    config = parse_run_config({"region-scope": 2, "region-size": 4})
    assert config.active_defense.transform(config).region_scope == 2 and config.learning_keys()["region-scope"] == 2


@pytest.mark.parametrize("side, region", [(32, 8), (64, 16), (224, 32), (28, 4), (96, 16), (10, 2)])
def test_the_default_region_size_keeps_a_grid_of_about_4x4(side, region):
    config = parse_run_config({"image-size": side})
    assert config.region_size == region and config.active_defense.transform(config).region_size == region
    assert parse_run_config({"image-size": side, "region-size": 2}).region_size == 2


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("exchange", "pixels", "exchange='pixels' is not one of: images, activations, weights"),
        ("defense", "dp", "defense='dp' is not one of"),
        ("dataset", "imagenet", "dataset='imagenet' is not one of"),
        ("optimizer", "lbfgs", "optimizer='lbfgs' is not one of: sgd, adam, st-adam"),
        ("batch-size", -4, "batch-size=-4 must be >= 1"),
        ("region-size", 6, "region-size=6 must be a power of two"),
        ("region-size", 64, "region-size=64 must be a power of two that divides image-size=32: 2, 4, 8, 16, 32"),
        ("image-size", 4, "image-size=4 must be in [8, 512]"),
        ("image-size", 1024, "image-size=1024 must be in [8, 512]"),
        ("image-size", 33, "image-size=33 must be even"),
        ("image-size", "64", "image-size='64' must be a number"),
        ("target-vfe", 2.0, "target-vfe=2.0 must be in"),
        ("region-scope", 3, "region-scope=3 must divide the 4x4 grid of regions (region-size=8)"),
        ("region-scope", -1, "region-scope=-1 must be >= 0"),
        ("device", "tpu", "device='tpu' is not one of"),
        ("run-name", "../x", "run-name='../x' must be a plain folder name"),
    ],
)
def test_bad_run_config_fails_at_start(key, value, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        parse_run_config({key: value})

def test_an_installed_wheel_reads_the_defaults_it_carries(tmp_path, monkeypatch):
    """Without the source tree's pyproject.toml, the copy packed into the wheel is read; with
    neither, the error names both places."""
    from common import run_config

    packed = tmp_path / "app_pyproject.toml"
    packed.write_text(run_config.PYPROJECT.read_text())
    monkeypatch.setattr(run_config, "PYPROJECT", tmp_path / "missing.toml")
    monkeypatch.setattr(run_config, "PACKAGED_DEFAULTS", packed)
    run_config.app_defaults.cache_clear()
    try:
        assert parse_run_config({}).exchange == "weights"
        monkeypatch.setattr(run_config, "PACKAGED_DEFAULTS", tmp_path / "also-missing.toml")
        run_config.app_defaults.cache_clear()
        with pytest.raises(ConfigError, match="no pyproject.toml defaults .looked for .*missing.toml"):
            parse_run_config({})
    finally:
        run_config.app_defaults.cache_clear()
