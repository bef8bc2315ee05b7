"""Per-worker streaming of training clips from the data pipeline's WebDataset shards.

Why not Ray Data ``read_webdataset`` + dataset sharding: we need an *exact*, cheap data position for resume
(the issue asks for it in every checkpoint) and no CPU contention between Ray Data tasks and the training
workers on small clusters. The equivalent used here:

- The shard index lists every shard with its sample count. Each epoch, the shard order is permuted with
  ``(seed, epoch)`` and the concatenated sample list is cut into ``world_size`` contiguous, equal blocks of
  ``N // world_size`` samples (the remainder is dropped, like ``DistributedSampler(drop_last=True)``). A rank
  reads only the shards its block overlaps (about 1/world of the bytes), straight from storage, so nothing
  assumes a local disk and it works the same on one machine or many.
- Every rank runs the same number of steps per epoch, ``(N // world_size) // batch``, computed from the index
  alone: uneven shard counts or sizes can never make one rank wait for another (no hang). This split is
  :mod:`pipeline.train.epochs`.
- Samples go through a seeded shuffle buffer as raw bytes and are decoded only when drawn. The data position
  is ``(epoch, raw draws)``; a resumed run replays the draws without decoding and continues exactly where the
  checkpoint was taken. Clip sampling and augmentation use an RNG seeded by ``(seed, epoch, rank, draw)``.
- Samples without any ground-truth mask cannot give a training clip; they are skipped (counted) and the block
  is streamed again to fill the epoch.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.retry import Backoff, Retrying, RetryPolicy
from pipeline.shards import ShardChecksumError, ShardEntry, read_samples
from pipeline.storage import StorageAuthError, StorageNotFoundError
from pipeline.train.augment import ClipTensors, prepare_clip
from pipeline.train.config import AugmentConfig, DataConfig
from pipeline.train.epochs import rank_block, steps_per_epoch
from pipeline.train.sampler import sample_clip_indices

log = logging.getLogger(__name__)

__all__ = [
    "ShardReadError",
    "ClipBatch",
    "DataPosition",
    "TrainStream",
    "Prefetcher",
    "make_training_clip",
]


class ShardReadError(RuntimeError):
    """A shard could not be read after the stream's retries; names the shard URL and the sample reached."""


@dataclass
class DataPosition:
    """Where a rank's input stream stands after a step."""

    epoch: int = 0
    """Epoch of the stream."""
    draws: int = 0
    """Raw samples drawn from the rank's shuffle buffer in this epoch (valid or skipped)."""
    step_in_epoch: int = 0
    """Batches produced in this epoch."""


@dataclass
class ClipBatch:
    """A batch of preprocessed clips plus the data position reached after producing it."""

    frames: torch.Tensor
    """(B, L, 3, S, S) float32."""
    flows: torch.Tensor
    """(B, L, 3, S, S) float32."""
    masks: torch.Tensor
    """(B, L, 1, S, S) float32."""
    position: DataPosition
    """Data position after this batch (what a checkpoint taken after this step must record)."""
    keys: list[str]
    """Sample keys of the clips (for debugging)."""


