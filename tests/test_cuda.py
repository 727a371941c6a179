"""The CUDA paths, checked against the CPU ones. Skipped on machines without a GPU.

The rest of the suite also runs on CUDA where one is present (run-config ``device`` is
``auto``); these tests name the device explicitly and compare it with the CPU: the
shuffle's CUDA branches (device-side random keys and sorts), the VFE measured on either
device, ST-Adam's arithmetic, every exchange mode end to end, and checkpoints written on a
GPU and read back on a CPU. ``simulations/bench/device_check.sh`` runs them on a lent GPU.
"""

import json
import warnings

import pytest
import torch

from common.attacks import recognition_accuracy, train_feature_decoder, train_inverse_network, train_recogniser
from common.attacks.metrics import as_unit
from common.models import build_model, split_model
from common.shapes import generate_shapes
from common.st_adam import STAdam
from common.training import evaluate, obfuscated_batches, predict, to_model_input
from common.visualmixer import VisualMixer, _graphs, obfuscate, visual_feature_entropy
from tests.test_flower_apps import run
from tests.test_training import CountingMixer
from tests.test_visualmixer import images_for, region_multisets

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("size,scope,chromatic", [(32, 1, True), (32, 0, True), (32, 2, False), (224, 1, True)])
def test_cuda_obfuscation_meets_the_target_and_keeps_region_multisets(dtype, size, scope, chromatic):
    images = images_for(7, 16 if size == 32 else 4, size)
    x = images if dtype == torch.uint8 else images.float() / 255
    result = obfuscate(x.cuda(), 0.8, region_scope=scope, chromatic=chromatic, seed=0)
    assert result.images.is_cuda and result.images.dtype == dtype and result.met_target.all()
    # The same multiset of values in every region (or group of regions, for scope != 1).
    if scope == 1:
        assert torch.equal(region_multisets(x, 8), region_multisets(result.images.cpu(), 8))
    else:
        assert torch.equal(x.flatten(1).sort(1).values, result.images.cpu().flatten(1).sort(1).values)
    # The VFE computed on the GPU is the one the CPU measures on the same images.
    torch.testing.assert_close(result.vfe.cpu(), visual_feature_entropy(result.images.cpu()), atol=1e-5, rtol=0)


def test_seeded_cuda_calls_are_reproducible_and_fresh_otherwise():
    x = images_for(3, 32, 32).cuda()
    a, b = VisualMixer(0.8, seed=5)(x), VisualMixer(0.8, seed=5)(x)
    assert torch.equal(a, b) and not torch.equal(a, VisualMixer(0.8, seed=6)(x))
    fresh = VisualMixer(0.8)
    assert not torch.equal(fresh(x), fresh(x))


def test_cuda_and_cpu_reach_the_same_vfe_on_average():
    """The plan is the same arithmetic on both devices and only the random draws differ,
    so over many images the achieved VFE and block sizes agree closely."""
    images, _ = generate_shapes(512, seed=11)
    on_cpu = obfuscate(images, 0.8, seed=0)
    on_gpu = obfuscate(images.cuda(), 0.8, seed=0)
    assert on_gpu.met_target.all() and on_cpu.met_target.all()
    assert abs(on_gpu.vfe.mean().item() - on_cpu.vfe.mean().item()) < 0.005
    cpu_blocks = on_cpu.block_size.float().mean().item()
    assert abs(on_gpu.block_size.float().mean().item() - cpu_blocks) < 0.02 * cpu_blocks


