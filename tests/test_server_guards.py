"""What the server refuses to learn from or keep: images it measures as not obfuscated,
claims of more examples than a node can hold, non-finite steps and models, and uploads
beyond what training uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

import server.trainer
from common.data import client_partition
from common.models import split_model
from common.run_config import parse_run_config
from common.training import mean_loss, train_on_batches
from server.trainer import NonFiniteModel, ServerTrainer
from tests.test_flower_apps import FAST, _originals, run


def _with_images(change):
    def tamper(msg, reply):
        if msg.metadata.message_type != "query.images":
            return reply
        arrays = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        arrays["images"] = change(arrays["images"])
        return Message(RecordDict({
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
            "metrics": reply.content["metrics"],
        }), reply_to=msg)

    return tamper


def test_images_below_the_vfe_floor_are_dropped_before_training_or_storage(tmp_path):
    """Node 2 mixes originals into its upload, claiming the VFE of the rest: the server
    measures every image, trains on and stores only the obfuscated ones."""
    sent: list[np.ndarray] = []

    def half_originals(images):
        originals = _originals(len(images) // 2)
        sent.append(originals)
        return np.concatenate([originals, images[len(originals):]])

    _, rows, summary, folder = run(tmp_path, "guard", tamper={2: _with_images(half_originals)},
                                   exchange="images", **{"num-server-rounds": 1})
    assert summary["status"] == "completed"
    assert rows[0]["replies"] == 2 and rows[0]["vfe-guard-dropped"] == 16
    buffer = torch.cat([images for images, _ in torch.load(folder / "checkpoint.pt", weights_only=False)["buffer"]])
    assert len(buffer) == 32 + 16
    originals = torch.from_numpy(np.concatenate(sent))
    assert not any(torch.equal(row, original) for row in buffer for original in originals)


def test_an_honest_run_loses_nothing_to_the_guard(tmp_path):
    _, rows, _, _ = run(tmp_path, "honest", exchange="images")
    assert all(r["vfe-guard-dropped"] == 0 and r["replies"] == 2 for r in rows)


def _weights_reply(msg, reply, shift: float, count: int):
    """The weights the server sent, plus ``shift``, claiming ``count`` examples."""
    arrays = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    arrays = {k: (v + shift).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    metrics = {**dict(reply.content["metrics"]), "num-examples": count}
    return Message(RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


@pytest.mark.parametrize("claim, expected_shift", [(100, 0.5), (10**6, 0.0)])
def test_a_lying_node_moves_the_average_no_more_than_its_fair_share(tmp_path, claim, expected_shift):
    """Two nodes of 100 examples (max-examples-per-reply=100): the honest one returns the
    model unchanged, the liar adds 1 to every weight. Claiming its true count it moves the
    average by its share (1/2); claiming 10^6 it is rejected and moves nothing."""
    sent = {}

    def honest(msg, reply):
        if msg.metadata.message_type != "train":
            return reply
        sent.update(msg.content["arrays"].to_torch_state_dict())
        return _weights_reply(msg, reply, 0.0, 100)

    def liar(msg, reply):
        return _weights_reply(msg, reply, 1.0, claim) if msg.metadata.message_type == "train" else reply

    _, rows, _, folder = run(tmp_path, "fair", tamper={1: honest, 2: liar}, exchange="weights",
                             **{"num-server-rounds": 1, "max-examples-per-reply": 100, "update-bound": 0})
    final = torch.load(folder / "final_model.pt")
    for key, before in sent.items():
        if before.is_floating_point():
            assert torch.allclose(final[key], before + expected_shift, atol=1e-5), key
    assert rows[0]["replies"] == (2 if expected_shift else 1)


def test_the_buffer_and_the_checkpoint_stay_flat_over_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr(server.trainer, "BUFFER_LIMIT", 64)  # two rounds of 2 x 32 uploads fill it
    sizes = {}
    for rounds in (2, 5):
        *_, folder = run(tmp_path, f"flat{rounds}", exchange="images", **{"num-server-rounds": rounds})
        checkpoint = torch.load(folder / "checkpoint.pt", weights_only=False)
        assert sum(len(labels) for _, labels in checkpoint["buffer"]) == 64
        sizes[rounds] = (folder / "checkpoint.pt").stat().st_size
    assert abs(sizes[5] - sizes[2]) < 0.01 * sizes[2], sizes


def test_a_non_finite_model_is_never_checkpointed(tmp_path):
    config = parse_run_config({**FAST, "exchange": "images", "output-dir": str(tmp_path), "run-name": "nan"})
    trainer = ServerTrainer(config)
    trainer.finish_round(1, {"round": 1, "status": "completed"})
    before = (trainer.store.checkpoint_path).read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteModel, match="non-finite values after round 2"):
        trainer.finish_round(2, {"round": 2, "status": "completed"})
    assert trainer.store.checkpoint_path.read_bytes() == before


class NaNOnFirstCall(torch.nn.Module):
    """A linear model whose first forward pass yields NaN (a bad batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 32 * 32, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.linear(x.flatten(1))
        return out * float("nan") if self.calls == 1 else out


def test_a_step_on_a_non_finite_loss_is_not_taken():
    torch.manual_seed(0)
    model = NaNOnFirstCall()
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = train_on_batches(model, images, labels, optimizer, [torch.arange(4), torch.arange(4, 8)])
    assert np.isnan(losses[0]) and np.isfinite(losses[1])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert mean_loss(losses) == (losses[1], 1)
    assert np.isnan(mean_loss([float("nan")])[0])


def test_the_server_never_sends_a_non_finite_gradient(tmp_path):
    config = parse_run_config({**FAST, "exchange": "activations", "output-dir": str(tmp_path), "run-name": "cut",
                               "server-batch-size": 4})
    trainer = ServerTrainer(config)
    shape = trainer.activation_shape()
    activations = torch.randn(8, *shape)
    activations[0] = float("inf")  # bypasses validation: what the server's own guard must catch
    gradient, loss = trainer.train_top(activations, torch.randint(0, 10, (8,)))
    assert torch.isfinite(gradient).all() and np.isfinite(loss)
    assert trainer.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in trainer.server_part.parameters())


