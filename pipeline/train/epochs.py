"""How an epoch's samples are split between the training ranks, from the shard index alone (see
:mod:`pipeline.train.data` for why): the shard order is permuted with ``(seed, epoch)``, the concatenated sample
list is cut into ``world_size`` contiguous, equal blocks (the remainder is dropped), and every rank runs the same
number of steps. Imports neither torch nor Ray: the training job's pre-flight checks the split on the driver.
"""

from __future__ import annotations

import numpy as np

from pipeline.shards import ShardEntry

__all__ = ["rank_block", "steps_per_epoch"]


def steps_per_epoch(shards: list[ShardEntry], world_size: int, batch_size: int) -> int:
    """Steps every rank runs per epoch (identical on all ranks; derived from the index only)."""
    total = sum(s.num_samples for s in shards)
    return (total // world_size) // batch_size


def rank_block(
    shards: list[ShardEntry], epoch: int, seed: int, world_size: int, rank: int
) -> list[tuple[int, int, int]]:
    """This rank's contiguous block of the epoch's sample list as ``(shard_index, start, stop)`` segments."""
    order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(shards))
    per_rank = sum(s.num_samples for s in shards) // world_size
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    segments = []
    offset = 0
    for idx in order:
        n = shards[idx].num_samples
        start, stop = max(lo, offset), min(hi, offset + n)
        if start < stop:
            segments.append((int(idx), start - offset, stop - offset))
        offset += n
    return segments
