"""A folder data set with broken files: skipped with one warning, or failed on request;
decoded once and cached on disk for the next process."""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from common import data
from common.data import DataError, load_dataset
from common.run_config import ConfigError, parse_run_config


@pytest.fixture
def folder(tmp_path, shapes_folder):
    root = tmp_path / "photos"
    shutil.copytree(shapes_folder, root)
    data.read_folder.cache_clear()
    yield root
    data.read_folder.cache_clear()


def _corrupt(root, count: int) -> list[str]:
    paths = sorted((root / "train").rglob("*.png"))[:count]
    for path in paths:
        path.write_bytes(b"\xff\xd8\xff not an image")
    return [str(p) for p in paths]


def test_unreadable_files_are_skipped_with_one_warning(folder, caplog):
    broken = _corrupt(folder, 4)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        train = load_dataset("folder", "train", folder)
    assert len(train) == 200 - 4
    warnings = [r.message for r in caplog.records if "unreadable" in r.message]
    assert len(warnings) == 1 and "Skipped 4 unreadable image(s) of 200" in warnings[0]
    assert broken[0] in warnings[0] and ", ..." in warnings[0]  # the first few, not all


def test_bad_images_fail_names_the_file(folder):
    broken = _corrupt(folder, 1)
    with pytest.raises(DataError, match="bad-images=fail") as err:
        load_dataset("folder", "train", folder, bad_images="fail")
    assert broken[0] in str(err.value)


def test_a_folder_with_no_readable_image_fails_clearly(folder):
    _corrupt(folder, 200)
    with pytest.raises(DataError, match="none of the 200 files"):
        load_dataset("folder", "train", folder)


def test_decoded_images_are_cached_until_a_file_changes(folder, monkeypatch):
    calls = []
    decode = data._decode
    monkeypatch.setattr(data, "_decode", lambda *a: calls.append(1) or decode(*a))
    first = load_dataset("folder", "test", folder)
    data.read_folder.cache_clear()  # a new process, as a deployed node's next message
    second = load_dataset("folder", "test", folder)
    assert len(calls) == 1 and (first.images == second.images).all() and (first.labels == second.labels).all()
    changed = sorted((folder / "test").rglob("*.png"))[0]
    os.utime(changed, ns=(0, 10**18))
    data.read_folder.cache_clear()
    load_dataset("folder", "test", folder)
    assert len(calls) == 2


def test_bad_images_is_a_checked_run_config_key():
    assert parse_run_config({}).bad_images == "skip"
    with pytest.raises(ConfigError, match="bad-images='ignore' is not one of: skip, fail"):
        parse_run_config({"bad-images": "ignore"})


def test_a_node_with_a_missing_folder_says_why_in_one_line_and_the_others_go_on(folder, tmp_path, caplog):
    """The node stays up; every message gets the reason as an error reply (no traceback),
    its log has that line, and the server records it as the node's failure."""
    import json

    from flwr.app import Context, RecordDict

    from server.messaging import RunFailed
    from server.server_app import main as server_main
    from tests.fake_grid import FakeGrid
    from tests.test_flower_apps import FAST

    config = {**FAST, "dataset": "folder", "data-dir": str(folder), "output-dir": str(tmp_path / "out"),
              "run-name": "missing", "num-server-rounds": 1, "min-replies": 1}
    grid = FakeGrid(config, num_nodes=3)
    grid.contexts[3].node_config["data-dir"] = str(tmp_path / "no-such-folder")
    with caplog.at_level(logging.ERROR, logger="flwr"):
        try:
            server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
        except RunFailed:
            pass
    failed = [r for _, _, r in grid.log if r is not None and r.has_error()]
    assert failed and all(r.error.reason.startswith("node data: ") and "no-such-folder" in r.error.reason
                          and "\n" not in r.error.reason for r in failed)
    node_lines = [r for r in caplog.records if r.message.startswith("node data: ")]
    assert node_lines and all(r.exc_info is None for r in node_lines)
    rows = [json.loads(line) for line in (tmp_path / "out" / "missing" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["status"] == "completed" and rows[0]["replies"] == 2
    events = [json.loads(line) for line in (tmp_path / "out" / "missing" / "events.jsonl").read_text().splitlines()]
    assert any(e["outcome"] == "failed" and e["node"] == "3" and "no-such-folder" in e["reason"] for e in events)
