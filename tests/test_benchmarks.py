"""The benchmark scripts still run and report what README quotes (tiny settings, no timing)."""

import argparse

from simulations import bench_rounds


def test_bench_rounds_splits_the_obfuscation_share_by_round():
    args = argparse.Namespace(dataset="shapes", data_dir="", rounds=2, clients=2)
    small = {"upload-samples": 32, "server-steps": 2, "eval-samples": 40}
    mixed = bench_rounds.measure("images", "visualmixer", args, small)
    plain = bench_rounds.measure("images", "none", args, small)
    assert mixed["rounds"] == 2 and mixed["bytes_up_per_round"] == plain["bytes_up_per_round"]
    for key in ("obfuscation_share_round_1", "obfuscation_share_later_rounds"):
        assert 0 < mixed[key] < 1 and plain[key] == 0
    assert mixed["obfuscation_seconds_per_round"] > 0 == plain["obfuscation_seconds_per_round"]
