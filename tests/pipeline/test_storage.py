"""The storage layer against local disk and a real S3 server (moto on loopback), same cases for both."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from infra.local.ports import free_port
from pipeline.retry import retry_counts
from pipeline.storage import (
    S3Options,
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
    open_storage,
    storage_filesystem,
)


def test_write_read_list_exists_delete(storage_url):
    st = open_storage(storage_url)
    assert st.list() == []
    st.write_bytes("a/one.bin", b"1" * 10)
    st.write_bytes("a/two.tar", b"2" * 20)
    st.write_json("meta.json", {"k": [1, 2]})
    st.write_text("notes/readme.txt", "hello")

    assert st.read_bytes("a/one.bin") == b"1" * 10
    assert st.read_json("meta.json") == {"k": [1, 2]}
    assert st.read_text("notes/readme.txt") == "hello"
    assert st.size("a/two.tar") == 20
    assert st.exists("a/one.bin") and not st.exists("a/missing.bin")
    assert st.list() == ["a", "meta.json", "notes"]
    assert st.list("a") == ["one.bin", "two.tar"]
    assert st.list("a", suffix=".tar") == ["two.tar"]
    assert st.list(recursive=True) == ["a/one.bin", "a/two.tar", "meta.json", "notes/readme.txt"]
    assert st.list("not-there") == []

    child = st.child("a")
    assert child.read_bytes("one.bin") == b"1" * 10
    assert child.url == st.join("a")

    st.delete("a/one.bin")
    assert not st.exists("a/one.bin")
    st.delete("a/one.bin")  # deleting what is absent is fine
    st.delete("notes", recursive=True)
    assert st.list(recursive=True) == ["a/two.tar", "meta.json"]


def test_parquet_and_file_transfer(storage_url, tmp_path):
    import pyarrow as pa

    st = open_storage(storage_url)
    table = pa.table({"video": ["a", "b"], "frames": [3, 4]})
    st.write_parquet("index.parquet", table)
    assert st.read_parquet("index.parquet").equals(table)

    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))
    st.upload_file(str(src), "blobs/big.bin")
    dst = tmp_path / "back" / "big.bin"
    st.download_file("blobs/big.bin", str(dst))
    assert dst.read_bytes() == src.read_bytes()


def test_open_stream_reads_byte_ranges(storage_url):
    st = open_storage(storage_url)
    data = os.urandom(3 << 20)
    st.write_bytes("blob.bin", data)
    with st.open_stream("blob.bin") as f:
        assert f.read() == data
    with st.open_stream("blob.bin", start=1000, stop=(2 << 20) + 7) as f:
        head = f.read(10)
        assert head == data[1000:1010]
        assert f.read() == data[1010 : (2 << 20) + 7]
        assert f.read() == b""
    with st.open_stream("blob.bin", start=len(data) - 5) as f:
        assert f.read() == data[-5:]
    with st.open_stream("blob.bin", start=5, stop=5) as f:
        assert f.read() == b""
    with pytest.raises(StorageNotFoundError, match="missing.bin"):
        st.open_stream("missing.bin")


def test_atomic_write_leaves_nothing_on_failure(storage_url):
    st = open_storage(storage_url)
    st.write_bytes("keep.bin", b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with st.open_write("partial.bin") as f:
            f.write(b"x" * (1 << 20))
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with st.open_write("keep.bin") as f:
            f.write(b"new but unfinished")
            raise RuntimeError("boom")
    assert not st.exists("partial.bin")
    assert st.read_bytes("keep.bin") == b"old"  # the old version is intact
    assert st.list(recursive=True) == ["keep.bin"]


def test_s3_writes_stream_in_parts_and_abort_cleanly(s3_server, s3_bucket, monkeypatch):
    """Large S3 writes are multipart uploads sent while the block writes; a failing block aborts the upload."""
    import pipeline.storage as storage

    monkeypatch.setattr(storage, "S3_PART_BYTES", 5 << 20)  # S3's minimum part size
    st = open_storage(f"{s3_bucket}/p")
    bucket = s3_bucket.removeprefix("s3://")
    client = s3_server.client()
    data = os.urandom(1 << 20) * 12
    with st.open_write("big.bin") as f:
        for i in range(0, len(data), 1 << 20):
            f.write(data[i : i + (1 << 20)])
        in_flight = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert [u["Key"] for u in in_flight] == ["p/big.bin"]  # parts went out before the block ended
        assert not st.exists("big.bin")  # ... and nothing is visible yet
    assert st.read_bytes("big.bin") == data
    with pytest.raises(RuntimeError, match="boom"):
        with st.open_write("failed.bin") as f:
            f.write(data)
            raise RuntimeError("boom")
    assert not st.exists("failed.bin")
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted, not left to bill


_KILL_MID_WRITE = """
import os, sys
from pipeline.storage import open_storage
st = open_storage(sys.argv[1])
with st.open_write("killed.bin") as f:
    f.write(b"y" * (12 << 20))  # on S3, more than a part: a multipart upload is in flight
    f.flush()
    os._exit(9)  # the process dies mid-write: no cleanup, no commit
