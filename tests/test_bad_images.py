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
    data._load_folder.cache_clear()
    yield root
    data._load_folder.cache_clear()


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
    data._load_folder.cache_clear()  # a new process, as a deployed node's next message
    second = load_dataset("folder", "test", folder)
    assert len(calls) == 1 and (first.images == second.images).all() and (first.labels == second.labels).all()
    changed = sorted((folder / "test").rglob("*.png"))[0]
    os.utime(changed, ns=(0, 10**18))
    data._load_folder.cache_clear()
    load_dataset("folder", "test", folder)
    assert len(calls) == 2


def test_bad_images_is_a_checked_run_config_key():
    assert parse_run_config({}).bad_images == "skip"
    with pytest.raises(ConfigError, match="bad-images='ignore' is not one of: skip, fail"):
        parse_run_config({"bad-images": "ignore"})
