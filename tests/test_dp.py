"""DP-SGD arms: accounting across rounds, Opacus agreement, budget stop, invalid combination."""

import json

import pytest
import torch
from flwr.app import Context, RecordDict
from opacus.accountants import RDPAccountant

from common.dp import PrivacyLedger, PrivateTraining, noise_multiplier_for, poisson_batches
from common.models import build_model
from common.run_config import ConfigError, parse_run_config
from server.messaging import RunFailed
from server.server_app import main as server_main
from tests.fake_grid import FakeGrid

FAST = {
    "num-server-rounds": 3,
    "local-steps": 3,
    "batch-size": 16,
    "upload-samples": 32,
    "server-steps": 2,
    "server-batch-size": 16,
    "eval-samples": 20,
}


def run(tmp_path, name, **overrides):
    config = {**FAST, "output-dir": str(tmp_path), "run-name": name, **overrides}
    grid = FakeGrid(config, num_nodes=2)
    try:
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
    except RunFailed:  # a failed round ends the run failed; its files say why
        pass
    folder = tmp_path / name
    rows = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]
    return grid, rows, json.loads((folder / "summary.json").read_text())


def test_dp_sgd_with_images_is_refused_at_start():
    for defense in ("dp-sgd", "visualmixer+dp-sgd"):
        with pytest.raises(ConfigError, match=r"defense='.*dp-sgd' with exchange='images'"):
            parse_run_config({"exchange": "images", "defense": defense})
    assert parse_run_config({"exchange": "weights", "defense": "visualmixer+dp-sgd"}).active_defense.trains_privately


def test_ledger_epsilon_matches_opacus_accountant_for_the_same_steps():
    ledger = PrivacyLedger()
    for _ in range(50):
        ledger.record(1.1, 0.02)
    ledger.record(0.9, 0.05)
    reference = RDPAccountant()
    for _ in range(50):
        reference.step(noise_multiplier=1.1, sample_rate=0.02)
    reference.step(noise_multiplier=0.9, sample_rate=0.05)
    assert ledger.history == [(1.1, 0.02, 50), (0.9, 0.05, 1)]
    assert ledger.epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert PrivacyLedger.from_lists(ledger.to_lists()) == ledger


def test_noise_multiplier_spends_the_target_over_the_planned_steps():
    sigma = noise_multiplier_for(3.0, 1e-5, 0.02, 300)
    eps = PrivacyLedger([(sigma, 0.02, 300)]).epsilon(1e-5)
    assert 2.95 <= eps <= 3.0


def test_private_training_clips_noises_and_strips_the_wrapper_prefix():
    torch.manual_seed(0)
    model = build_model("small-cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ledger = PrivacyLedger()
    private = PrivateTraining(
        model, torch.optim.SGD(model.parameters(), lr=0.1), sigma=1.0, max_grad_norm=1.0,
        expected_batch_size=8, sample_rate=0.5, ledger=ledger,
    )
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    private.optimizer.zero_grad()
    torch.nn.functional.cross_entropy(private.module(x), y).backward()
    private.optimizer.step()
    state = private.state_dict()
    assert set(state) == set(before) and not any(k.startswith("_module") for k in state)
    assert any(not torch.equal(state[k], before[k]) for k in state)
    assert ledger.history == [(1.0, 0.5, 1)]


def test_poisson_batches_vary_in_size_around_the_rate():
    sizes = [len(b) for b in poisson_batches(1000, 0.05, 200, torch.Generator().manual_seed(0))]
    assert len(sizes) == 200 and len(set(sizes)) > 5
    assert 45 < sum(sizes) / len(sizes) < 55


@pytest.mark.parametrize("exchange", ["weights", "activations"])
@pytest.mark.parametrize("defense", ["dp-sgd", "visualmixer+dp-sgd"])
def test_epsilon_is_cumulative_per_node_and_ends_at_the_budget(tmp_path, exchange, defense):
    grid, rows, summary = run(tmp_path, "dp", exchange=exchange, defense=defense, **{"target-epsilon": 3.0})
    assert summary["status"] == "completed"
    eps = [r["epsilon-max"] for r in rows]
    assert eps[0] > 0 and eps == sorted(eps) and eps[0] < eps[-1]
    assert 2.9 <= eps[-1] <= 3.0  # sigma was chosen so that the planned rounds spend the budget
    assert len(rows[-1]["epsilon-per-node"]) == 2
    for context in grid.contexts.values():  # the ledger lives in the node's context.state
        ledger = PrivacyLedger.from_lists(context.state["dp-ledger"])
        per_round = FAST["local-steps"] if exchange == "weights" else 1
        assert ledger.steps <= FAST["num-server-rounds"] * per_round
        assert ledger.steps >= FAST["num-server-rounds"] * per_round - 1  # an empty Poisson batch is skipped
    if "visualmixer" in defense:
        assert all(r["vfe-sent"] >= 0.8 for r in rows)


def test_a_node_that_spent_its_budget_stops_training(tmp_path, caplog):
    # sigma fixed by hand: round 1 spends more than half the budget, so round 2 is refused.
    _, rows, summary = run(
        tmp_path, "spent", exchange="weights", defense="dp-sgd",
        **{"noise-multiplier": 0.4, "target-epsilon": 8.0, "local-steps": 20, "num-server-rounds": 2},
    )
    assert rows[0]["status"] == "completed" and rows[0]["epsilon-max"] <= 8.0
    assert rows[1]["status"] == "failed" and "fewer than min-replies" in rows[1]["reason"]
    assert summary["status"] == "failed"
    assert "privacy budget spent" in caplog.text


def test_server_obfuscates_its_test_images_for_visualmixer_plus_dp(tmp_path):
    from server.trainer import ServerTrainer

    config = parse_run_config({"defense": "visualmixer+dp-sgd", "output-dir": str(tmp_path), "eval-samples": 10})
    mixed = ServerTrainer(config)
    assert not torch.equal(mixed.central_eval_images(), mixed.test_set.images)
    plain = parse_run_config({"defense": "dp-sgd", "output-dir": str(tmp_path), "run-name": "b", "eval-samples": 10})
    trainer = ServerTrainer(plain)
    assert trainer.central_eval_images() is trainer.test_set.images