"""


def test_process_killed_mid_write_publishes_nothing(storage_url):
    st = open_storage(storage_url)
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_MID_WRITE, storage_url], capture_output=True, timeout=120
    )
    assert proc.returncode == 9, proc.stderr.decode()
    assert not st.exists("killed.bin")
    assert st.list(recursive=True) == []  # an orphaned temp file is never listed


def test_rejects_paths_escaping_the_root(storage_url):
    st = open_storage(storage_url)
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(ValueError, match="must"):
            st.write_bytes(bad, b"no")


def test_directory_marker_objects_are_not_listed(s3_server, s3_bucket):
    bucket = s3_bucket.removeprefix("s3://")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="data/", Body=b"")  # what pyarrow's try_create_dir leaves behind
    client.put_object(Bucket=bucket, Key="data/shards/", Body=b"")
    client.put_object(Bucket=bucket, Key="data/shards/000000.tar", Body=b"tar")
    st = open_storage(f"{s3_bucket}/data")
    assert st.list(recursive=True) == ["shards/000000.tar"]
    assert st.list("shards") == ["000000.tar"]


def test_pyarrow_filesystem_reaches_the_same_store(storage_url):
    import pyarrow.fs as pafs

    st = open_storage(storage_url)
    st.write_bytes("x/y.bin", b"via fsspec")
    fs, root = storage_filesystem(storage_url)
    assert "://" not in root
    with fs.open_input_stream(f"{root}/x/y.bin") as f:
        assert f.read() == b"via fsspec"
    with fs.open_output_stream(f"{root}/x/z.bin") as f:
        f.write(b"via pyarrow")
    assert st.read_bytes("x/z.bin") == b"via pyarrow"
    assert fs.get_file_info(f"{root}/x/none.bin").type == pafs.FileType.NotFound


def test_ray_data_round_trip_through_pyarrow_filesystem(storage_url, ray_cluster):
    import ray

    st = open_storage(storage_url)
    fs, root = st.pyarrow()
    rows = [{"video": f"v{i}", "frames": i} for i in range(20)]
    ray.data.from_items(rows).repartition(2).write_parquet(f"{root}/table", filesystem=fs)
    assert len(st.list("table", suffix=".parquet")) == 2
    back = ray.data.read_parquet(f"{root}/table", filesystem=fs).take_all()
    assert sorted(back, key=lambda r: r["frames"]) == rows


def test_storage_is_picklable_for_ray_tasks(storage_url, ray_cluster):
    import ray

    st = open_storage(storage_url)
    st.write_bytes("hello.txt", b"hi")
    _ = st.fs  # a live filesystem must not be shipped

    @ray.remote
    def read_remote(storage):
        return storage.read_bytes("hello.txt")

    assert ray.get(read_remote.remote(st)) == b"hi"


def test_storages_in_one_process_share_one_s3_filesystem(s3_server, s3_bucket, monkeypatch):
    """A new botocore client parses botocore's S3 model (~0.2 CPU-s): one per process and options, not per
    ``open_storage``; other options or a changed credential environment get their own."""
    import pickle

    a = open_storage(f"{s3_bucket}/a")
    b = open_storage(f"{s3_bucket}/b").child("c")
    assert a.fs is b.fs and pickle.loads(pickle.dumps(a)).fs is a.fs
    b.write_bytes("x.bin", b"1")
    assert open_storage(f"{s3_bucket}/b/c").read_bytes("x.bin") == b"1"
    assert open_storage(f"{s3_bucket}/a", s3=S3Options(max_attempts=2)).fs is not a.fs
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated")
    assert open_storage(f"{s3_bucket}/a").fs is not a.fs


def test_missing_bucket_names_the_url(s3_server):
    st = open_storage("s3://no-such-bucket-hmhi/prefix")
    with pytest.raises(StorageNotFoundError, match="^list s3://no-such-bucket-hmhi/prefix"):
        st.list()
    with pytest.raises(StorageNotFoundError, match="s3://no-such-bucket-hmhi/prefix/a.bin"):
        st.read_bytes("a.bin")
    with pytest.raises(StorageNotFoundError):
        st.check()


def test_missing_local_file_names_the_path(tmp_path):
    st = open_storage(f"file://{tmp_path}")
    assert st.url == str(tmp_path)
    with pytest.raises(StorageNotFoundError, match=str(tmp_path / "nope.bin")):
        st.read_bytes("nope.bin")


def test_missing_credentials_error_names_url_not_secret(s3_server, s3_bucket, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    st = open_storage(f"{s3_bucket}/p")
    with pytest.raises(StorageAuthError, match=f"{s3_bucket}/p") as info:
        st.read_bytes("a.bin")
    assert "credentials" in str(info.value)


@pytest.fixture(scope="module")
def auth_s3_endpoint():
    """A second moto server that enforces IAM authentication, so unknown keys are rejected."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_bad_credentials_error_names_url_not_secret(auth_s3_endpoint):
    secret = "SUPERSECRETVALUE123456"
    opts = S3Options(
        endpoint_url=auth_s3_endpoint, access_key_id="AKIAUNKNOWNKEY000000", secret_access_key=secret
    )
    st = open_storage("s3://some-bucket/prefix", s3=opts)
    retried_before = retry_counts().get("s3_request", 0)
    with pytest.raises(StorageAuthError, match="s3://some-bucket/prefix") as info:
        st.list()
    # a rejected key is permanent: answered at once, never resent with backoff
    assert retry_counts().get("s3_request", 0) == retried_before
    assert secret not in str(info.value) and secret not in repr(opts)


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(StorageError, match="unsupported URL scheme"):
        open_storage("gs://bucket/x")
    with pytest.raises(StorageError, match="needs a bucket"):
        open_storage("s3://")


