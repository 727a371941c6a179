"""Presets of :mod:`simulations.compare` as data: ``simulations/presets/<name>.toml``.

A preset fixes everything a comparison runs (clients, rounds, data sizes, every attack's
steps). Copy one of the files beside this module, edit it, and pass its path with
``--preset``; a key that is missing, unknown or of the wrong type is refused with its name.
"""

from __future__ import annotations

import tomllib
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class Preset:
    clients: int
    rounds: int
    victim_train: int  # images shared out between the clients (0 = all not kept public)
    test: int  # test images (0 = all)
    public: int  # the attacker's own labelled images, disjoint from the victims'
    local_steps: int
    batch_size: int
    upload_samples: int
    server_steps: int
    learning_rate: float
    attack_victims: int  # test images every attack is scored on
    recogniser_steps: int
    recogniser_augment: bool  # flips and shifts: the clean recogniser at full strength
    adaptive_steps: int  # each adaptive recogniser (mosaic-trained, obfuscation-trained)
    statistics_steps: int  # each region-statistics classifier (an MLP: cheap)
    linkage_pool: int  # candidate originals the linkage attacker searches (the true one included)
    inverse_steps: int
    decoder_steps: int
    inversion_steps: int
    inversion_batches: int
    inversion_batch_size: int
    network_width: int  # channels of the attack U-Nets at full resolution
    arm_timeout: int  # seconds before a stuck run is stopped and retried
    parallel_runs: int  # arms whose `flwr run` goes on at the same time
    ray_cpus: int  # CPUs each run's Ray may use = ClientApp actors (0 = all)
    model: str = "small-cnn"  # what every arm trains, and what the activations/weights attacks load
    image_size: int = 32  # every image is resized to this side (the app's image-size)
    # The images exchange's upload per client per round (0 = all its images), where it
    # differs from ``upload_samples``: uploads there are small and the server trains on all
    # it has received, while an activations upload is ~20x larger per image.
    images_upload_samples: int | None = None
    # Arms run when --defenses is not given (() = all): a label runs in every exchange that
    # accepts it, an exchange-label name (``images-pix``) in that exchange only.
    defenses: tuple[str, ...] = ()
    seeds: int = 1  # seeds run when --seeds is not given, each into DIR/seed-S when more than one
    # The images exchange's ``server-augment``: (without an image defense, with one). The
    # augmentation must commute with the defense, so VisualMixer arms get flips only.
    server_augment: tuple[str, str] = ("none", "none")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_preset(name_or_path: str) -> Preset:
    """The preset ``simulations/presets/<name>.toml``, or the TOML file at a path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PRESETS_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ValueError(f"--preset {name_or_path!r} is not one of: {', '.join(preset_names())}, or a .toml file")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"--preset {str(path)!r}: {err}") from err
    known = {f.name: f for f in fields(Preset)}
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"{path}: unknown key {key!r} (keys: {', '.join(k.replace('_', '-') for k in known)})")
        values[name] = tuple(value) if isinstance(value, list) else value
    for name, field in known.items():
        if name not in values and field.default is MISSING and field.default_factory is MISSING:
            raise ValueError(f"{path}: missing key {name.replace('_', '-')!r}")
    preset = Preset(**values)
    for name, field in known.items():
        value = getattr(preset, name)
        expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(str(field.type).split(" ")[0])
        if value is None and "None" in str(field.type):
            continue
        if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
            raise ValueError(f"{path}: {name.replace('_', '-')}={value!r} must be {str(field.type)}")
    if preset.seeds < 1:
        raise ValueError(f"{path}: seeds={preset.seeds} must be at least 1")
    return preset
