"""``visualmixer check DIR``: will a run learn on this image folder? Answered in about a minute.

The folder is read exactly as a run reads it (the same decode, cache and ``image-size``);
the report gives the classes and their counts, the files that could not be decoded, a
sheet of a few images per class as the model sees them (and obfuscated, under
VisualMixer), and the test accuracy of the run's default model trained centrally for
``seconds`` (45 by default) on a small split, against chance (the most frequent test
class), with its training loss against the loss of guessing, ln(classes). A model whose
training loss does not leave ln(classes) will not learn in a run either: change the data
or the recipe first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import ImageSet, read_folder
from .models import build_model
from .run_config import RunConfig, parse_run_config
from .training import evaluate, make_optimizer, mean_loss, obfuscate_once, train_steps

STEPS_PER_CHECK = 10  # optimizer steps between two looks at the clock
SHEET_PER_CLASS = 8
LOSS_WINDOW = 20  # steps whose mean training loss is compared with ln(classes)
LOSS_DROP = 0.02  # a drop below ln(classes) by this fraction counts as learning
DECISIVE_STEPS = 300  # steps after which a loss still at ln(classes) means "not learning"
EVALUATE_EVERY = 50  # steps between looks at the test images (training stops once above chance)


@dataclass
class CheckReport:
    root: str
    image_size: int
    defense: str
    model: str
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    unreadable: dict[str, tuple[str, ...]]  # split -> paths
    sheet: str | None = None
    steps: int = 0
    train_seconds: float = 0.0
    train_images: int = 0
    test_images: int = 0
    accuracy: float = math.nan
    chance: float = math.nan
    train_loss: float = math.nan  # mean of the last LOSS_WINDOW steps
    notes: list[str] = field(default_factory=list)

    @property
    def margin(self) -> float:
        """How far above chance the accuracy must be to count: three binomial deviations."""
        return 3 * math.sqrt(self.chance * (1 - self.chance) / max(1, self.test_images))

    @property
    def learns(self) -> bool:
        """Test accuracy above chance by more than :attr:`margin`."""
        return self.accuracy > self.chance + self.margin

    @property
    def loss_falls(self) -> bool:
        """The training loss has left the loss of guessing, ln(classes), by ``LOSS_DROP``:
        the model learns, even when too few steps fit in the time to show it on test images."""
        return self.train_loss < (1 - LOSS_DROP) * math.log(len(self.classes))

    @property
    def outcome(self) -> str:
        """``learns``, ``learning`` (the loss falls), ``undecided`` (too few steps to tell)
        or ``not-learning`` (the loss stayed at ln(classes) for :data:`DECISIVE_STEPS`)."""
        if self.learns:
            return "learns"
        if self.loss_falls:
            return "learning"
        return "undecided" if self.steps < DECISIVE_STEPS else "not-learning"

    @property
    def verdict(self) -> str:
        return {
            "learns": "learns",
            "learning": "learning: the training loss falls, test accuracy not yet above chance",
            "undecided": f"undecided: the loss has not left ln(classes) in {self.steps} steps; give it "
                         f"{DECISIVE_STEPS} (--seconds)",
            "not-learning": "NOT learning: the training loss stays at ln(classes); a run with these settings "
                            "is unlikely to learn",
        }[self.outcome]

    def lines(self) -> list[str]:
        out = [f"{self.root}: {len(self.classes)} classes at image-size {self.image_size}, defense {self.defense}"]
        width = max(len(c) for c in self.classes)
        out.append(f"  {'class':<{width}}  {'train':>7}  {'test':>7}")
        for name in self.classes:
            out.append(f"  {name:<{width}}  {self.counts['train'].get(name, 0):>7}  {self.counts['test'].get(name, 0):>7}")
        for split, paths in self.unreadable.items():
            if paths:
                shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
                out.append(f"  unreadable in {split}/: {len(paths)} file(s), skipped: {shown}")
        if not any(self.unreadable.values()):
            out.append("  unreadable files: none")
        out += [f"  note: {n}" for n in self.notes]
        if self.sheet:
            out.append(f"  images as the model sees them: {self.sheet}")
        if self.steps:
            out.append(
                f"  {self.model}, {self.steps} steps in {self.train_seconds:.0f} s on {self.train_images} images: "
                f"train loss {self.train_loss:.3f} (ln {len(self.classes)} = {math.log(len(self.classes)):.3f}), "
                f"accuracy {self.accuracy:.3f} on {self.test_images} test images, chance {self.chance:.3f} "
                f"({self.accuracy / self.chance:.1f}x): {self.verdict}"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "image-size": self.image_size, "defense": self.defense, "model": self.model,
            "classes": list(self.classes), "counts": self.counts,
            "unreadable": {k: list(v) for k, v in self.unreadable.items()}, "sheet": self.sheet,
            "steps": self.steps, "train-seconds": round(self.train_seconds, 1), "train-images": self.train_images,
            "test-images": self.test_images, "accuracy": self.accuracy, "chance": self.chance,
            "train-loss": self.train_loss, "outcome": self.outcome if self.steps else None,
            "verdict": self.verdict if self.steps else None,
            "notes": self.notes,
        }


def check_config(root: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The run config a ``folder`` run on ``root`` would use: the app's defaults, then
    ``overrides`` (dashed run-config keys)."""
    return parse_run_config({**(overrides or {}), "dataset": "folder", "data-dir": str(root)})