def test_a_node_refuses_a_non_finite_gradient(tmp_path):
    from flwr.app import Context, RecordDict

    from client.exchanges.activations import ActivationsClient
    from client.node import Node

    config = parse_run_config({**FAST, "exchange": "activations", "defense": "none"})
    train_set, held_out = client_partition("shapes", "", 0, 4, "iid", 0.5, 0)
    node = Node(config, 0, train_set, held_out, torch.device("cpu"))
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    exchange = ActivationsClient(node, context)
    client_part = split_model(node.model(), config.cut_layer)[0]
    optimizer = torch.optim.SGD(client_part.parameters(), lr=0.1)
    activations, labels, _, batch = exchange.client_forward(client_part, 1)
    before = [p.detach().clone() for p in client_part.parameters()]
    with pytest.raises(ValueError, match="non-finite values: not applied"):
        exchange.client_backward(client_part, optimizer, 1, torch.full_like(activations, float("nan")), batch=(batch, labels))
    assert all(torch.equal(a, b) for a, b in zip(before, client_part.parameters()))


def _image_rows(value) -> list[torch.Tensor]:
    """Every uint8 image (3, 32, 32) inside a loaded checkpoint or state dict."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.uint8 and tuple(value.shape[-3:]) == (3, 32, 32):
            return list(value.reshape(-1, 3, 32, 32))
        return []
    if isinstance(value, dict):
        return [row for v in value.values() for row in _image_rows(v)]
    if isinstance(value, (list, tuple)):
        return [row for v in value for row in _image_rows(v)]
    return []


def _png_cells(path) -> list[torch.Tensor]:
    """The 32x32 cells of a grid written by torchvision's save_image (padding 1)."""
    from PIL import Image

    grid = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    cells = []
    for top in range(1, grid.shape[1] - 31, 33):
        for left in range(1, grid.shape[2] - 31, 33):
            cells.append(grid[:, top:top + 32, left:left + 32].contiguous())
    return cells


@pytest.mark.parametrize("exchange", ["images", "activations", "weights"])
def test_no_file_the_server_writes_holds_a_client_original(tmp_path, exchange):
    from common.data import load_dataset

    originals = {bytes(image.numpy().tobytes()) for image in load_dataset("shapes", "train").images}
    *_, folder = run(tmp_path, "scan", exchange=exchange)
    scanned = 0
    for path in folder.iterdir():
        if path.suffix == ".pt":
            rows = _image_rows(torch.load(path, weights_only=False))
        elif path.suffix == ".png":
            rows = _png_cells(path)
        else:
            continue
        scanned += len(rows)
        assert not any(bytes(row.numpy().tobytes()) in originals for row in rows), path.name
    assert scanned > 0 if exchange == "images" else True  # images: the buffer and samples.png were read
