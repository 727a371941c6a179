"""Each attack beats its trivial baseline on tiny inputs; the metrics are what they claim."""

import pytest
import torch

from common.attacks import (
    client_update,
    invert_gradients,
    match,
    mosaic_attack,
    psnr,
    recognition_accuracy,
    recover_labels,
    score,
    ssim,
    train_feature_decoder,
    train_inverse_network,
    train_recogniser,
)
from common.attacks.metrics import as_unit
from common.models import build_model, split_model
from common.shapes import generate_shapes
from common.visualmixer import VisualMixer


@pytest.fixture(scope="module")
def data():
    images, labels = generate_shapes(1200, seed=7)
    return images[:1000], labels[:1000], images[1000:], labels[1000:]  # public, victims


def mean_image_psnr(public, victims):
    mean = as_unit(public).mean(0, keepdim=True).expand(len(victims), -1, -1, -1)
    return float(psnr(mean, victims).mean())


def test_metrics_on_known_cases():
    x = torch.rand(4, 3, 32, 32)
    assert torch.all(psnr(x, x) > 90) and torch.allclose(ssim(x, x), torch.ones(4), atol=1e-4)
    noisy = (x + 0.1).clamp(0, 1)
    assert torch.all(psnr(noisy, x) < 25) and torch.all(ssim(noisy, x) < 1)
    u8 = (x * 255).round().to(torch.uint8)
    assert float(psnr(u8, x).mean()) > 45  # uint8 is read as 0..255


def test_mosaic_is_exactly_the_same_for_the_original_and_any_shuffle(data):
    _, _, victims, _ = data
    obfuscated = VisualMixer(1.0, seed=3)(victims[:32])
    assert torch.allclose(mosaic_attack(obfuscated), mosaic_attack(victims[:32]), atol=1e-5)
    plain = VisualMixer(1.0, chromatic=False, seed=3)(victims[:32])
    assert torch.allclose(mosaic_attack(plain, chromatic=False), mosaic_attack(victims[:32], chromatic=False), atol=1e-5)
    # the floor: the mosaic is closer to the original than the obfuscated image itself
    assert score(mosaic_attack(obfuscated), victims[:32])["psnr"] > score(obfuscated, victims[:32])["psnr"]


def test_inverse_network_learns_to_undo_what_it_was_trained_on(data):
    public, _, victims, _ = data
    identity = lambda x: x  # noqa: E731 - unprotected data: the inverse should be near-identity
    net = train_inverse_network(public, identity, steps=150, batch_size=32)
    with torch.no_grad():
        out = net(as_unit(victims[:64]))
    assert score(out, victims[:64])["psnr"] > mean_image_psnr(public, victims[:64]) + 8


def test_gradient_inversion_recovers_an_unprotected_image(data):
    public, _, victims, labels = data
    torch.manual_seed(0)
    model = build_model("small-cnn")
    x, y = victims[:1], labels[:1]
    update = client_update(model, x, y)
    assert recover_labels(update, 1).tolist() == y.tolist()
    reconstruction = match(invert_gradients(model, update, y, (3, 32, 32), steps=150), as_unit(x))
    assert score(reconstruction, x)["psnr"] > mean_image_psnr(public, x) + 5
    # DP-SGD noise at sigma=1 on one image drowns the gradient
    noisy = client_update(model, x, y, dp=(1.0, 1.0))
    dp_rec = invert_gradients(model, noisy, y, (3, 32, 32), steps=150)
    assert score(dp_rec, x)["psnr"] < score(reconstruction, x)["psnr"] - 3


def test_feature_decoder_inverts_unprotected_activations(data):
    public, _, victims, _ = data
    torch.manual_seed(0)
    client_layers, _ = split_model(build_model("small-cnn"), 1)
    decoder = train_feature_decoder(client_layers, public, None, steps=150, batch_size=32)
    with torch.no_grad():
        out = decoder(client_layers(as_unit(victims[:64])))
    assert out.shape == (64, 3, 32, 32)
    assert score(out, victims[:64])["psnr"] > mean_image_psnr(public, victims[:64]) + 5


def test_recogniser_recognises_clean_images_well_above_chance(data):
    public, public_labels, victims, labels = data
    # The learning rate decays to zero (cosine): 400 steps reach about 0.4 on shapes.
    recogniser = train_recogniser(public, public_labels, 10, steps=400)
    assert recognition_accuracy(recogniser, victims, labels) > 0.3


def test_feature_decoder_leaves_the_callers_layers_as_they_were(data):
    """The attack works on its own copy: the victim model keeps its device, mode and
    weights, and no gradient lands in it (tests/test_cuda.py checks the device part)."""
    public = data[0]
    model = build_model("small-cnn")
    client_layers, _ = split_model(model, 1)
    client_layers.train()
    before = {k: v.clone() for k, v in client_layers.state_dict().items()}
    train_feature_decoder(client_layers, public[:64], VisualMixer(0.8), steps=2, batch_size=16)
    assert client_layers.training
    for key, value in client_layers.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.grad is None and p.requires_grad for p in client_layers.parameters())