def eager_and_recorded(monkeypatch, calls) -> dict:
    """What ``calls()`` returns with graphs on: once with recording failing (the eager
    fallback) and once recorded, as {"fallback": ..., "recorded": ...}; each time exactly
    one graph is kept (or, for the fallback, marked as failed to record)."""
    from tests.test_graphs import NoRecording

    monkeypatch.setenv(_graphs.ENV, "1")
    results = {}
    for name in ("fallback", "recorded"):
        _graphs.clear()
        with monkeypatch.context() as patch:
            if name == "fallback":
                patch.setattr(_graphs, "_Recorded", NoRecording)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results[name] = calls()
        said = [str(w.message) for w in caught]
        assert len(_graphs._graphs) == 1 and (name == "fallback") == (None in _graphs._graphs.values()), said
    _graphs.clear()
    return results


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("size,scope,target", [(32, 1, 0.8), (32, 0, 0.8), (224, 1, 0.8), (32, 1, 0.97)])
def test_cuda_graphs_give_the_bits_of_the_eager_fallback(monkeypatch, dtype, size, scope, target):
    """A recorded first attempt, replayed, gives exactly what the same stages give eagerly
    from a fresh generator with the same seed (the fallback when recording fails; PyTorch's
    graph-safe RNG promises this), retries included (0.97 sends images back), for several
    seeds through one graph; and the graph really was recorded."""
    from tests.test_graphs import fields

    images = images_for(7, 64 if size == 32 else 4, size)
    x = (images if dtype == torch.uint8 else images.float() / 255).cuda()
    results = eager_and_recorded(
        monkeypatch, lambda: [obfuscate(x, target, region_scope=scope, seed=s) for s in (0, 1, 0, 1, 2)]
    )
    for fallback, recorded in zip(results["fallback"], results["recorded"]):
        assert all(torch.equal(a, b) for a, b in zip(fields(fallback), fields(recorded)))
    first, second, again, *_ = results["recorded"]  # the first two ran eagerly, the rest replayed
    assert all(torch.equal(a, b) for a, b in zip(fields(first), fields(again)))
    assert not torch.equal(first.images, second.images) and first.met_target.all()


def test_unseeded_cuda_graph_calls_continue_the_default_generator_s_stream(monkeypatch):
    """Unseeded calls draw from the device's default generator whether they run eagerly, record
    (the check replays from the state before, then puts back the state after) or replay: from
    the same seed, the results and the draws after them are those of the eager fallback."""
    from tests.test_graphs import fields

    x = images_for(4, 64, 32).cuda()

    def calls():
        torch.cuda.manual_seed(1)
        results = [obfuscate(x, 0.8) for _ in range(4)]
        return [t for call in results for t in fields(call)] + [torch.rand(5, device="cuda")]

    results = eager_and_recorded(monkeypatch, calls)
    assert all(torch.equal(a, b) for a, b in zip(results["fallback"], results["recorded"], strict=True))


def test_cuda_graph_results_belong_to_the_caller_and_stay_random(monkeypatch):
    monkeypatch.setenv(_graphs.ENV, "1")
    _graphs.clear()
    x = images_for(3, 32, 32).cuda()
    for _ in range(2):  # a key's first call runs eagerly, its second records the graph
        obfuscate(x, 0.8)
    first = obfuscate(x, 0.8)
    kept = [t.clone() for t in (first.images, first.vfe, first.block_size)]
    obfuscate(x.flip(0), 0.8)  # replays the same graphs with other images
    assert all(torch.equal(a, b) for a, b in zip(kept, (first.images, first.vfe, first.block_size)))
    assert not torch.equal(obfuscate(x, 0.8).images, obfuscate(x, 0.8).images)
    _graphs.clear()


def test_a_round_runs_with_cuda_graphs(tmp_path, monkeypatch):
    monkeypatch.setenv(_graphs.ENV, "1")
    _graphs.clear()
    _, rows, summary, _ = run(tmp_path, "graphs", exchange="activations", device="cuda", **{"num-server-rounds": 2})
    assert summary["status"] == "completed" and [r["replies"] for r in rows] == [2, 2]
    assert _graphs._graphs and all(g is not None for g in _graphs._graphs.values())
    _graphs.clear()


def test_st_adam_on_cuda_matches_the_cpu():
    """The optimizer's arithmetic, fed the same gradients on both devices. (Gradients from
    a real backward pass differ slightly between devices, cuDNN uses TF32, and Adam turns
    a sign flip of a near-zero gradient into a full step, so they are not compared.)"""
    generator = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 3, 3), (16,), (10, 64)]
    on_cpu = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    on_gpu = [torch.nn.Parameter(p.detach().cuda()) for p in on_cpu]
    opt_cpu, opt_gpu = STAdam(on_cpu, lr=1e-2), STAdam(on_gpu, lr=1e-2)
    for _ in range(20):
        for a, b in zip(on_cpu, on_gpu):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.cuda()
        opt_cpu.step()
        opt_gpu.step()
    for a, b in zip(on_cpu, on_gpu):
        assert b.is_cuda
        torch.testing.assert_close(b.detach().cpu(), a.detach(), atol=1e-5, rtol=1e-5)


