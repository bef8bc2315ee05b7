"""storage.local_copy / open_url: the one way to get a local file for a URL (issue 15)."""

from __future__ import annotations

import os

import pytest

from pipeline.storage import StorageError, StorageNotFoundError, local_copy, open_storage, open_url


def test_local_file_is_used_in_place_and_a_missing_one_is_named(tmp_path):
    path = tmp_path / "weights" / "model.pt"
    path.parent.mkdir()
    path.write_bytes(b"abc")
    for url in (str(path), f"file://{path}"):
        with local_copy(url) as local:
            assert local == str(path) and open(local, "rb").read() == b"abc"
    assert path.exists()  # nothing copied, nothing removed
    missing = str(tmp_path / "weights" / "nope.pt")
    with pytest.raises(StorageNotFoundError, match="nope.pt"), local_copy(missing):
        pass
    storage, leaf = open_url(f"{tmp_path}/weights/model.pt")
    assert storage.is_local and leaf == "model.pt" and storage.read_bytes(leaf) == b"abc"
    with pytest.raises(StorageError, match="names a bucket"):
        open_url("s3://bucket")


def test_remote_file_is_downloaded_to_a_temporary_copy_removed_afterwards(s3_bucket):
    store = open_storage(f"{s3_bucket}/runs")
    store.write_bytes("best/model.pt", b"weights")
    with local_copy(f"{s3_bucket}/runs/best/model.pt") as local:
        assert open(local, "rb").read() == b"weights" and os.path.basename(local) == "model.pt"
    assert not os.path.exists(local) and not os.path.exists(os.path.dirname(local))
    with (
        pytest.raises(StorageNotFoundError, match="runs/best/missing.pt"),
        local_copy(f"{s3_bucket}/runs/best/missing.pt"),
    ):
        pass
