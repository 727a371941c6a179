"""The node's data cache (common/data.py): a deployed node starts a process per message, so
its data must open from disk in milliseconds, without decoding or generating again, and a
changed source must never be served from a stale copy."""

from __future__ import annotations

import shutil

import pytest
import torch

from common import data


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    data.cached_dataset.cache_clear()
    data.read_folder.cache_clear()
    yield tmp_path / "cache"
    data.cached_dataset.cache_clear()
    data.read_folder.cache_clear()


def _refuse(*args, **kwargs):
    raise AssertionError("the cache should have answered")


def test_generated_shapes_are_kept_and_memory_mapped_afterwards(cache, monkeypatch):
    first = data.load_dataset("shapes", "test", seed=3)
    assert len(list(cache.glob("shapes-*-test-3-32.pt"))) == 1
    monkeypatch.setattr(data, "generate_shapes", _refuse)
    again = data.load_dataset("shapes", "test", seed=3)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.classes == first.classes
    # Another generator (its source changed) gets files of its own.
    monkeypatch.setattr(data, "shapes_version", lambda: "another")
    with pytest.raises(AssertionError, match="the cache should have answered"):
        data.load_dataset("shapes", "test", seed=3)


def test_a_decoded_folder_opens_without_decoding_until_a_file_changes(cache, shapes_folder, tmp_path, monkeypatch):
    root = tmp_path / "folder"
    shutil.copytree(shapes_folder, root)
    first, _ = data.read_folder(str(root), "test", 32)
    data.read_folder.cache_clear()
    decode = data._decode
    monkeypatch.setattr(data, "_decode", _refuse)
    again, _ = data.read_folder(str(root), "test", 32)
    assert torch.equal(again.images, first.images)
    changed = next((root / "test").rglob("*.png"))
    changed.write_bytes(changed.read_bytes() + b"\0")  # same picture, another size: a changed file
    data.read_folder.cache_clear()
    with pytest.raises(AssertionError, match="the cache should have answered"):
        data.read_folder(str(root), "test", 32)
    monkeypatch.setattr(data, "_decode", decode)
    data.read_folder(str(root), "test", 32)


def test_an_unwritable_cache_still_serves_the_data(tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(data.CACHE_ENV, str(blocked / "cache"))
    data.cached_dataset.cache_clear()
    assert len(data.load_dataset("shapes", "test", seed=4)) == data.SHAPES_SIZES["test"]
    assert "Could not cache" in caplog.text
