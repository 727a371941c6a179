"""CUDA graphs for obfuscate's first attempt (``common/visualmixer/_graphs.py``),
checked here without a GPU; ``tests/test_cuda.py`` records and replays it on one.

A CUDA graph can only record work that never waits for the device and whose shapes do not
depend on the data. Tensors on the ``meta`` device have shapes but no values, and take the
same non-CPU branches as CUDA ones, so any read of a value on the host (``.item()``,
``.tolist()``, ``bool()``) or any data-dependent shape (``nonzero``, ``bincount``) fails
on them: the recorded first attempt must run on ``meta`` from end to end with fixed shapes,
and must not without (the grouped shuffle needs the rung counts on the host).

Without a GPU, obfuscate's graph path runs through ``ReplayOnCpu`` (tests/conftest.py),
which keeps a graph's memory and generator semantics, and through the eager fallback that a
failed recording leaves; both use the fixed-shape shuffle, whose distribution is checked
here and, with the grouped one's, in tests/test_visualmixer.py (``either_shuffle``).
"""

import warnings

import pytest
import torch

from common.visualmixer import _graphs
from common.visualmixer._checks import check_block_sizes
from common.visualmixer.functional import _first_attempt
from tests.conftest import ReplayOnCpu


def first_attempt(batch, region_size=8, fixed_shapes=True, scope=1):
    grid = (batch.shape[-2] // region_size, batch.shape[-1] // region_size)
    return _first_attempt(
        batch, target=0.8, region_size=region_size, ladder=check_block_sizes(None, region_size),
        grid=grid, chromatic=True, scope=scope, importance="gradient", fixed_shapes=fixed_shapes,
        generator=None,
    )


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("size,region_size,scope", [(32, 8, 1), (32, 4, 0), (224, 16, 2)])
def test_the_recorded_attempt_never_waits_for_the_device(dtype, size, region_size, scope):
    batch = torch.empty(5, 3, size, size, dtype=dtype, device="meta")
    outputs = first_attempt(batch, region_size, scope=scope)
    regions, rungs, shuffled, vfe = outputs[0], outputs[7], outputs[8], outputs[9]
    n = (size // region_size) ** 2
    assert regions.shape == shuffled.shape == (5, 3, n, region_size, region_size)
    assert rungs.shape == (5, n) and vfe.shape == (5,) and vfe.device.type == "meta"


def test_the_meta_probe_catches_the_grouped_shuffle_s_data_dependent_work():
    """The negative control: grouping rows by rung needs the rung counts on the host."""
    batch = torch.empty(5, 3, 32, 32, dtype=torch.uint8, device="meta")
    with pytest.raises((NotImplementedError, RuntimeError)):
        first_attempt(batch, fixed_shapes=False)


def test_graphs_are_on_unless_switched_off_and_only_ever_on_cuda(monkeypatch):
    monkeypatch.delenv(_graphs.ENV, raising=False)
    assert _graphs.enabled(torch.device("cuda")) and not _graphs.enabled(torch.device("cpu"))
    for value, on in (("1", True), ("on", True), ("0", False), ("no", False)):
        monkeypatch.setenv(_graphs.ENV, value)
        assert _graphs.enabled(torch.device("cuda:1")) is on
        assert not _graphs.enabled(torch.device("cpu"))
    monkeypatch.setenv(_graphs.ENV, "ture")  # a typo is not silently "off"
    with pytest.raises(ValueError, match="VISUALMIXER_CUDA_GRAPHS must be one of .*got 'ture'"):
        _graphs.enabled(torch.device("cuda"))


def noisy_double(t, generator):
    return (t * 2 + torch.rand(t.shape, generator=generator),)


class NoRecording:
    def __init__(self, fn, args, seeded):
        raise RuntimeError("no CUDA here")


def test_a_stage_that_cannot_be_recorded_runs_eagerly_with_one_warning():
    """Recording is an optimisation: where it fails (here: CPU tensors), the stage still
    runs, the caller gets its result, and the failure is reported once per key, on the
    key's second call (the first records nothing)."""
    _graphs.clear()
    x = torch.arange(6.0)
    with _graphs.LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (first,), generator = _graphs.run("double", (), noisy_double, (x,), 7)
        assert not _graphs._graphs
        with pytest.warns(UserWarning, match="not recorded"):
            (second,), _ = _graphs.run("double", (), noisy_double, (x,), 7)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (third,), _ = _graphs.run("double", (), noisy_double, (x,), 7)
    # Seeded from 7 and handed back to the caller, whose next draws continue its stream.
    seven = torch.Generator().manual_seed(7)
    assert torch.equal(first, x * 2 + torch.rand(6, generator=seven))
    assert torch.equal(first, second) and torch.equal(first, third)
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=seven))
    _graphs.clear()