class _Fence:
    """A fence under the test's control: counts its checks, refuses once closed."""

    def __init__(self):
        self.checks = 0
        self.open = True

    def check(self) -> None:
        self.checks += 1
        if not self.open:
            raise StorageError("fence closed: this run may no longer write")

    def portable(self):
        return self


def test_fenced_writes_check_at_the_commit_and_commit_nothing_once_refused(storage_url, s3_server):
    fence = _Fence()
    st = open_storage(storage_url).fenced(fence)
    with st.open_write("a.bin") as f:
        f.write(b"abc")
        assert fence.checks == 0 and not st.exists("a.bin")  # checked at the commit step, not before
    assert fence.checks == 1 and st.read_bytes("a.bin") == b"abc"
    st.write_bytes("empty.bin", b"")  # an empty object too (on S3: one empty part)
    assert st.read_bytes("empty.bin") == b""
    st.child("sub").write_text("b.txt", "x")  # a child keeps the fence
    assert fence.checks == 3
    fence.open = False
    with pytest.raises(StorageError, match="fence closed"):
        st.write_bytes("late.bin", b"no")
    with pytest.raises(StorageError, match="fence closed"):
        st.delete("a.bin")
    assert not st.exists("late.bin") and st.read_bytes("a.bin") == b"abc"
    if st.is_local:
        assert not [n for n in os.listdir(st.root) if ".tmp-" in n]  # the refused write's file is gone
    else:
        bucket = st.root.partition("/")[0]
        assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted


