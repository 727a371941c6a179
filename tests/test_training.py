import torch

from common import training
from common.shapes import generate_shapes
from common.training import obfuscated_batches
from common.visualmixer import VisualMixer, visual_feature_entropy


class CountingMixer:
    def __init__(self, target: float) -> None:
        self.mixer = VisualMixer(target)
        self.calls: list[int] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(images))
        return self.mixer(images)


def test_batches_are_obfuscated_in_chunks_but_yielded_one_by_one(monkeypatch):
    images, labels = generate_shapes(200, seed=0)
    monkeypatch.setattr(training, "OBFUSCATION_CHUNK_VALUES", 100 * images[0].numel())
    sizes = [32, 0, 40, 32, 7, 32, 16]  # the empty batch is skipped
    batches = [torch.randint(0, 200, (n,)) for n in sizes]
    mixer = CountingMixer(0.8)
    out = list(obfuscated_batches(images, labels, batches, mixer))
    assert [len(x) for x, _ in out] == [n for n in sizes if n]
    # 32+40+32 reach 100 images; then 7+32+16 are what is left.
    assert mixer.calls == [104, 55]
    for (x, y), index in zip(out, [b for b in batches if len(b)]):
        assert torch.equal(y, labels[index])
        assert bool((visual_feature_entropy(x) >= 0.8).all())
        # Same multiset of values per image: shuffled, not replaced.
        assert torch.equal(x.flatten(1).sort(1).values, images[index].flatten(1).sort(1).values)


def test_without_a_mixer_each_batch_is_the_original():
    images, labels = generate_shapes(50, seed=1)
    batches = [torch.arange(10), torch.tensor([], dtype=torch.long), torch.arange(10, 30)]
    out = list(obfuscated_batches(images, labels, batches))
    assert len(out) == 2
    assert torch.equal(out[1][0], images[10:30]) and torch.equal(out[1][1], labels[10:30])


def test_obfuscate_once_is_reproducible_and_chunks_use_their_own_seeds(monkeypatch):
    image, _ = generate_shapes(1, seed=2)
    images = image.repeat(6, 1, 1, 1)  # three chunks of two identical images
    monkeypatch.setattr(training, "OBFUSCATION_CHUNK_VALUES", 2 * images[0].numel())
    seeds: list[int] = []

    def mixer_for_seed(seed: int) -> VisualMixer:
        seeds.append(seed)
        return VisualMixer(0.8, seed=seed)

    first = training.obfuscate_once(images, mixer_for_seed, seed=7)
    assert seeds == [7, 8, 9]
    assert torch.equal(first, training.obfuscate_once(images, mixer_for_seed, seed=7))
    assert not torch.equal(first[0], first[2]) and not torch.equal(first[2], first[4])
    assert bool((visual_feature_entropy(first) >= 0.8).all())
    assert torch.equal(first.flatten(1).sort(1).values, images.flatten(1).sort(1).values)
    assert training.obfuscate_once(images[:0], mixer_for_seed, seed=0).shape == (0, 3, 32, 32)


def test_a_default_weights_round_is_obfuscated_in_four_calls_on_cpu():
    """60 steps of 64 images: chunks of 1024 images on the CPU (tests/test_cuda.py checks
    that CUDA, bound by per-call overhead, takes the whole round in one call)."""
    images, labels = generate_shapes(300, seed=3)
    mixer = CountingMixer(0.8)
    batches = [torch.randint(0, 300, (64,)) for _ in range(60)]
    assert len(list(obfuscated_batches(images, labels, batches, mixer, "cpu"))) == 60
    assert mixer.calls == [1024, 1024, 1024, 768]


def test_test_time_averaging_is_the_mean_softmax_over_draws():
    from common.models import build_model
    from common.training import predict
    from common.visualmixer import VisualMixer

    torch.manual_seed(0)
    model = build_model("small-cnn").eval()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    mixer = VisualMixer(0.8)
    torch.manual_seed(5)
    averaged = predict(model, images, mixer, draws=4)
    torch.manual_seed(5)
    with torch.no_grad():
        probs = torch.stack([model(mixer(images).float() / 255).softmax(1) for _ in range(4)]).mean(0)
    torch.testing.assert_close(averaged.exp(), probs, rtol=1e-5, atol=1e-6)
    torch.manual_seed(5)
    single = predict(model, images, mixer)  # one draw: the logits themselves
    torch.manual_seed(5)
    with torch.no_grad():
        torch.testing.assert_close(single, model(mixer(images).float() / 255))


def test_region_aligned_flips_and_shifts_move_whole_regions():
    from common.attacks import flip_and_shift

    images = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = flip_and_shift(images, max_shift=8, generator=torch.Generator().manual_seed(0), step=8)
    for original, moved in zip(images, out):
        candidates = []
        for flipped in (original, original.flip(-1)):
            padded = torch.nn.functional.pad(flipped, (8, 8, 8, 8))
            candidates += [padded[:, dy : dy + 32, dx : dx + 32] for dy in (0, 8, 16) for dx in (0, 8, 16)]
        assert any(torch.equal(moved, c) for c in candidates)
    assert not torch.equal(out, images)