def test_both_caches_stay_bounded():
    _graphs.clear()
    with _graphs.LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size in range(_graphs.MAX_GRAPHS + 3):  # each key twice: each gets an entry
            for _ in range(2):
                _graphs.run("double", (), noisy_double, (torch.zeros(size + 1),), None)
        assert len(_graphs._graphs) == _graphs.MAX_GRAPHS and not _graphs._seen
        for size in range(_graphs.MAX_SEEN + 5):  # each key once
            _graphs.run("double", (), noisy_double, (torch.zeros(100 + size),), None)
        assert len(_graphs._seen) == _graphs.MAX_SEEN
    _graphs.clear()
    assert not _graphs._graphs and not _graphs._seen


class CountingReplay(ReplayOnCpu):
    made = 0

    def __init__(self, fn, args, seeded):
        type(self).made += 1
        super().__init__(fn, args, seeded)


@pytest.mark.parametrize("seed", [None, 3])
def test_a_key_is_recorded_on_its_second_call_and_replays_follow_the_eager_stream(monkeypatch, seed):
    """A key called once records nothing; its second call records one graph, which later
    calls replay. Seeded or not, the results (and, unseeded, the global generator's stream
    afterwards) are the bits the eager fallback gives: the check's replay from the state
    before the second call leaves no trace, whether the graph passes it or not."""
    x = torch.arange(12.0)
    results = {}
    recorders = {"fallback": NoRecording, "replayed": CountingReplay, "rejected": FrozenReplay}
    CountingReplay.made = 0
    for name, recorder in recorders.items():
        monkeypatch.setattr(_graphs, "_Recorded", recorder)
        _graphs.clear()
        torch.manual_seed(1)
        outputs = []
        with _graphs.LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for call in range(4):
                (out,), _ = _graphs.run("double", (), noisy_double, (x,), seed)
                outputs.append(out.clone())
                if call == 0:
                    assert not _graphs._graphs and len(_graphs._seen) == 1
        results[name] = outputs + [torch.rand(5)]
        assert len(_graphs._graphs) == 1 and (None in _graphs._graphs.values()) == (name != "replayed")
    assert CountingReplay.made == 1
    for name in ("replayed", "rejected"):  # a rejected graph leaves no trace in the stream either
        assert all(torch.equal(a, b) for a, b in zip(results["fallback"], results[name], strict=True)), name
    _graphs.clear()


def test_the_switch_leaves_cpu_results_bit_for_bit_unchanged(monkeypatch):
    from common.visualmixer import obfuscate
    from tests.test_visualmixer import images_for

    x = images_for(2, 12, 32)
    monkeypatch.setenv(_graphs.ENV, "0")
    off = obfuscate(x, 0.8, seed=3)
    monkeypatch.setenv(_graphs.ENV, "1")
    on = [obfuscate(x, 0.8, seed=3) for _ in range(3)]
    assert all(torch.equal(off.images, o.images) and torch.equal(off.vfe, o.vfe) for o in on)
    assert not _graphs._graphs and not _graphs._seen