def test_fenced_s3_write_whose_upload_was_collected_commits_nothing(s3_server, s3_bucket):
    """What a writer paused past its fence check meets when another run took the output over: its upload was
    aborted by the taker's leftover collection, so the late commit fails and nothing appears."""
    from pipeline.storage import clean_leftovers

    # S3 answers the late commit NoSuchUpload; moto answers a 500, which the writer would retry for most of a
    # minute: one attempt is enough to see that nothing is committed.
    st = open_storage(f"{s3_bucket}/out", S3Options(max_attempts=1)).fenced(_Fence())
    with pytest.raises(StorageError, match="nothing was written|kept failing"):
        with st.open_write("late.json") as f:
            f.write(b"{}")
            clean_leftovers(open_storage(f"{s3_bucket}/out"), older_than=time.time() + 3600)  # the taker's
    assert not st.exists("late.json")


def test_temp_names_fit_the_file_system_limit(tmp_path):
    from pipeline.storage import _TEMP_NAME, temp_name

    st = open_storage(str(tmp_path))
    longest = "é" * 127  # 254 bytes in UTF-8: a legal file name on its own
    st.write_text(longest, "fits")  # its temporary name must fit in 255 bytes too
    assert (tmp_path / longest).read_text() == "fits"
    for leaf in ("x", "a" * 255, longest):
        name = temp_name(leaf)
        assert len(name.encode()) <= 255 and _TEMP_NAME.fullmatch(name) and name.startswith(".")
    assert not _TEMP_NAME.fullmatch(
        f".notes.tmp-{'0' * 32}"
    )  # not a uuid4: not this project's temporary file


def test_pyarrow_filesystem_with_explicit_keys_pickles_no_secret(s3_server, s3_bucket):
    import pickle

    keys = S3Options(access_key_id="testing", secret_access_key="SECRET-never-pickled-0xfeed")
    fs, root = open_storage(f"{s3_bucket}/p", keys).pyarrow()
    open_storage(f"{s3_bucket}/p").write_text("x.txt", "reachable")
    with fs.open_input_stream(f"{root}/x.txt") as f:
        assert f.read() == b"reachable"  # the keys are used in this process
    blob = pickle.dumps(fs)
    assert b"SECRET-never-pickled-0xfeed" not in blob and b"testing" not in blob
    again = pickle.loads(blob)  # rebuilt keyless: this process's provider chain (here AWS_* variables)
    with again.open_input_stream(f"{root}/x.txt") as f:
        assert f.read() == b"reachable"
    shared, _ = open_storage(
        f"{s3_bucket}/p", S3Options(**vars(keys) | {"share_credentials": True})
    ).pyarrow()
    assert b"SECRET-never-pickled-0xfeed" in pickle.dumps(shared)  # only when asked to share them


def test_a_pyarrow_upload_whose_parts_fail_raises_instead_of_reporting_success(
    s3_server, s3_bucket, tmp_path
):
    """Ray Train persists checkpoints with pyarrow's copy_files on this filesystem. The multipart upload is aborted
    while the file is being copied (its part uploads then fail on every attempt): the copy must raise, never return
    as if written with no object in the store (what pyarrow's background writes did)."""
    import threading

    import pyarrow.fs as pafs

    st = open_storage(f"{s3_bucket}/runs", S3Options(max_attempts=2))
    fs, root = st.pyarrow()
    src = tmp_path / "checkpoint_00000004"
    src.mkdir()
    (src / "checkpoint.pt").write_bytes(os.urandom(24 << 20))  # several of pyarrow's parts
    client, bucket = s3_server.client(), s3_bucket.removeprefix("s3://")
    aborted = threading.Event()

    def abort_the_upload() -> None:  # what a store that keeps failing does to the part uploads
        deadline = time.time() + 60
        while time.time() < deadline and not aborted.is_set():
            for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.set()
            time.sleep(0.005)

    aborter = threading.Thread(target=abort_the_upload)
    aborter.start()
    try:
        with pytest.raises(OSError, match="checkpoint.pt"):
            pafs.copy_files(
                str(src),
                f"{root}/checkpoint_00000004",
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=fs,
            )
    finally:
        aborted.set()
        aborter.join()
    assert not st.exists("checkpoint_00000004/checkpoint.pt")
