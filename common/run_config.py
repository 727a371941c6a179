"""The run configuration shared by the ClientApp and the ServerApp, checked once at start.

Flower hands both apps ``context.run_config``: the ``[tool.flwr.app.config]`` table of
``pyproject.toml`` merged with ``--run-config`` overrides. That table is the one place the
defaults live; :func:`parse_run_config` fills any key a caller left out from it, turns the
flat mapping into a typed :class:`RunConfig`, and rejects bad values with a message that
names the key, the value and what is allowed, so a typo fails at start, not mid-run. The
allowed values come from the registries of the modules that implement them.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .augment import AUGMENTATIONS
from .config_values import ConfigError, number
from .data import BAD_IMAGES, DATASETS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from .defaults import MAX_TARGET_VFE, default_region_size
from .defenses import DEFENSES, Defense, get_defense
from .models import INPUT_NORMS, MODELS, num_stages
from .protocol import EXCHANGES
from .training import OPTIMIZERS

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# The wheel carries a copy of pyproject.toml here (tool.hatch.build.targets.wheel.force-include).
PACKAGED_DEFAULTS = Path(__file__).resolve().parent / "app_pyproject.toml"
PARTITIONINGS = ("iid", "dirichlet")
# Run-config name -> class of ``flwr.serverapp.strategy`` (resolved by the server, so that
# nothing here imports Flower).
STRATEGIES = {
    "fedavg": "FedAvg",
    "fedavgm": "FedAvgM",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg",
}
# Keys that do not change what the model learns: a run may resume with other values.
# ``num-server-rounds`` may grow to train longer, except under DP-SGD with the noise chosen
# from the budget, where the planned rounds set sigma.
OPERATIONAL_KEYS = frozenset(
    {"output-dir", "run-name", "device", "round-timeout", "min-replies", "data-dir", "eval-samples", "bad-images",
     "max-abs-value", "max-examples-per-reply", "vfe-tolerance", "plateau-rounds", "plateau-margin",
     "update-bound", "activation-bound", "examples-share"}
)


@dataclass(frozen=True)
class RunConfig:
    exchange: str
    defense: str
    dataset: str
    data_dir: str
    bad_images: str
    image_size: int
    partitioning: str
    dirichlet_alpha: float
    num_server_rounds: int
    local_steps: int
    batch_size: int
    upload_samples: int
    server_steps: int
    server_batch_size: int
    server_augment: str
    learning_rate: float
    optimizer: str
    model: str
    input_norm: str
    cut_layer: int
    target_vfe: float
    region_size: int
    region_scope: int
    strategy: str
    min_replies: int
    round_timeout: float
    plateau_rounds: int
    plateau_margin: float
    max_abs_value: float
    max_examples_per_reply: int
    update_bound: float
    activation_bound: float
    examples_share: float
    vfe_tolerance: float
    eval_samples: int
    num_classes: int
    seed: int
    output_dir: str
    run_name: str
    device: str
    target_epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    # Keys that defenses add (``Defense.options``), every registered defense's: (key, value).
    defense_options: tuple[tuple[str, Any], ...] = ()

    @property
    def active_defense(self) -> Defense:
        """The :class:`common.defenses.Defense` that ``defense`` names."""
        return get_defense(self.defense)

    def option(self, key: str) -> Any:
        """The value of a key that a defense adds (``blur-sigma``, ...)."""
        return dict(self.defense_options)[key]

    def to_dict(self) -> dict[str, Any]:
        """The config with Flower's dashed key names."""
        fields = {key.replace("_", "-"): value for key, value in asdict(self).items() if key != "defense_options"}
        return {**fields, **dict(self.defense_options)}

    def learning_keys(self) -> dict[str, Any]:
        """The keys that change what the model learns (a resumed run must keep them): the
        options of defenses not in use are left out."""
        own = set(self.active_defense.options)
        others = {k for k, _ in self.defense_options} - own
        keys = {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL_KEYS | others}
        # Under DP-SGD with sigma chosen from the budget, the planned rounds set sigma.
        if not (self.active_defense.trains_privately and self.noise_multiplier == 0):
            del keys["num-server-rounds"]
        return keys

    def learning_hash(self) -> str:
        """sha256 of :meth:`learning_keys`, stored in checkpoints."""
        return hashlib.sha256(json.dumps(self.learning_keys(), sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=1)
def app_defaults() -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the app's pyproject.toml: the source tree's, else the
    copy an installed wheel carries (``PACKAGED_DEFAULTS``); empty when neither is there."""
    for path in (PYPROJECT, PACKAGED_DEFAULTS):
        if path.exists():
            with path.open("rb") as f:
                return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])
    return {}


def _choice(key: str, value: Any, allowed: Mapping[str, Any] | tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"run-config {key}={value!r} is not one of: {', '.join(allowed)}")
    return value


def _bound(key: str, value: Any) -> float:
    """A multiple of the round's median: 0 (off) or at least 1 (below 1 it would cut the
    median node itself)."""
    bound = number(key, value, float, 0.0)
    if 0 < bound < 1:
        raise ConfigError(f"run-config {key}={bound!r} must be 0 (off) or >= 1: a multiple of the round's median")
    return bound


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"run-config {key}={value!r} must be a non-empty string")
    return value


AUTO_MODEL = "auto"
DEFAULT_MODEL = "small-cnn"  # what ``model = "auto"`` trains unless the defense prefers another


def parse_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """Check and type a Flower run config (dashed keys); keys left out take the app's
    defaults, unknown keys are ignored."""
    fields = RunConfig.__dataclass_fields__
    merged = {**app_defaults(), **raw}
    missing = [k.replace("_", "-") for k in fields if k != "defense_options" and k.replace("_", "-") not in merged]
    if missing:
        raise ConfigError(
            f"run-config has no value for {', '.join(missing)} and no pyproject.toml defaults "
            f"(looked for {PYPROJECT} and {PACKAGED_DEFAULTS})"
        )
    value = merged.get
    exchange = _choice("exchange", value("exchange"), EXCHANGES)
    defense = _choice("defense", value("defense"), DEFENSES)
    if exchange in (refused := get_defense(defense).refused_exchanges):
        raise ConfigError(f"run-config defense={defense!r} with exchange={exchange!r} is refused: {refused[exchange]}")
    model = _choice("model", value("model"), (AUTO_MODEL, *MODELS))
    image_size = number("image-size", value("image-size"), int, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    if image_size % 2:
        raise ConfigError(f"run-config image-size={image_size} must be even: regions are powers of two that divide it")
    region_size = number("region-size", value("region-size"), int, 0) or default_region_size(image_size)
    if region_size < 2 or region_size & (region_size - 1) or image_size % region_size:
        sizes = [2**k for k in range(1, 10) if image_size % 2**k == 0]
        raise ConfigError(
            f"run-config region-size={region_size} must be a power of two that divides image-size={image_size}: "
            f"{', '.join(map(str, sizes))}, or 0 (image-size / 4)"
        )
    region_scope = number("region-scope", value("region-scope"), int, 0)
    server_augment = _choice("server-augment", value("server-augment"), AUGMENTATIONS)
    run_name = _text("run-name", value("run-name"))
    if "/" in run_name or run_name in (".", ".."):
        raise ConfigError(f"run-config run-name={run_name!r} must be a plain folder name")
    device = value("device")
    if not isinstance(device, str) or not (
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ConfigError(f"run-config device={device!r} is not one of: auto, cpu, cuda, cuda:N")
    options = []
    for name, option in {k: o for d in DEFENSES.values() for k, o in d.options.items()}.items():
        if name not in merged:
            raise ConfigError(f"run-config has no value for {name} (a key of defense options) and no pyproject.toml default")
        options.append((name, option.parse(name, merged[name])))
    config = RunConfig(
        exchange=exchange,
        defense=defense,
        dataset=_choice("dataset", value("dataset"), DATASETS),
        data_dir=str(value("data-dir")),
        bad_images=_choice("bad-images", value("bad-images"), BAD_IMAGES),
        image_size=image_size,
        partitioning=_choice("partitioning", value("partitioning"), PARTITIONINGS),
        dirichlet_alpha=number("dirichlet-alpha", value("dirichlet-alpha"), float, 1e-6),
        num_server_rounds=number("num-server-rounds", value("num-server-rounds"), int, 1),
        local_steps=number("local-steps", value("local-steps"), int, 1),
        batch_size=number("batch-size", value("batch-size"), int, 1),
        upload_samples=number("upload-samples", value("upload-samples"), int, 0),
        server_steps=number("server-steps", value("server-steps"), int, 1),
        server_batch_size=number("server-batch-size", value("server-batch-size"), int, 1),
        server_augment=server_augment,
        learning_rate=number("learning-rate", value("learning-rate"), float, 1e-12),
        optimizer=_choice("optimizer", value("optimizer"), OPTIMIZERS),
        model=model if model != AUTO_MODEL else DEFAULT_MODEL,
        input_norm=_choice("input-norm", value("input-norm"), INPUT_NORMS),
        cut_layer=number("cut-layer", value("cut-layer"), int, 1),
        target_vfe=number("target-vfe", value("target-vfe"), float, 0.0, MAX_TARGET_VFE),
        region_size=region_size,
        region_scope=region_scope,
        strategy=_choice("strategy", value("strategy"), STRATEGIES),
        min_replies=number("min-replies", value("min-replies"), int, 1),
        round_timeout=number("round-timeout", value("round-timeout"), float, 1.0),
        plateau_rounds=number("plateau-rounds", value("plateau-rounds"), int, 0),
        plateau_margin=number("plateau-margin", value("plateau-margin"), float, 0.0, 1.0),
        max_abs_value=number("max-abs-value", value("max-abs-value"), float, 1e-6),
        max_examples_per_reply=number("max-examples-per-reply", value("max-examples-per-reply"), int, 0),
        update_bound=_bound("update-bound", value("update-bound")),
        activation_bound=_bound("activation-bound", value("activation-bound")),
        examples_share=_bound("examples-share", value("examples-share")),
        vfe_tolerance=number("vfe-tolerance", value("vfe-tolerance"), float, 0.0, MAX_TARGET_VFE),
        eval_samples=number("eval-samples", value("eval-samples"), int, 0),
        num_classes=number("num-classes", value("num-classes"), int, 0),
        seed=number("seed", value("seed"), int, 0),
        output_dir=_text("output-dir", value("output-dir")),
        run_name=run_name,
        device=device,
        target_epsilon=number("target-epsilon", value("target-epsilon"), float, 1e-3),
        delta=number("delta", value("delta"), float, 1e-12, 0.1),
        max_grad_norm=number("max-grad-norm", value("max-grad-norm"), float, 1e-6),
        noise_multiplier=number("noise-multiplier", value("noise-multiplier"), float, 0.0),
        defense_options=tuple(options),
    )
    config.active_defense.check(config)
    if model == AUTO_MODEL:
        config = replace(config, model=config.active_defense.preferred_model(config) or DEFAULT_MODEL)
    number("cut-layer", config.cut_layer, int, 1, num_stages(config.model) - 1)
    return config
