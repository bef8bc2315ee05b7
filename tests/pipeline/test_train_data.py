"""Unit tests of the per-worker shard split, tar streaming and prefetching."""

from __future__ import annotations

import io
import tarfile
import time

import pytest
import torch

from pipeline.shards import ShardEntry, iter_tar_samples
from pipeline.train.data import Prefetcher
from pipeline.train.epochs import rank_block, steps_per_epoch
from tests.media import write_train_shards


def _entries(counts):
    return [ShardEntry(url=f"mem://s{i}.tar", offsets=range(n), sizes=[1] * n) for i, n in enumerate(counts)]


@pytest.mark.parametrize("counts,world", [([5, 3, 9, 1], 2), ([7], 3), ([2, 2, 2, 2, 2], 4), ([1, 30], 2)])
def test_rank_blocks_are_equal_disjoint_and_cover_all_but_the_remainder(counts, world):
    shards = _entries(counts)
    total = sum(counts)
    for epoch in range(3):
        seen = set()
        for rank in range(world):
            segs = rank_block(shards, epoch, seed=1, world_size=world, rank=rank)
            items = {(s, i) for s, a, b in segs for i in range(a, b)}
            assert len(items) == total // world  # equal work for every rank: no rank can wait on another
            assert not items & seen
            seen |= items
        assert len(seen) == world * (total // world)


def test_rank_blocks_reshuffle_shards_between_epochs():
    shards = _entries([3] * 8)
    orders = {tuple(s for s, _, _ in rank_block(shards, e, 0, 1, 0)) for e in range(6)}
    assert len(orders) > 1


def test_steps_per_epoch_from_index_only():
    assert steps_per_epoch(_entries([5, 3, 9, 1]), 2, 2) == 4  # 18 // 2 = 9 per rank -> 4 batches of 2
    assert steps_per_epoch(_entries([1]), 2, 1) == 0


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_iter_tar_samples_groups_contiguous_members_by_key():
    buf = _tar(
        [("a.frames.npy", b"1"), ("a.meta.json", b"{}"), ("dir/b.frames.npy", b"2"), ("dir/b.x", b"3")]
    )
    samples = list(iter_tar_samples(buf, "mem://x.tar"))
    assert [s["__key__"] for s in samples] == ["a", "dir/b"]
    assert samples[0]["frames.npy"] == b"1" and samples[1]["x"] == b"3"


def test_iter_tar_samples_names_a_broken_shard():
    with pytest.raises(ValueError, match="mem://bad.tar"):
        list(iter_tar_samples(io.BytesIO(b"not a tar at all" * 64), "mem://bad.tar"))


def test_prefetcher_runs_ahead_and_reraises_producer_errors():
    def produce():
        for i in range(3):
            time.sleep(0.05)
            yield i
        raise RuntimeError("decode failed in shard x")

    pre = Prefetcher(produce(), depth=2)
    assert [next(pre) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="shard x"):
        next(pre)
    assert pre.wait_s > 0.05
    inline = Prefetcher(iter([1, 2]), depth=0)
    assert list(inline) == [1, 2]


def test_train_stream_is_deterministic_parallel_and_resumable(tmp_path):
    from pipeline.shards import decode_clip
    from pipeline.train.config import AugmentConfig, DataConfig
    from pipeline.train.data import TrainStream
    from pipeline.train.job import resolve_shards

    root = str(tmp_path / "shards")
    write_train_shards(root)
    shards, left_out = resolve_shards(root, "train", verify=True, need_masks=True)
    assert left_out == 2 and len(shards) >= 2 and sum(s.num_samples for s in shards) == 8

    def stream(workers=0, start=None, world=1, rank=0):
        cfg = DataConfig(batch_size_per_worker=2, shuffle_buffer=3, decode_workers=workers)
        return TrainStream(shards, cfg, AugmentConfig(), 32, 7, world, rank, decode_clip, start=start)

    inline = stream()
    assert inline.steps_per_epoch == 4
    it = iter(inline)
    first = [next(it) for _ in range(6)]  # crosses into epoch 1
    assert [b.position.epoch for b in first] == [0, 0, 0, 0, 1, 1]
    assert sorted(k for b in first[:4] for k in b.keys) == sorted({k for b in first[:4] for k in b.keys})
    assert all(b.frames.shape == (2, 5, 3, 32, 32) and b.masks.shape == (2, 5, 1, 32, 32) for b in first)

    pooled = iter(stream(workers=2))
    for a in first:
        b = next(pooled)
        assert a.keys == b.keys and a.position == b.position
        assert (
            torch.equal(a.frames, b.frames)
            and torch.equal(a.flows, b.flows)
            and torch.equal(a.masks, b.masks)
        )

    resumed = iter(stream(start=first[2].position))
    for a in first[3:]:
        b = next(resumed)
        assert a.keys == b.keys and torch.equal(a.frames, b.frames)

    ranks = [iter(stream(world=2, rank=r)) for r in (0, 1)]
    keys = [{k for _ in range(2) for k in next(r).keys} for r in ranks]
    assert not keys[0] & keys[1] and len(keys[0]) == len(keys[1]) == 4


def test_train_stream_reopens_a_shard_whose_read_fails_and_names_it_when_it_keeps_failing(
    tmp_path, monkeypatch, caplog
):
    """Issue 14: a dropped connection in the middle of a shard is retried at the sample reached (same batches as a
    fault-free stream); a shard that keeps failing raises ShardReadError naming its URL."""
    import pipeline.train.data as data
    from pipeline.retry import Backoff
    from pipeline.shards import decode_clip
    from pipeline.train.config import AugmentConfig, DataConfig
    from pipeline.train.data import ShardReadError, TrainStream
    from pipeline.train.job import resolve_shards

    root = str(tmp_path / "shards")
    write_train_shards(root, target_bytes=400_000)  # shards of several samples: the cut lands inside one
    shards, _ = resolve_shards(root, "train", verify=False, need_masks=True)
    assert max(s.num_samples for s in shards) >= 2

    def stream(read_retries=3):
        cfg = DataConfig(batch_size_per_worker=2, shuffle_buffer=3, read_retries=read_retries)
        s = TrainStream(shards, cfg, AugmentConfig(), 32, 7, 1, 0, decode_clip)
        s.READ_BACKOFF = Backoff(first_s=0.01, max_s=0.01)  # quick retries for the test
        return s

    it = iter(stream())
    expected = [next(it) for _ in range(4)]  # one epoch, fault-free

    real_read = data.read_samples
    calls, cut = [], []

    def read_cut_once(entry, start=0, stop=None):
        """The real reader; its connection drops once, after the first sample of a range (as a reset body would)."""
        calls.append((entry.url, start))
        for i, sample in enumerate(real_read(entry, start, stop)):
            if not cut and i == 1:
                cut.append(len(calls) - 1)
                raise ConnectionResetError("connection reset by peer")
            yield sample

    monkeypatch.setattr(data, "read_samples", read_cut_once)
    it = iter(stream())
    got = [next(it) for _ in range(4)]
    for a, b in zip(expected, got):
        assert a.keys == b.keys and torch.equal(a.frames, b.frames) and a.position == b.position
    failed = calls[cut[0]]
    assert calls[cut[0] + 1] == (failed[0], failed[1] + 1)  # reopened the same shard at the sample it reached
    assert "reopening" in caplog.text and failed[0] in caplog.text

    def read_always_fails(entry, start=0, stop=None):
        raise OSError("503 SlowDown")
        yield  # a generator, like the real reader

    monkeypatch.setattr(data, "read_samples", read_always_fails)
    with pytest.raises(ShardReadError, match="failed 3 times") as err:
        next(iter(stream(read_retries=2)))
    assert any(s.url in str(err.value) for s in shards) and "503 SlowDown" in str(err.value)


def test_train_stream_does_not_retry_a_shard_that_fails_its_checksum(tmp_path, monkeypatch):
    """Retrying cannot fix bytes that do not match the index: ShardChecksumError goes up at once (typed, so the
    train job names the shard as a bad input), and the shard is read once, not data.read_retries + 1 times."""
    import dataclasses

    import pipeline.train.data as data
    from pipeline.shards import ShardChecksumError, decode_clip
    from pipeline.train.config import AugmentConfig, DataConfig
    from pipeline.train.data import TrainStream
    from pipeline.train.job import resolve_shards

    root = str(tmp_path / "shards")
    write_train_shards(root)
    shards, _ = resolve_shards(root, "train", verify=False, need_masks=True)
    bad = [dataclasses.replace(s, checksum="0" * 64) for s in shards]
    real_read, reads = data.read_samples, []

    def counted_read(entry, start=0, stop=None):
        reads.append(entry.url)
        yield from real_read(entry, start, stop)

    monkeypatch.setattr(data, "read_samples", counted_read)
    stream = TrainStream(
        bad, DataConfig(batch_size_per_worker=2, read_retries=3), AugmentConfig(), 32, 7, 1, 0, decode_clip
    )
    with pytest.raises(ShardChecksumError, match="does not match the index") as err:
        next(iter(stream))
    assert len(reads) == 1 and reads[0] in str(err.value)
