import copy

import pytest
import torch

from common.st_adam import STAdam


def make_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return model, x, y


def run(model, optimizer, x, y, steps=20):
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_equals_adam_when_momentum_bounds_coincide(weight_decay):
    model, x, y = make_problem()
    twin = copy.deepcopy(model)
    run(model, STAdam(model.parameters(), lr=1e-2, momentum_bounds=(0.9, 0.9), weight_decay=weight_decay), x, y)
    run(twin, torch.optim.Adam(twin.parameters(), lr=1e-2, weight_decay=weight_decay), x, y)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_decoupled_weight_decay_equals_adamw():
    model, x, y = make_problem()
    twin = copy.deepcopy(model)
    run(model, STAdam(model.parameters(), lr=1e-2, momentum_bounds=(0.9, 0.9), weight_decay=0.1,
                      decoupled_weight_decay=True), x, y)
    run(twin, torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1), x, y)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_oscillating_gradient_lowers_momentum():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = STAdam([p], lr=0.1, momentum_bounds=(0.5, 0.95))
    for sign in (1.0, -1.0):
        p.grad = torch.full((4,), sign)
        opt.step()
    # Second gradient opposes the momentum: beta1 = low, so prod = 0.95 (first step) * 0.5.
    assert opt.state[p]["beta1_product"].item() == pytest.approx(0.95 * 0.5)


def test_param_groups_and_state_dict_round_trip():
    model, x, y = make_problem()
    opt = STAdam([{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters()}], lr=1e-2)
    run(model, opt, x, y, steps=3)
    twin = copy.deepcopy(model)
    opt2 = STAdam([{"params": twin[0].parameters(), "lr": 1e-3}, {"params": twin[2].parameters()}], lr=1e-2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if saved and loaded
    run(model, opt, x, y, steps=3)
    run(twin, opt2, x, y, steps=3)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)
    assert opt2.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("kwargs", [{"lr": 0}, {"momentum_bounds": (0.9, 0.5)}, {"eps": 0}, {"weight_decay": -1}])
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        STAdam([torch.nn.Parameter(torch.zeros(1))], **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    p = torch.nn.Parameter(torch.ones(3, device="cuda"))
    opt = STAdam([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    assert p.is_cuda and (p < 1).all()
