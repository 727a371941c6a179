"""The server's own work in plain PyTorch (no Flower types): the shared model, training on
what clients upload, centralized evaluation, checkpoints and the run's files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from common.augment import CLEAN_MAX_SHIFT, augmenter
from common.data import DATASETS, DataError, ImageSet, cached_dataset
from common.models import build_model, split_model
from common.protocol import EXCHANGES
from common.run_config import ConfigError, RunConfig
from common.training import (
    EVALUATION_ROUND,
    SERVER_NODE,
    evaluate,
    finite_step,
    make_optimizer,
    mean_loss,
    obfuscate_once,
    resolve_device,
    round_seed,
    train_steps,
)
from server.plateau import plateau_warning
from server.run_store import RunStore

log = logging.getLogger("flwr")
BUFFER_LIMIT = 50_000  # most obfuscated uploads the server keeps for training


def dataset_shape(config: RunConfig) -> tuple[int, int]:
    """(channels, classes) of the run's data without needing the data itself."""
    info = DATASETS[config.dataset]
    if config.num_classes or info.classes:
        return info.channels, config.num_classes or info.classes
    try:
        return 3, cached_dataset(
            "folder", "test", config.data_dir or None, config.seed, config.bad_images, config.image_size
        ).num_classes
    except (DataError, ValueError) as err:
        raise ConfigError(
            f"run-config num-classes=0 and the server cannot read the folder data set to count "
            f"classes ({err}); set num-classes"
        ) from err


class NonFiniteModel(RuntimeError):
    """The model went NaN or infinite: the round cannot be kept."""


