"""The benchmark scripts still run and report what docs/benchmarks.md quotes (tiny settings, no timing)."""

import argparse
import json

import pytest

from simulations.bench import rounds as bench_rounds


def test_bench_rounds_splits_the_obfuscation_share_by_round():
    args = argparse.Namespace(dataset="shapes", data_dir="", rounds=3, clients=2, model="small-cnn")
    small = {"upload-samples": 32, "server-steps": 2, "eval-samples": 40}
    mixed = bench_rounds.measure("images", "visualmixer", args, small)
    plain = bench_rounds.measure("images", "none", args, small)
    assert mixed["rounds"] == 3 and mixed["bytes_up_per_round"] == plain["bytes_up_per_round"]
    for key in ("obfuscation_share_round_1", "obfuscation_share_later_rounds", "obfuscation_share_goal"):
        assert 0 < mixed[key] < 1 and plain[key] == 0
    assert mixed["obfuscation_seconds_per_round"] > 0 == plain["obfuscation_seconds_per_round"]
    # Round 1 includes the evaluation copy, a part of its share; later rounds reuse the copy.
    assert 0 < mixed["evaluation_copy_share_round_1"] < mixed["obfuscation_share_round_1"]


def test_bench_obfuscation_times_images_from_a_folder(tmp_path):
    """With --data-dir the benchmark times real images from the test split (here a tiny
    ImageFolder tree), and says so; too few images is a clear error."""
    import pytest
    import torch
    from PIL import Image

    from common.data import load_dataset
    from simulations.bench import obfuscation as bench_obfuscation

    generator = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (tmp_path / "test" / cls).mkdir(parents=True)
        for i in range(8):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "test" / cls / f"{i}.png")
    pool = load_dataset("folder", "test", tmp_path).images
    batch = bench_obfuscation.images(8, 32, pool)
    assert batch.shape == (8, 3, 32, 32) and torch.equal(batch[1], pool[2])
    row = bench_obfuscation.bench(8, 32, torch.device("cpu"), 0.8, 1, pool)
    assert row["transform_ips"] > 0 and row["transform_vs_gather"] > 0 and "train_step_ips" in row
    with pytest.raises(ValueError, match="fewer than batch 32"):
        bench_obfuscation.images(32, 32, pool)


def test_profile_obfuscation_counts_the_operators_of_one_call(tmp_path):
    import json

    import torch

    from simulations.bench import profile_obfuscation

    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    trace = tmp_path / "trace.json"
    row = profile_obfuscation.profile_call(x, 0.8, repeats=2, trace=str(trace))
    assert row["device"] == "cpu" and row["batch"] == 8 and row["wall_ms"] > 0
    assert 50 < row["operators"] < 1000  # one call dispatches a few hundred operators
    assert "traceEvents" in json.loads(trace.read_text())


def test_bench_retries_counts_and_times_the_calls_that_retried():
    import torch

    from simulations.bench import retries as bench_retries

    row = bench_retries.bench(16, 12, torch.device("cpu"), 0.99, 1)
    assert 0 < row["calls_with_retries"] <= row["retries"] and row["calls"] == 12
    assert row["timed_call_attempts"] >= 2
    assert row["with_retries_operators"] > row["first_draw_operators"]
    assert row["first_draw_ms"] > 0 and row["with_retries_ms"] > 0
    assert bench_retries.functional.ATTEMPTS == 4  # put back after the timing
    none = bench_retries.bench(16, 3, torch.device("cpu"), 0.0, 1)
    assert none["calls_with_retries"] == 0 and "retries_ms" not in none


def test_bench_guard_prints_the_guards_share_of_a_round(capsys):
    import json

    from simulations.bench import guard

    assert guard.main(["--nodes", "2", "--upload-samples", "16", "--server-steps", "2", "--repeats", "1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["images_per_round"] == 32 and row["guard_ms"] > 0 and 0 < row["guard_share"]


def test_bench_message_imports_prints_every_arm_against_the_baseline(monkeypatch, capsys):
    from simulations.bench import message_imports

    monkeypatch.setattr(message_imports, "ARMS", {"answering": "import json\n", "forwarding": "import os\n"})
    message_imports.main(["--repeats", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["arm"] for r in rows] == ["answering", "forwarding"]
    assert rows[0]["import_ratio"] == 1.0 and all(r["peak_rss_mb"] > 0 and r["process_seconds"] > 0 for r in rows)


def test_bench_deployment_reads_stage_timings_and_checks_its_modes(tmp_path):
    from simulations.bench import deployment

    with pytest.raises(SystemExit):
        deployment.main(["--modes", "plain,warm"])
    events = [{"outcome": "accepted", "what": "train", "stage-handler": h, "stage-forward": h + 0.1}
              for h in (1.0, 2.0, 3.0)] + [{"outcome": "rejected", "what": "train", "stage-handler": 9.0}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert deployment.message_stages(tmp_path) == {"train": {"stage-handler": 2.0, "stage-forward": 2.1}}