def test_inference_on_obfuscated_inputs_agrees_across_devices():
    images, labels = generate_shapes(64, seed=2)
    model = build_model("small-cnn")
    mixed = VisualMixer(0.8, seed=1)(images)
    on_cpu = predict(model, mixed)
    on_gpu = predict(model.cuda(), mixed, device="cuda")
    assert on_gpu.device.type == "cpu"  # logits come back to the host
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-3)
    accuracy, loss = evaluate(model, images, labels, VisualMixer(0.8), device="cuda")
    assert 0 <= accuracy <= 1 and loss > 0
    assert model(to_model_input(mixed[:2].cuda())).is_cuda


def test_a_default_weights_round_is_obfuscated_in_one_call_on_cuda():
    images, labels = generate_shapes(300, seed=3)
    mixer = CountingMixer(0.8)
    batches = [torch.randint(0, 300, (64,)) for _ in range(60)]
    out = list(obfuscated_batches(images, labels, batches, mixer, "cuda"))
    assert len(out) == 60 and all(x.is_cuda and y.is_cuda for x, y in out)
    assert mixer.calls == [3840]


def test_attacks_train_on_cuda_as_the_comparison_runs_them():
    """simulations.compare trains its attackers on the GPU when there is one and applies
    them, moved back, to CPU tensors; the victim model stays on the CPU throughout."""
    images, labels = generate_shapes(256, seed=4)
    mixer = VisualMixer(0.8, seed=0)
    client_layers, _ = split_model(build_model("small-cnn"), 1)
    decoder = train_feature_decoder(client_layers, images, VisualMixer(0.8), steps=3, batch_size=32, device="cuda")
    assert all(p.device.type == "cpu" for p in client_layers.parameters())
    with torch.no_grad():
        assert decoder.cpu()(client_layers(as_unit(mixer(images[:8])))).shape == (8, 3, 32, 32)
        inverse = train_inverse_network(images, VisualMixer(0.8), steps=3, batch_size=32, device="cuda")
        assert inverse.cpu()(as_unit(mixer(images[:8]))).shape == (8, 3, 32, 32)
    recogniser = train_recogniser(images, labels, 10, steps=3, batch_size=32, device="cuda")
    on_gpu = recognition_accuracy(recogniser, images[:64], labels[:64], device="cuda")
    # The same network on either device (cuDNN's TF32 convolutions can flip a near tie).
    assert abs(on_gpu - recognition_accuracy(recogniser.cpu(), images[:64], labels[:64])) <= 0.1


@pytest.mark.parametrize(
    "exchange,defense",
    [("images", "visualmixer"), ("activations", "visualmixer"), ("weights", "visualmixer"),
     ("weights", "dp-sgd"), ("activations", "visualmixer+dp-sgd")],
)
def test_each_exchange_runs_on_cuda_and_its_checkpoint_resumes_on_cpu(tmp_path, exchange, defense):
    torch.cuda.reset_peak_memory_stats()
    # A fixed sigma: with sigma chosen from the budget, the planned rounds could not grow.
    sigma = {"noise-multiplier": 1.0} if "dp-sgd" in defense else {}
    _, rows, summary, folder = run(
        tmp_path, "gpu", exchange=exchange, defense=defense, device="cuda", **{"num-server-rounds": 1}, **sigma
    )
    assert summary["status"] == "completed" and rows[0]["replies"] == 2
    assert torch.cuda.max_memory_allocated() > 0  # the work did go to the GPU
    final = torch.load(folder / "final_model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in final.values())  # readable without a GPU
    # A run started on a GPU server goes on with the same run-name on a CPU-only one.
    _, rows, summary, _ = run(
        tmp_path, "gpu", exchange=exchange, defense=defense, device="cpu", **{"num-server-rounds": 2}, **sigma
    )
    assert summary["status"] == "completed" and [r["round"] for r in rows] == [1, 2]
    config = json.loads((folder / "config.json").read_text())
    assert config["run_config"]["device"] == "cpu"