@dataclass
class ServerTrainer:
    config: RunConfig
    flower_run_id: int | None = None  # recorded in config.json, to join the folder with `flwr list`
    store: RunStore = field(init=False)
    model: torch.nn.Sequential = field(init=False)
    optimizer: torch.optim.Optimizer | None = field(init=False, default=None)
    buffer: list[tuple[torch.Tensor, torch.Tensor]] = field(init=False, default_factory=list)
    test_set: ImageSet | None = field(init=False, default=None)
    start_round: int = field(init=False, default=1)
    samples_saved: bool = field(init=False, default=False)
    skipped_steps: int = field(init=False, default=0)  # of the last round: non-finite loss or gradient
    _central_images: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        cfg = self.config
        self.device = resolve_device(cfg.device)
        self.channels, self.num_classes = dataset_shape(cfg)
        torch.manual_seed(cfg.seed)
        self.model = build_model(
            cfg.model, self.channels, self.num_classes, cfg.image_size, cfg.region_size, cfg.input_norm
        ).to(self.device)
        if EXCHANGES[cfg.exchange].server_trains is not None:
            self.optimizer = make_optimizer(cfg.optimizer, self.trained_part.parameters(), cfg.learning_rate)
        self.store = RunStore(cfg.output_dir, cfg.run_name)
        self._load_test_set()
        self._resume()
        self.store.write_config(cfg.to_dict(), self.flower_run_id)
        self.store.clear_summary()

    # -- model parts -----------------------------------------------------------------------
    @property
    def client_part(self) -> torch.nn.Sequential:
        return split_model(self.model, self.config.cut_layer)[0]

    @property
    def server_part(self) -> torch.nn.Sequential:
        return split_model(self.model, self.config.cut_layer)[1]

    @property
    def trained_part(self) -> torch.nn.Module:
        """What the server itself trains: the top in split learning, else the whole model."""
        return self.server_part if EXCHANGES[self.config.exchange].server_trains == "top" else self.model

    def activation_shape(self) -> tuple[int, ...]:
        with torch.no_grad():
            side = self.config.image_size
            probe = torch.zeros(1, self.channels, side, side, device=self.device)
            return tuple(self.client_part(probe).shape[1:])

    def state_dict(self, part: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        module = self.model if part is None else part
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    # -- set-up ----------------------------------------------------------------------------
    def _load_test_set(self) -> None:
        """Centralized evaluation needs the test split on the server (always in simulation)."""
        try:
            test = cached_dataset(
                self.config.dataset, "test", self.config.data_dir or None, self.config.seed, self.config.bad_images,
                self.config.image_size,
            )
        except (DataError, ValueError) as err:
            log.warning("Centralized evaluation off: the server has no test split (%s)", err)
            return
        if self.config.eval_samples:
            pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(self.config.seed))
            test = test.subset(pick[: self.config.eval_samples * 4])
        self.test_set = test

    def _resume(self) -> None:
        checkpoint = self.store.load_checkpoint()
        if checkpoint is None:
            return
        if checkpoint.get("learning-hash") != self.config.learning_hash():
            saved = checkpoint.get("config", {})
            changed = {
                key: (saved.get(key), value)
                for key, value in self.config.learning_keys().items()
                if saved.get(key) != value
            }
            detail = ", ".join(f"{k}={old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ConfigError(
                f"run-name={self.config.run_name!r} already holds a checkpoint of round "
                f"{checkpoint['round']} trained with other settings ({detail or 'from an older version'}); "
                "resuming would mix them. Start fresh with another run-name, or delete "
                f"{self.store.path} (nothing was overwritten)"
            )
        self.model.load_state_dict(checkpoint["model"])
        if self.optimizer is not None and checkpoint.get("optimizer"):
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.buffer = list(checkpoint.get("buffer", []))
        self.start_round = int(checkpoint["round"]) + 1
        self.samples_saved = bool(checkpoint.get("samples_saved", False))
        log.info("Resuming run %r after round %d", self.config.run_name, checkpoint["round"])

    # -- training --------------------------------------------------------------------------
    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def train_on_uploads(self, uploads: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Add obfuscated uploads to the buffer and train ``server-steps`` on the buffer."""
        self.buffer.extend(uploads)
        if not self.samples_saved and uploads:
            self.store.save_samples(uploads[0][0][:32])
            self.samples_saved = True
        # Keep only what training can use (the newest BUFFER_LIMIT uploads), so memory and
        # the checkpoint stay flat however long the run.
        images = torch.cat([b[0] for b in self.buffer])[-BUFFER_LIMIT:]
        labels = torch.cat([b[1] for b in self.buffer])[-BUFFER_LIMIT:]
        self.buffer = [(images, labels)]
        shift = self.config.active_defense.commuting_shift(self.config, CLEAN_MAX_SHIFT)
        augment = augmenter(self.config.server_augment, shift)
        losses = train_steps(
            self.model, images, labels, self.optimizer,
            self.config.server_steps, self.config.server_batch_size, augment, self.device,
        )
        loss, self.skipped_steps = mean_loss(losses)
        return loss

    def train_top(self, activations: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One pass of the server layers over uploaded activations; the gradient at the cut.

        Minibatches of ``server-batch-size`` in random order, one optimizer step each; the
        gradient of each minibatch's mean loss w.r.t. its activations is returned for all rows.
        """
        top = self.server_part.train()
        acts = activations.to(self.device).requires_grad_(True)
        labels = labels.to(self.device)
        order = torch.randperm(len(labels))
        losses = []
        for index in order.split(self.config.server_batch_size):
            self.optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(top(acts[index]), labels[index])
            loss.backward()
            if finite_step(loss, top.parameters()) and bool(torch.isfinite(acts.grad[index]).all()):
                self.optimizer.step()
                losses.append(float(loss.detach()))
            else:  # not taken, and its rows of the cut gradient go down as zeros, never NaN
                acts.grad[index] = 0
                losses.append(float("nan"))
        loss, self.skipped_steps = mean_loss(losses)
        return acts.grad.detach().cpu(), loss

    def evaluate_central(self) -> dict[str, float]:
        """Accuracy and loss on the server's test split, transformed like the training data.

        Not available in split learning: the server holds only the top of the model.
        """
        if self.test_set is None or not EXCHANGES[self.config.exchange].server_holds_model:
            return {}
        images = self.central_eval_images()
        accuracy, loss = evaluate(self.model, images, self.test_set.labels, device=self.device)
        return {"central-accuracy": accuracy, "central-loss": loss}

    def central_eval_images(self) -> torch.Tensor:
        """The test split as the model is scored on it: under an image defense, transformed
        once per run from a fixed seed, so every round sees the same copy and a resumed run
        rebuilds the very same one."""
        defense = self.config.active_defense
        if not defense.transforms_images:
            return self.test_set.images
        if self._central_images is None:
            seed = round_seed(self.config.seed, EVALUATION_ROUND, SERVER_NODE)
            self._central_images = obfuscate_once(
                self.test_set.images, lambda s: defense.image_transform(self.config, s), seed, self.device
            )
        return self._central_images

    # -- bookkeeping -----------------------------------------------------------------------
    def finish_round(self, server_round: int, row: dict) -> None:
        """Record the round and checkpoint it; a model that is no longer finite is never
        checkpointed (the round fails and the last good checkpoint stays)."""
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteModel(f"the model holds non-finite values after round {server_round} ({', '.join(bad[:3])})")
        self._check_learning(row)
        self.store.append_metrics(row)
        self.store.save_checkpoint(
            {
                "round": server_round,
                "config": self.config.to_dict(),
                "learning-hash": self.config.learning_hash(),
                "model": self.state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
                "buffer": self.buffer,
                "samples_saved": self.samples_saved,
            }
        )

    def _check_learning(self, row: dict) -> None:
        """Adds a ``warning`` to the round's row, and logs it, the first time the run's
        train-loss has stayed near the loss of guessing (:mod:`server.plateau`)."""
        earlier = [r for r in self.store.read_metrics() if r.get("status") == "completed"]
        if any("warning" in r for r in earlier):
            return  # once per run, also across a resume
        losses = [r.get("train-loss") for r in earlier] + [row.get("train-loss")]
        warning = plateau_warning(losses, self.num_classes, self.config.plateau_rounds, self.config.plateau_margin)
        if warning:
            row["warning"] = warning
            log.warning("Round %d: %s", row["round"], warning)

    def finish(self, status: str, message: str, started: float, keep_model: bool = True) -> dict:
        """``summary.json``, and ``final_model.pt`` unless the run failed (a failed round's
        model may be half-updated or non-finite; the checkpoint holds the last good one)."""
        # seconds_since_start: of this ServerApp (a resume restarts it)
        summary = self.store.summarise(status, message, seconds_since_start=round(time.time() - started, 1))
        if keep_model:
            self.store.save_model(self.state_dict())
        return summary
