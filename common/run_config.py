"""The run configuration shared by the ClientApp and the ServerApp, checked once at start.

Flower hands both apps ``context.run_config``: the ``[tool.flwr.app.config]`` table of
``pyproject.toml`` merged with ``--run-config`` overrides. :func:`parse_run_config` turns
that flat mapping into a typed :class:`RunConfig` and rejects bad values with a message that
names the key, the value and what is allowed, so a typo fails at start, not mid-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .data import DATASETS
from .models import MODELS
from .training import OPTIMIZERS
from .visualmixer._checks import MAX_TARGET_VFE

EXCHANGES = ("images", "activations", "weights")
DEFENSES = ("none", "visualmixer", "dp-sgd", "visualmixer+dp-sgd")
PARTITIONINGS = ("iid", "dirichlet")
STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian", "fedtrimmedavg")


class ConfigError(ValueError):
    """A run-config value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class RunConfig:
    exchange: str = "weights"
    defense: str = "visualmixer"
    dataset: str = "shapes"
    data_dir: str = ""
    partitioning: str = "iid"
    dirichlet_alpha: float = 0.5
    num_server_rounds: int = 8
    local_steps: int = 60
    batch_size: int = 64
    upload_samples: int = 256
    server_steps: int = 40
    server_batch_size: int = 64
    learning_rate: float = 0.002
    optimizer: str = "adam"
    model: str = "small-cnn"
    cut_layer: int = 1
    target_vfe: float = 0.8
    region_size: int = 8
    strategy: str = "fedavg"
    min_replies: int = 1
    round_timeout: float = 600.0
    eval_samples: int = 500
    num_classes: int = 0
    seed: int = 0
    output_dir: str = "outputs"
    run_name: str = "default"
    device: str = "auto"
    target_epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0

    @property
    def uses_visualmixer(self) -> bool:
        return "visualmixer" in self.defense.split("+")

    @property
    def uses_dp(self) -> bool:
        return "dp-sgd" in self.defense.split("+")

    def to_dict(self) -> dict[str, Any]:
        """The config with Flower's dashed key names."""
        return {key.replace("_", "-"): value for key, value in asdict(self).items()}


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"run-config {key}={value!r} is not one of: {', '.join(allowed)}")
    return value


def _number(key: str, value: Any, kind: type, minimum: float, maximum: float | None = None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"run-config {key}={value!r} must be a number")
    if kind is int and float(value) != int(value):
        raise ConfigError(f"run-config {key}={value!r} must be a whole number")
    value = kind(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"run-config {key}={value!r} must be {bound}")
    return value


def parse_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """Check and type a Flower run config (dashed keys); unknown keys are ignored."""
    defaults = RunConfig().to_dict()
    merged = {**defaults, **{k: v for k, v in raw.items() if k in defaults}}
    g = merged.get
    exchange = _choice("exchange", g("exchange"), EXCHANGES)
    defense = _choice("defense", g("defense"), DEFENSES)
    if "dp-sgd" in defense and exchange == "images":
        raise ConfigError(
            f"run-config defense={defense!r} with exchange='images' is refused: DP-SGD noises "
            "gradients, it does not hide uploaded images (use defense 'visualmixer', or "
            "exchange 'weights' or 'activations' for DP-SGD)"
        )
    model = _choice("model", g("model"), MODELS)
    region_size = _number("region-size", g("region-size"), int, 2)
    if region_size & (region_size - 1) or 32 % region_size:
        raise ConfigError(
            f"run-config region-size={region_size} must be a power of two that divides the "
            "32x32 images: 2, 4, 8, 16 or 32"
        )
    for key in ("run-name", "output-dir"):
        if not isinstance(g(key), str) or not g(key).strip():
            raise ConfigError(f"run-config {key}={g(key)!r} must be a non-empty string")
    if "/" in g("run-name") or g("run-name") in (".", ".."):
        raise ConfigError(f"run-config run-name={g('run-name')!r} must be a plain folder name")
    device = g("device")
    if not isinstance(device, str) or not (
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ConfigError(f"run-config device={device!r} is not one of: auto, cpu, cuda, cuda:N")
    return RunConfig(
        exchange=exchange,
        defense=defense,
        dataset=_choice("dataset", g("dataset"), DATASETS),
        data_dir=str(g("data-dir")),
        partitioning=_choice("partitioning", g("partitioning"), PARTITIONINGS),
        dirichlet_alpha=_number("dirichlet-alpha", g("dirichlet-alpha"), float, 1e-6),
        num_server_rounds=_number("num-server-rounds", g("num-server-rounds"), int, 1),
        local_steps=_number("local-steps", g("local-steps"), int, 1),
        batch_size=_number("batch-size", g("batch-size"), int, 1),
        upload_samples=_number("upload-samples", g("upload-samples"), int, 0),
        server_steps=_number("server-steps", g("server-steps"), int, 1),
        server_batch_size=_number("server-batch-size", g("server-batch-size"), int, 1),
        learning_rate=_number("learning-rate", g("learning-rate"), float, 1e-12),
        optimizer=_choice("optimizer", g("optimizer"), OPTIMIZERS),
        model=model,
        cut_layer=_number("cut-layer", g("cut-layer"), int, 1, 3 if model == "small-cnn" else 5),
        target_vfe=_number("target-vfe", g("target-vfe"), float, 0.0, MAX_TARGET_VFE),
        region_size=region_size,
        strategy=_choice("strategy", g("strategy"), STRATEGIES),
        min_replies=_number("min-replies", g("min-replies"), int, 1),
        round_timeout=_number("round-timeout", g("round-timeout"), float, 1.0),
        eval_samples=_number("eval-samples", g("eval-samples"), int, 0),
        num_classes=_number("num-classes", g("num-classes"), int, 0),
        seed=_number("seed", g("seed"), int, 0),
        output_dir=g("output-dir"),
        run_name=g("run-name"),
        device=device,
        target_epsilon=_number("target-epsilon", g("target-epsilon"), float, 1e-3),
        delta=_number("delta", g("delta"), float, 1e-12, 0.1),
        max_grad_norm=_number("max-grad-norm", g("max-grad-norm"), float, 1e-6),
        noise_multiplier=_number("noise-multiplier", g("noise-multiplier"), float, 0.0),
    )