class TrainStream:
    """Infinite, resumable stream of training batches for one rank.

    ``decode_fn(sample, positions=...) -> ClipSample`` decodes the given frames of a raw sample dict
    (``pipeline.shards.decode_clip``); the clip sampler needs only the sample's ``meta.json`` to choose them.
    """

    def __init__(
        self,
        shards: list[ShardEntry],
        data_cfg: DataConfig,
        augment_cfg: AugmentConfig,
        input_size: int,
        seed: int,
        world_size: int,
        rank: int,
        decode_fn,
        start: DataPosition | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    ):
        if not shards:
            raise ValueError("no training shards")
        self.shards = shards
        self.cfg = data_cfg
        self.augment_cfg = augment_cfg
        self.input_size = input_size
        self.normalization = normalization
        """The model's input ``(mean, std)``; None: ImageNet's."""
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.decode_fn = decode_fn
        self.steps_per_epoch = steps_per_epoch(shards, world_size, data_cfg.batch_size_per_worker)
        if self.steps_per_epoch < 1:
            total = sum(s.num_samples for s in shards)
            raise ValueError(
                f"{total} training samples cannot fill one step of {world_size} workers x "
                f"{data_cfg.batch_size_per_worker} clips; add data or lower data.batch_size_per_worker"
            )
        self.start = start or DataPosition()
        self.skipped: dict[str, str] = {}

    # -- raw sample stream --------------------------------------------------------------------------------------
    def _block_samples(self, epoch: int) -> Iterator[dict]:
        for shard_idx, start, stop in rank_block(self.shards, epoch, self.seed, self.world_size, self.rank):
            yield from self._read_with_retries(self.shards[shard_idx], start, stop)

    READ_BACKOFF = Backoff(first_s=1.0, max_s=30.0)
    """Wait before reopening a shard after a failed read: up to 1 s, doubling after each further failure."""

    def _read_retry_policy(self) -> RetryPolicy:
        """``data.read_retries`` reopenings of a shard after the first read. A missing shard, rejected credentials
        or a shard that fails its checksum raise at once: retrying cannot fix them."""
        return RetryPolicy(
            self.READ_BACKOFF,
            attempts=self.cfg.read_retries + 1,
            never_retry=(StorageNotFoundError, StorageAuthError, ShardChecksumError),
        )

    def _read_with_retries(self, entry: ShardEntry, start: int, stop: int) -> Iterator[dict]:
        """Samples ``start:stop`` of a shard; a read that fails (a dropped connection, a storage blip, a body cut
        short) reopens the shard at the first sample not yet yielded, up to ``data.read_retries`` times with a
        back-off, before the error goes up and Ray Train restarts the worker group from the last checkpoint."""
        position = start

        def gave_up(error: BaseException, failures: int) -> ShardReadError:
            return ShardReadError(
                f"shard {entry.url}: reading sample {position} of {entry.num_samples} failed {failures} times; "
                f"last error: {type(error).__name__}: {error}"
            )

        retrying = Retrying(
            self._read_retry_policy(),
            lambda: f"rank {self.rank}: reading shard {entry.url} at sample {position}",
            action="reopening it there",
            give_up=gave_up,
            logger=log,
        )
        while True:
            try:
                for sample in read_samples(entry, position, stop):
                    yield sample
                    position += 1
                return
            except Exception as e:  # botocore and fsspec raise many types for one dropped connection
                retrying.failed(e)

    def _shuffled(self, epoch: int) -> Iterator[dict]:
        """Shuffle-buffered raw samples of this rank's block, repeated (new shuffle per pass) forever."""
        for pass_index in range(1_000_000):
            rng = np.random.default_rng([self.seed, epoch, self.rank, pass_index, 0xB0F])
            buffer: list[dict] = []
            produced = 0
            for sample in self._block_samples(epoch):
                buffer.append(sample)
                if len(buffer) >= self.cfg.shuffle_buffer:
                    produced += 1
                    yield buffer.pop(int(rng.integers(len(buffer))))
            while buffer:
                produced += 1
                yield buffer.pop(int(rng.integers(len(buffer))))
            if produced == 0:
                raise ValueError(f"rank {self.rank}: its block of epoch {epoch} holds no samples")

    # -- batches ---------------------------------------------------------------------------------------------
    def _clips(
        self, raw: Iterator[dict], epoch: int, draw: int, pool
    ) -> Iterator[tuple[str, ClipTensors | None, int]]:
        """(key, clip or None, draw number) in draw order; decoded in ``pool`` (processes) when given."""
        args = (
            self.decode_fn,
            self.seed,
            epoch,
            self.rank,
            self.cfg.clip_length,
            self.cfg.max_skip,
            self.input_size,
            self.augment_cfg,
            self.normalization,
        )
        if pool is None:
            for sample in raw:
                draw += 1
                yield str(sample["__key__"]), make_training_clip(sample, draw, *args), draw
            return
        pending: deque = deque()
        lookahead = 2 * self.cfg.decode_workers + self.cfg.batch_size_per_worker
        while True:
            while len(pending) < lookahead:
                sample = next(raw)
                draw += 1
                pending.append(
                    (str(sample["__key__"]), pool.submit(make_training_clip, sample, draw, *args), draw)
                )
            key, future, number = pending.popleft()
            yield key, future.result(), number

    def __iter__(self) -> Iterator[ClipBatch]:
        pool = None
        if self.cfg.decode_workers > 0:
            # spawn, not fork: the training process is multi-threaded (Ray, torch, the prefetch thread).
            pool = ProcessPoolExecutor(
                self.cfg.decode_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_single_threaded_decoder,
            )
        try:
            yield from self._batches(pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _batches(self, pool) -> Iterator[ClipBatch]:
        epoch, skip, step = self.start.epoch, self.start.draws, self.start.step_in_epoch
        batch = self.cfg.batch_size_per_worker
        block_size = sum(s.num_samples for s in self.shards) // self.world_size
        while True:
            raw = self._shuffled(epoch)
            for _ in range(skip):  # replay the draws of a resumed epoch without decoding them
                next(raw)
            clips_in_order = self._clips(raw, epoch, skip, pool)
            misses = 0
            while step < self.steps_per_epoch:
                clips, keys = [], []
                while len(clips) < batch:
                    key, clip, draws = next(clips_in_order)
                    if clip is None:
                        self.skipped[key] = "no frame has a ground-truth mask"
                        misses += 1
                        if misses > block_size:
                            raise ValueError(
                                f"rank {self.rank}: no sample of its block in epoch {epoch} has a ground-truth mask"
                            )
                        continue
                    misses = 0
                    clips.append(clip)
                    keys.append(key)
                step += 1
                yield ClipBatch(
                    frames=torch.stack([c.frames for c in clips]),
                    flows=torch.stack([c.flows for c in clips]),
                    masks=torch.stack([c.masks for c in clips]),
                    position=DataPosition(epoch, draws, step),
                    keys=keys,
                )
            epoch, skip, step = epoch + 1, 0, 0


def _single_threaded_decoder() -> None:
    """Decode-pool initializer: parallelism comes from the worker processes, so OpenCV and torch run one thread
    each (their default thread pools oversubscribe the cores, and a 480p decode got ~20% slower with them)."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_training_clip(
    sample: dict,
    draw: int,
    decode_fn,
    seed: int,
    epoch: int,
    rank: int,
    clip_length: int,
    max_skip: int,
    input_size: int,
    augment_cfg: AugmentConfig,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> ClipTensors | None:
    """Decode one raw sample, sample a clip with the official sampler and augment it; None if it has no mask.

    The RNG is seeded by ``(seed, epoch, rank, draw)``, so the result does not depend on which process runs it.
    """
    meta = sample.get("meta.json")
    meta = meta if isinstance(meta, dict) else json.loads(bytes(meta).decode("utf-8"))
    eligible = np.flatnonzero(np.asarray(meta["mask_valid"], bool))
    if eligible.size == 0:
        return None
    rng = np.random.default_rng([seed, epoch, rank, draw, 0xC11B])
    picks = sample_clip_indices(eligible.tolist(), clip_length, max_skip, rng)
    clip = decode_fn(sample, positions=picks)  # only the sampled frames are decoded
    return prepare_clip(
        np.asarray(clip.frames),
        np.asarray(clip.flow_images()),
        np.asarray(clip.masks),
        input_size,
        rng,
        augment_cfg,
        normalization,
    )


class Prefetcher:
    """Runs an iterator in a background thread, ``depth`` items ahead, and measures time spent waiting on it.

    ``depth=0`` runs the iterator inline. Exceptions in the producer are re-raised in the consumer.
    """

    _END = object()

    def __init__(self, iterable, depth: int):
        self.depth = depth
        self.wait_s = 0.0
        self._it = iter(iterable)
        self._stop = threading.Event()
        if depth > 0:
            self._q: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="train-prefetch", daemon=True)
            self._thread.start()

    def _run(self):
        try:
            for item in self._it:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer
            self._q.put(e)
            return
        finally:
            self._close_source()
        self._q.put(self._END)

    def _close_source(self):
        # Closing the generator runs its cleanup (e.g. shutting down TrainStream's decode processes).
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            if self.depth == 0:
                return next(self._it)
            item = self._q.get()
            if item is self._END:
                raise StopIteration
            if isinstance(item, BaseException):
                raise item
            return item
        finally:
            self.wait_s += time.perf_counter() - t0

    def close(self):
        """Stop the producer and release what the source holds."""
        self._stop.set()
        if self.depth == 0:
            self._close_source()
        else:
            self._thread.join(timeout=10)
