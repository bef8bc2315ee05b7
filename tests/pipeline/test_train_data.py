"""Unit tests of the per-worker shard split, tar streaming, prefetching and the LR schedule."""

from __future__ import annotations

import io
import tarfile
import time

import numpy as np
import pytest

from pipeline.train.config import OptimConfig
from pipeline.train.data import Prefetcher, ShardEntry, iter_tar_samples, rank_block, steps_per_epoch
from pipeline.train.loop import lr_lambda


def _entries(counts):
    return [ShardEntry(url=f"mem://s{i}.tar", num_samples=n) for i, n in enumerate(counts)]


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
    buf = _tar([("a.frames.npy", b"1"), ("a.meta.json", b"{}"), ("dir/b.frames.npy", b"2"), ("dir/b.x", b"3")])
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


def test_lr_schedule_warmup_constant_and_cosine():
    const = lr_lambda(OptimConfig(schedule="constant", max_steps=100))
    assert [const(s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    cos = lr_lambda(OptimConfig(schedule="cosine", warmup_steps=10, max_steps=110, min_lr_ratio=0.1))
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    assert all(np.diff([cos(s) for s in range(10, 111)]) <= 1e-12)
