"""The model stage of batch inference: a Ray actor that steps several videos at once.

Each actor owns one network and one streaming state with ``videos_in_flight`` slots (the batch dimension
of ``net.step``). It is handed a batch of videos (JSON work items), starts one decode+flow generator task per
slot (:func:`pipeline.segment.source.video_chunks`), and loops: every step runs one frame of each slot whose
next chunk is ready (``active``), a slot that starts a video is ``reset``, and a finished slot takes the
next video of the batch. Outputs are written as frames come out (:class:`VideoOutputs`), so memory is
bounded by the slots and chunks, not by video length.

Preprocessing, flow, the model step and post-processing are :class:`~pipeline.segment.VideoSegmenter`'s (the
decode tasks run its ``Preprocessing``); this actor only adds batching across videos and storage.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline import telemetry
from pipeline.config import config_from_dict
from pipeline.lease import LeaseLostError
from pipeline.runtime import keep_freed_memory, setup_logging
from pipeline.segment.config import SegmentConfig
from pipeline.segment.outputs import VideoOutputs
from pipeline.segment.segmenter import VideoSegmenter
from pipeline.segment.source import Chunk, video_chunks
from pipeline.storage import Storage, open_storage

log = logging.getLogger(__name__)

__all__ = ["SegmentActor"]

_WAIT_WARNING_S = 120.0  # how long the model may starve before the actor says so


@dataclass
class _Slot:
    """One video being segmented in one batch position."""

    record: dict
    generator: object
    outputs: VideoOutputs
    needs_reset: bool = True
    chunk: Chunk | None = None
    position: int = 0
    frames_done: int = 0
    model_seconds: float = 0.0
    step_seconds: float = 0.0


class SegmentActor:
    """A Ray actor class (``ray.remote(SegmentActor)``, see ``pipeline.segment.job``): :meth:`segment_batch` takes
    JSON work items (a VideoRecord dict, or a shard item from :func:`pipeline.segment.source.shard_records`).

    A write refused because the run lost its lease (:class:`~pipeline.lease.LeaseLostError`) is not a bad video:
    it ends the batch with that error, and the job with it."""

    def __init__(self, config: dict, output: Storage | None = None):
        started = time.perf_counter()
        import ray
        import torch

        setup_logging()  # Ray Data workers drop INFO records; the actor's lines (model, start-up) are the job's log
        keep_freed_memory()  # each frame's tensors reuse the last frame's pages (pipeline.runtime says why)

        imported = time.perf_counter()
        self.cfg: SegmentConfig = config_from_dict(SegmentConfig, config)
        rt = self.cfg.runtime
        want_cuda = self.cfg.model.device == "cuda" or (
            self.cfg.model.device == "auto" and rt.gpus_per_actor > 0
        )
        if want_cuda and not torch.cuda.is_available():
            raise RuntimeError("segment: model.device wants CUDA but this actor has no GPU")
        # Every torch call of this actor runs on this one thread. Why: an actor's methods may run on another thread
        # than __init__ (Ray Data's map actors do; so do threaded actors), and each thread that starts OpenMP work
        # gets its own OpenMP thread team. With two teams there are more OpenMP threads than CPUs, so libgomp stops
        # spinning at its barriers and sleeps at each of the thousands per frame: measured at 2 threads, ~12% of the
        # CPU idle and steps 10-30% slower than the same model on one thread.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment-model")
        threads = None if want_cuda else rt.torch_threads()
        self.segmenter, threads = self._model_thread.submit(self._load_model, threads, want_cuda).result()
        # Start-up is part of every run's cost (issue 16: <= 10 s for one short video): say where it went.
        log.info(
            "model actor ready in %.1f s (torch import %.1f s, model build + load %.1f s); %d torch threads "
            "for %s CPUs",
            time.perf_counter() - started,
            imported - started,
            time.perf_counter() - imported,
            threads,
            rt.cpus_per_actor,
        )
        # The job passes its fenced output: every write of this actor checks the run's lease first.
        self.output = output if output is not None else open_storage(self.cfg.output)
        self.input = open_storage(self.cfg.input)
        # The CPU stage: one generator task per video in flight, at most prefetch_chunks ahead of the model.
        self.decode_task = ray.remote(video_chunks).options(
            num_cpus=rt.decode_cpus, _generator_backpressure_num_objects=rt.prefetch_chunks
        )
        self.pool = ThreadPoolExecutor(max_workers=rt.write_threads, thread_name_prefix="segment-write")
        self.provenance = self.segmenter.provenance
        telemetry.set_job("segment")
        # Busy fraction: time inside the model step over this actor's wall time since it was ready.
        self.label = f"{socket.gethostname()}:{os.getpid()}"
        self._ready_at = self._wall_counted_at = time.perf_counter()

    def _load_model(self, threads: int | None, want_cuda: bool) -> tuple[VideoSegmenter, int]:
        """On the torch thread: (the segmenter, the torch threads it steps with)."""
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        # The driver resolved the settings against the checkpoint and warned where they differ: not once per actor.
        segmenter = VideoSegmenter.from_config(self.cfg, device="cuda" if want_cuda else "cpu", warn=False)
        return segmenter, torch.get_num_threads()

    # -------------------------------------------------------------------------------------------- helpers
    def _start(self, record: dict) -> _Slot:
        generator = self.decode_task.remote(self.input, record, self.segmenter.preprocessing)
        outputs = VideoOutputs(self.output, record["video_id"], record, self.cfg.outputs, self.pool)
        return _Slot(record=record, generator=generator, outputs=outputs)

    def _result(self, slot: _Slot, status: str, error: str = "") -> dict:
        seconds = time.time() - slot.outputs.started
        telemetry.VIDEO_SECONDS.observe(seconds)
        return {
            "video_id": slot.record["video_id"],
            "status": status,
            "frames": slot.frames_done if status == "done" else 0,
            "seconds": seconds,
            "model_seconds": slot.model_seconds,
            "step_seconds": slot.step_seconds,
            "actor": self.label,
            "actor_wall_s": time.perf_counter() - self._ready_at,
            "error": error,
        }

    def _count_wall(self) -> None:
        """Add the wall time since the last call to the model stage's worker seconds (the busy fraction's
        denominator)."""
        now = time.perf_counter()
        telemetry.WORKER_SECONDS.inc(now - self._wall_counted_at, stage="model")
        self._wall_counted_at = now

    def _count_step(self, seconds: float, stepped: int) -> None:
        """One model step of ``seconds`` over ``stepped`` frames, into the metrics."""
        telemetry.BUSY_SECONDS.inc(seconds, stage="model")
        for _ in range(stepped):
            telemetry.MODEL_FRAME_SECONDS.observe(seconds / stepped)
        self._count_wall()

    def _fetch(self, slot: _Slot) -> str | None:
        """Give the slot its next chunk if one is ready; returns 'end', an error message, or None."""
        import ray

        ready, _ = ray.wait([slot.generator], num_returns=1, timeout=0)
        if not ready:
            return None
        try:
            ref = next(slot.generator)
        except StopIteration:
            return "end"
        try:
            item = ray.get(ref)
        except Exception as err:  # the decode task died (e.g. out of memory): report, keep going
            return f"video {slot.record.get('name')!r}: decode task failed: {err}"
        if isinstance(item, dict):
            return item.get("error", "unknown decode error")
        slot.chunk, slot.position = item, 0
        return None

    def _inputs(self, slots: list[_Slot | None], active: list[bool]) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 frames and flow pictures of the active slots (zeros for idle ones)."""
        size = self.cfg.model.input_size
        frames = np.zeros((len(slots), size, size, 3), np.uint8)
        flows = np.zeros_like(frames)
        for b, slot in enumerate(slots):
            if active[b]:
                frames[b] = slot.chunk.frames[slot.position]
                flows[b] = slot.chunk.flows[slot.position]
        return frames, flows

    # ------------------------------------------------------------------------------------------ main loop
    def segment_batch(self, records: list[str]) -> list[dict]:
        """Segment the videos of ``records`` (JSON work items). One result dict per video: ``video_id``, ``status``
        ('done' or 'rejected'), ``frames``, ``seconds`` (wall), ``model_seconds`` (model step and post-processing),
        ``step_seconds`` (model step alone), ``actor`` (``host:pid``), ``actor_wall_s`` (this actor's wall time
        since it was ready) and ``error`` (naming the video)."""
        # On the actor's one torch thread (see __init__), whichever thread calls.
        return self._model_thread.submit(self._segment_batch, records).result()

    def _wait_for_decoders(self, waiting: list) -> None:
        """Nothing to step: sleep until one of the ``waiting`` decode generators has a chunk (or finished)."""
        import ray

        waited = time.perf_counter()
        while waiting and not ray.wait(waiting, num_returns=1, timeout=_WAIT_WARNING_S)[0]:
            log.warning(
                "no chunk from %d decode task(s) for %.0f s: are CPUs free for them (runtime.decode_cpus=%s)?",
                len(waiting),
                time.perf_counter() - waited,
                self.cfg.runtime.decode_cpus,
            )

    def _segment_batch(self, texts: list[str]) -> list[dict]:
        records = deque(json.loads(text) for text in texts)
        width = self.cfg.runtime.videos_in_flight
        slots: list[_Slot | None] = [None] * width
        state = self.segmenter.new_state(width)
        results: list[dict] = []
        self._count_wall()  # the time since the last batch: idle, waiting for work

        def close(b: int, status: str, error: str = "") -> None:
            slot = slots[b]
            if status == "done":
                try:
                    slot.outputs.finish(self.provenance)
                except LeaseLostError:
                    raise
                except Exception as err:  # storage failure while committing: reject, others go on
                    status, error = (
                        "rejected",
                        f"video {slot.record.get('name')!r}: writing outputs failed: {err}",
                    )
            if status != "done":
                slot.outputs.abort()
                log.warning("rejected video %s: %s", slot.record["video_id"], error)
            results.append(self._result(slot, status, error))
            slots[b] = None
            telemetry.IN_FLIGHT.set(sum(s is not None for s in slots))

        while records or any(slots):
            for b in range(width):
                if slots[b] is None and records:
                    slots[b] = self._start(records.popleft())
                    telemetry.IN_FLIGHT.set(sum(s is not None for s in slots))
            # Give every slot that needs one its next chunk, without waiting on slow decoders.
            for b, slot in enumerate(slots):
                if slot is None or slot.chunk is not None:
                    continue
                outcome = self._fetch(slot)
                if outcome == "end":
                    close(b, "done")
                elif outcome is not None:
                    close(b, "rejected", outcome)
            if not any(s is not None and s.chunk is not None for s in slots):
                self._wait_for_decoders([s.generator for s in slots if s is not None])
                continue
            active = [s is not None and s.chunk is not None for s in slots]
            reset = [bool(active[b] and slots[b].needs_reset) for b in range(width)]
            frames, flows = self._inputs(slots, active)
            started = time.perf_counter()
            logits = self.segmenter.step(frames, flows, state, reset, active)
            step_elapsed = time.perf_counter() - started
            results_now = self._postprocess(logits, slots, active)
            elapsed = time.perf_counter() - started
            stepped = sum(active)
            self._count_step(step_elapsed, stepped)
            for b, slot in enumerate(slots):
                if not active[b]:
                    continue
                slot.needs_reset = False
                slot.model_seconds += elapsed / stepped
                slot.step_seconds += step_elapsed / stepped
                chunk, i = slot.chunk, slot.position
                original = chunk.original[i] if chunk.original is not None else None
                mask, soft = results_now[b]
                try:
                    slot.outputs.add(chunk.indices[i], chunk.names[i], mask, soft, original, chunk.fps)
                except LeaseLostError:
                    raise
                except Exception as err:  # a failed write rejects this video only
                    close(b, "rejected", f"video {slot.record.get('name')!r}: writing outputs failed: {err}")
                    continue
                slot.frames_done += 1
                slot.position += 1
                if slot.position == len(chunk.names):
                    slot.chunk = None
        self._count_wall()
        return results

    def _postprocess(self, logits, slots: list[_Slot | None], active: list[bool]) -> dict[int, tuple]:
        """Per active slot: (mask, uint8 soft map or None) at the video's original size."""
        out = {}
        for b, slot in enumerate(slots):
            if active[b]:
                mask, prob = self.segmenter.postprocess(logits[b], (slot.chunk.height, slot.chunk.width))
                out[b] = (mask, self.segmenter.soft_map(prob) if self.cfg.outputs.save_probs else None)
        return out