def class_counts(data: ImageSet) -> dict[str, int]:
    counts = torch.bincount(data.labels, minlength=data.num_classes).tolist()
    return dict(zip(data.classes, counts))


def _pick(data: ImageSet, count: int, seed: int) -> ImageSet:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[:count])


def write_sheet(data: ImageSet, config: RunConfig, path: Path) -> Path:
    """A PNG with up to :data:`SHEET_PER_CLASS` images of each class per row, as the model
    sees them; under an image defense each row is followed by the same images transformed."""
    from torchvision.utils import save_image

    rows = []
    for label in range(data.num_classes):
        members = (data.labels == label).nonzero().flatten()[:SHEET_PER_CLASS]
        row = torch.zeros(SHEET_PER_CLASS, *data.images.shape[1:], dtype=torch.uint8)
        row[: len(members)] = data.images[members]
        rows.append(row)
        if config.active_defense.transforms_images:
            mixed = obfuscate_once(row, lambda s: config.active_defense.image_transform(config, s), config.seed)
            mixed[len(members):] = 0
            rows.append(mixed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows).float() / 255, path, nrow=SHEET_PER_CLASS, padding=2, pad_value=1.0)
    return path


def run_check(
    root: str | Path,
    overrides: dict[str, Any] | None = None,
    seconds: float = 45.0,
    train_images: int = 4000,
    test_images: int = 1000,
    sheet: Path | None = None,
    max_steps: int | None = None,
) -> CheckReport:
    """Read ``root`` as a run would, write the sheet to ``sheet`` (if given), and train the
    run's model for about ``seconds`` (0: do not train), or ``max_steps`` if fewer."""
    config = check_config(root, overrides)
    resolved = str(Path(config.data_dir).expanduser().resolve())
    train, bad_train = read_folder(resolved, "train", config.image_size, config.bad_images)
    test, bad_test = read_folder(resolved, "test", config.image_size, config.bad_images)
    report = CheckReport(
        root=str(root), image_size=config.image_size, defense=config.defense, model=config.model,
        classes=train.classes, counts={"train": class_counts(train), "test": class_counts(test)},
        unreadable={"train": bad_train, "test": bad_test},
    )
    if test.classes != train.classes:
        report.notes.append(f"test/ has classes {list(test.classes)}, train/ has {list(train.classes)}")
    empty = [name for name, n in report.counts["train"].items() if n == 0]
    if empty:
        report.notes.append(f"classes with no training image: {', '.join(empty)}")
    if sheet is not None:
        report.sheet = str(write_sheet(train, config, sheet))
    if seconds > 0 and test.classes == train.classes:
        _train_and_score(
            report, config, _pick(train, train_images, config.seed), _pick(test, test_images, config.seed), seconds,
            max_steps,
        )
    return report


def _train_and_score(
    report: CheckReport, config: RunConfig, train: ImageSet, test: ImageSet, seconds: float, max_steps: int | None
) -> None:
    torch.manual_seed(config.seed)
    model = build_model(
        config.model, train.images.shape[1], train.num_classes, config.image_size, config.region_size, config.input_norm
    )
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.learning_rate)
    defense = config.active_defense
    mixer = defense.image_transform(config)  # a fresh draw per batch; None: no transform
    generator = torch.Generator().manual_seed(config.seed)
    # Scored as a run scores: on test images transformed once.
    images = test.images if mixer is None else obfuscate_once(
        test.images, lambda s: defense.image_transform(config, s), config.seed + 1
    )
    report.train_images, report.test_images = len(train), len(test)
    report.chance = float(torch.bincount(test.labels, minlength=test.num_classes).max()) / len(test)
    start = time.perf_counter()
    losses: list[float] = []
    while time.perf_counter() - start < seconds and (max_steps is None or report.steps < max_steps):
        losses += train_steps(
            model, train.images, train.labels, optimizer, STEPS_PER_CHECK, config.batch_size, mixer, generator=generator
        )
        report.steps += STEPS_PER_CHECK
        if report.steps % EVALUATE_EVERY == 0:
            report.accuracy, _ = evaluate(model, images, test.labels)
            if report.learns:
                break  # answered: no need to spend the rest of the time
    report.train_loss = mean_loss(losses[-LOSS_WINDOW:])[0]
    report.train_seconds = time.perf_counter() - start
    report.accuracy, _ = evaluate(model, images, test.labels)