def test_switched_overrides_the_environment_inside_its_block(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setenv(_graphs.ENV, "1")
    with _graphs.switched(False):
        assert not _graphs.enabled(cuda)
        with _graphs.switched(True):
            assert _graphs.enabled(cuda) and not _graphs.enabled(torch.device("cpu"))
        assert not _graphs.enabled(cuda)
    assert _graphs.enabled(cuda)


def fields(result):
    return result.images, result.vfe, result.block_size, result.met_target


@pytest.mark.parametrize("target,scope,dtype", [(0.8, 1, torch.uint8), (0.8, 0, torch.float32), (0.97, 1, torch.uint8), (1.2, 2, torch.uint8)])
def test_a_replayed_attempt_gives_the_bits_of_the_eager_fallback(monkeypatch, target, scope, dtype):
    """Replays (a seeded graph re-seeds its own generator) give exactly what the same stages
    give eagerly from a fresh generator with that seed, retries included (0.97 sends images
    back; 1.2 is out of reach, so every retry runs); the graph is reused across calls."""
    from common.visualmixer import obfuscate
    from tests.test_visualmixer import images_for

    x = images_for(4, 24, 32)
    x = x if dtype == torch.uint8 else x.float() / 255
    monkeypatch.setattr(_graphs, "enabled", lambda device: True)
    results = {}
    for name, recorder in (("fallback", NoRecording), ("replayed", ReplayOnCpu)):
        monkeypatch.setattr(_graphs, "_Recorded", recorder)
        _graphs.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[name] = [obfuscate(x, target, region_scope=scope, seed=s) for s in (0, 1, 0, 1, 2)]
        assert len(_graphs._graphs) == 1
    _graphs.clear()
    for fallback, replayed in zip(results["fallback"], results["replayed"]):
        assert all(torch.equal(a, b) for a, b in zip(fields(fallback), fields(replayed)))
    first, second, again, *_ = results["replayed"]
    assert all(torch.equal(a, b) for a, b in zip(fields(first), fields(again)))
    assert not torch.equal(first.images, second.images)


def test_results_of_the_graph_path_are_not_overwritten_by_the_next_call(replayed_on_cpu):
    from common.visualmixer import obfuscate
    from tests.test_visualmixer import images_for

    x = images_for(5, 16, 32)
    for seed in (5, 6):  # the key's first two calls run eagerly (the second records)
        obfuscate(x, 0.97, seed=seed)
    first = obfuscate(x, 0.97, seed=0)
    kept = [t.clone() for t in fields(first)]
    obfuscate(x.flip(0), 0.97, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(kept, fields(first)))
    assert not torch.equal(obfuscate(x, 0.8).images, obfuscate(x, 0.8).images)  # unseeded: fresh


@pytest.mark.parametrize("seed", range(6))
def test_the_fixed_shape_shuffle_meets_the_target_and_keeps_each_region_multiset(replayed_on_cpu, seed):
    from common.visualmixer import obfuscate, visual_feature_entropy
    from tests.test_visualmixer import images_for, region_multisets

    r = (4, 8, 16)[seed % 3]
    images = images_for(seed, 6, 32)
    x = images if seed < 3 else images.float() / 255
    result = obfuscate(x, 0.3 + 0.1 * seed, region_size=r, chromatic=seed % 2 == 0, seed=seed)
    assert result.met_target.all()
    torch.testing.assert_close(result.vfe, visual_feature_entropy(result.images, r))
    assert torch.equal(region_multisets(x, r), region_multisets(result.images, r))
    scoped = obfuscate(x, 0.8, region_size=r, region_scope=0, seed=seed)
    assert torch.equal(x.flatten(1).sort(1).values, scoped.images.flatten(1).sort(1).values)


def test_fixed_and_grouped_shuffles_give_the_same_bits_when_every_rung_is_used(monkeypatch):
    """Same plan, same pools, same dealing. On the CPU each rung's pool comes from a numpy
    generator seeded by one torch draw, in rung order, so when every shuffled rung is in use
    both shuffles draw the same seeds and the fixed one's full-size pools start with the
    grouped one's: the results are bit-identical, which pins the dealing down exactly."""
    from common.shapes import generate_shapes
    from common.visualmixer import obfuscate

    images, _ = generate_shapes(512, seed=11)
    grouped = obfuscate(images, 0.8, seed=0)
    assert set(grouped.block_size.unique().tolist()) >= {4, 2, 1}  # every shuffled rung
    monkeypatch.setattr(_graphs, "enabled", lambda device: True)
    monkeypatch.setattr(_graphs, "_Recorded", ReplayOnCpu)
    _graphs.clear()
    fixed = obfuscate(images, 0.8, seed=0)
    _graphs.clear()
    assert all(torch.equal(a, b) for a, b in zip(fields(grouped), fields(fixed)))


class FrozenReplay(ReplayOnCpu):
    """A broken graph: every replay draws the same random numbers, whatever the seed or the
    default generator's state (what an unregistered generator would do)."""

    def __call__(self, args, seed):
        for static, arg in zip(self.inputs, args):
            static.copy_(arg)
        frozen = torch.Generator().manual_seed(0)
        for static, fresh in zip(self.outputs, self.fn(*self.inputs, generator=frozen)):
            static.copy_(fresh)
        return self.outputs


@pytest.mark.parametrize("seed", [None, 5])
def test_a_graph_that_freezes_its_random_draws_is_never_used(monkeypatch, seed):
    """The check before first use compares one replay with the same stages run eagerly from
    the same generator state; a graph that fails it is dropped with a warning, and calls
    run eagerly, still drawing fresh permutations."""
    from common.visualmixer import obfuscate
    from tests.test_visualmixer import images_for

    monkeypatch.setattr(_graphs, "enabled", lambda device: True)
    monkeypatch.setattr(_graphs, "_Recorded", FrozenReplay)
    _graphs.clear()
    x = images_for(6, 8, 32)
    obfuscate(x, 0.8, seed=seed)  # a key's first call records nothing
    with pytest.warns(UserWarning, match="differs from the same stages run eagerly"):
        first = obfuscate(x, 0.8, seed=seed)
    assert list(_graphs._graphs.values()) == [None]
    second = obfuscate(x, 0.8, seed=None if seed is None else seed + 1)
    assert not torch.equal(first.images, second.images) and first.met_target.all()
    _graphs.clear()
