"""CUDA graphs for obfuscate's deterministic stages (``common/visualmixer/_graphs.py``),
checked here without a GPU; ``tests/test_cuda.py`` records and replays them on one.

A CUDA graph can only record work that never waits for the device and whose shapes do not
depend on the data. Tensors on the ``meta`` device have shapes but no values, and take the
same non-CPU branches as CUDA ones, so any read of a value on the host (``.item()``,
``.tolist()``, ``bool()``) or any data-dependent shape (``nonzero``, ``bincount``) fails
on them: the recorded stages must run on ``meta`` from end to end, and the shuffle, which
does both, must not.
"""

import warnings

import pytest
import torch

from common.visualmixer import _graphs
from common.visualmixer._checks import check_block_sizes
from common.visualmixer.functional import _measure, _plan
from common.visualmixer.shuffle import shuffle_regions


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("size,region_size", [(32, 8), (32, 4), (224, 16)])
def test_recorded_stages_never_wait_for_the_device(dtype, size, region_size):
    ladder = check_block_sizes(None, region_size)
    batch = torch.empty(5, 3, size, size, dtype=dtype, device="meta")
    regions, variance, gap_energy, valid, _, _, goal, rungs = _plan(
        batch, 0.8, region_size, ladder, "gradient"
    )
    n = (size // region_size) ** 2
    assert regions.shape == (5, 3, n, region_size, region_size) and rungs.shape == (5, n)
    assert gap_energy.shape == (5, 3, n, region_size - 1) and goal.shape == (5,)
    source = torch.empty(5, 3 * n, dtype=torch.long, device="meta")
    (vfe,) = _measure(regions, source, variance, valid)
    assert vfe.shape == (5,) and vfe.device.type == "meta"


def test_the_meta_probe_catches_the_shuffle_s_data_dependent_work():
    """The negative control: grouping rows by rung needs the rung counts on the host."""
    ladder = check_block_sizes(None, 8)
    regions = torch.empty(5, 3, 16, 8, 8, dtype=torch.uint8, device="meta")
    rungs = torch.empty(5, 16, dtype=torch.long, device="meta")
    with pytest.raises((NotImplementedError, RuntimeError)):
        shuffle_regions(regions, rungs, ladder, (4, 4), True, 1, None)


def test_graphs_are_off_unless_switched_on_and_only_ever_on_cuda(monkeypatch):
    monkeypatch.delenv(_graphs.ENV, raising=False)
    assert not _graphs.enabled(torch.device("cuda"))
    for value, on in (("1", True), ("on", True), ("0", False), ("no", False)):
        monkeypatch.setenv(_graphs.ENV, value)
        assert _graphs.enabled(torch.device("cuda:1")) is on
        assert not _graphs.enabled(torch.device("cpu"))


def test_a_stage_that_cannot_be_recorded_runs_eagerly_with_one_warning():
    """Recording is an optimisation: where it fails (here: CPU tensors), the stage still
    runs, the caller gets its result, and the failure is reported once per key."""
    _graphs.clear()
    x = torch.arange(6.0)

    def double(t):
        return (t * 2,)

    with _graphs.LOCK:
        with pytest.warns(UserWarning, match="not recorded"):
            (first,) = _graphs.run("double", (), double, (x,))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (second,) = _graphs.run("double", (), double, (x + 1,))
    assert torch.equal(first, x * 2) and torch.equal(second, (x + 1) * 2)
    for size in range(_graphs.MAX_GRAPHS + 3):  # the cache stays bounded
        with _graphs.LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _graphs.run("double", (), double, (torch.zeros(size + 1),))
    assert len(_graphs._graphs) == _graphs.MAX_GRAPHS
    _graphs.clear()
    assert not _graphs._graphs


def test_the_switch_leaves_cpu_results_bit_for_bit_unchanged(monkeypatch):
    from common.visualmixer import obfuscate
    from tests.test_visualmixer import images_for

    x = images_for(2, 12, 32)
    monkeypatch.delenv(_graphs.ENV, raising=False)
    off = obfuscate(x, 0.8, seed=3)
    monkeypatch.setenv(_graphs.ENV, "1")
    on = obfuscate(x, 0.8, seed=3)
    assert torch.equal(off.images, on.images) and torch.equal(off.vfe, on.vfe)
    assert not _graphs._graphs


def test_switched_overrides_the_environment_inside_its_block(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setenv(_graphs.ENV, "1")
    with _graphs.switched(False):
        assert not _graphs.enabled(cuda)
        with _graphs.switched(True):
            assert _graphs.enabled(cuda) and not _graphs.enabled(torch.device("cpu"))
        assert not _graphs.enabled(cuda)
    assert _graphs.enabled(cuda)


class ReplayOnCpu:
    """Stands in for a recorded graph on the CPU with a graph's memory semantics: fixed
    input tensors the arguments are copied into, and fixed output tensors that every
    replay overwrites in place."""

    def __init__(self, fn, args):
        self.fn = fn
        self.inputs = tuple(a.clone() for a in args)
        self.outputs = tuple(t.clone() for t in fn(*self.inputs))

    def __call__(self, args):
        for static, arg in zip(self.inputs, args):
            static.copy_(arg)
        for static, fresh in zip(self.outputs, self.fn(*self.inputs)):
            static.copy_(fresh)
        return self.outputs


@pytest.fixture
def replayed_on_cpu(monkeypatch):
    """obfuscate takes its graph path on the CPU, through :class:`ReplayOnCpu`."""
    monkeypatch.setattr(_graphs, "enabled", lambda device: True)
    monkeypatch.setattr(_graphs, "_Recorded", ReplayOnCpu)
    _graphs.clear()
    yield
    _graphs.clear()


@pytest.mark.parametrize("target,scope", [(0.8, 1), (0.8, 0), (0.97, 1), (1.2, 2)])
def test_the_graph_path_gives_the_eager_bits(target, scope):
    """Through replayed stages a seeded call returns exactly what the eager one does, retries
    included (0.97 sends images back; 1.2 is out of reach, so every retry runs)."""
    from common.visualmixer import obfuscate
    from tests.test_visualmixer import images_for

    x = images_for(4, 24, 32)
    eager = [obfuscate(x, target, region_scope=scope, seed=s) for s in (0, 1)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_graphs, "enabled", lambda device: True)
        patch.setattr(_graphs, "_Recorded", ReplayOnCpu)
        _graphs.clear()
        replayed = [obfuscate(x, target, region_scope=scope, seed=s) for s in (0, 1)]
        assert len(_graphs._graphs) == 2  # the plan and the measurement, reused by the 2nd call
        _graphs.clear()
    for e, r in zip(eager, replayed):
        for a, b in zip((e.images, e.vfe, e.block_size, e.met_target), (r.images, r.vfe, r.block_size, r.met_target)):
            assert torch.equal(a, b)


def test_results_of_the_graph_path_are_not_overwritten_by_the_next_call(replayed_on_cpu):
    from common.visualmixer import obfuscate
    from tests.test_visualmixer import images_for

    x = images_for(5, 16, 32)
    first = obfuscate(x, 0.97, seed=0)
    kept = [t.clone() for t in (first.images, first.vfe, first.block_size, first.met_target)]
    obfuscate(x.flip(0), 0.97, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(kept, (first.images, first.vfe, first.block_size, first.met_target)))
