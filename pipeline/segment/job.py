"""The segment job: segment every video of a corpus with HMHI-Net and write the masks back to storage.

Input: video files, DAVIS-style frame folders or any layout pipeline.ingest reads (``--format``, default auto), or
the data pipeline's shards (a root holding ``index.parquet``; frames and flow are read from them). Otherwise flow is
computed on the fly (``--flow-model``, default dis) or taken from the corpus' own flow pictures
(``--flow-model pictures``). The driver hands batches of videos to a pool of Ray actors; each steps
``videos_in_flight`` videos together through one :class:`~pipeline.segment.VideoSegmenter` while Ray generator
tasks decode and compute flow ahead of it. Outputs per video (original resolution): ``masks/<video>/<frame>.png``,
``rle/<video>.parquet``, optional ``probs/`` and ``overlays/``, and ``done/<video>.json`` written last. A rerun
skips finished videos; a killed run redoes unfinished ones; a corrupt video is reported, its partial outputs
removed, and the others finish.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Iterator

from pipeline.cli import JobSpec
from pipeline.config import ConfigError, config_from_dict, config_to_dict
from pipeline.flow.config import FlowConfig
from pipeline.formats import run_exports
from pipeline.ingest.manifest import list_corpus
from pipeline.lease import check_lease, fenced, holds_output_lease
from pipeline.names import UnsafeNameError, check_name
from pipeline.preflight import PreflightError, check_disjoint, check_input, check_output
from pipeline.runtime import init_ray
from pipeline.segment.config import SegmentConfig
from pipeline.segment.runner import SegmentActor
from pipeline.segment.segmenter import settings_from_checkpoint
from pipeline.segment.source import shard_records
from pipeline.segment_layout import SUMMARY, done_marker, finished_video_ids
from pipeline.shards import INDEX_NAME, list_index_parts
from pipeline.storage import Storage, local_copy, open_storage
from pipeline.summary import JobSummary

log = logging.getLogger("pipeline.segment.job")

__all__ = ["FLAGS", "JOB", "list_input", "preflight", "run", "work_list"]

FLAGS = {
    "--input": "input",
    "--output": "output",
    "--checkpoint": "model.checkpoint",
    "--model": "model.name",
    "--format": "format",
    "--preset": "preset",
    "--flow-model": "flow.engine",
    "--input-size": "model.input_size",
    "--precision": "model.precision",
    "--threshold": "outputs.threshold",
    "--binarize": "outputs.binarize",
    "--save-probs": ("outputs.save_probs", True),
    "--overlay": ("outputs.overlay", True),
    "--export": "outputs.export",
    "--overwrite": ("outputs.overwrite", True),
    "--videos": "videos",
    "--num-actors": "runtime.num_actors",
    "--videos-in-flight": "runtime.videos_in_flight",
}

_LISTED_SKIPS = 20  # skipped videos named one by one in the summary; beyond that only counted


def list_input(cfg: SegmentConfig, source: Storage) -> tuple[str, list[dict]]:
    """(format, one JSON-able record per video) of the input: the data pipeline's shards, or a corpus."""
    # A killed flow run may have committed index parts and no consolidated index yet: still shards.
    if cfg.format == "shards" or (
        cfg.format == "auto" and (source.exists(INDEX_NAME) or list_index_parts(source))
    ):
        return "shards", shard_records(source)  # frames and flow from the data pipeline's shards
    listing = list_corpus(source, cfg.format, cfg.davis_resolution)
    return listing.format, [rec.to_dict() for rec in listing.records]


def unknown_videos(cfg: SegmentConfig, records: list[dict]) -> list[str]:
    """The names of ``videos`` that match no video id or name of the input."""
    known = {r["video_id"] for r in records} | {r["name"] for r in records}
    return sorted(set(cfg.videos) - known)


def preflight(cfg: SegmentConfig) -> None:
    """Before Ray and before any write: the input exists and holds videos (every name of ``videos`` among them),
    the checkpoint is a segmentation model whose record completes the model and flow settings (contradicting
    flags are warned about, once, here), and the output can be written and is neither the input nor the
    checkpoint's folder."""
    source = check_input("input", cfg.input)
    check_input("model.checkpoint", cfg.model.checkpoint, folder=False)
    check_output("output", cfg.output)
    check_disjoint("output", cfg.output, {"input": cfg.input, "model.checkpoint": cfg.model.checkpoint})
    fmt, records = list_input(cfg, source)
    if not records:
        raise PreflightError(f"input {source.url}: no videos found (read as {fmt})")
    unknown = unknown_videos(cfg, records)
    if unknown:
        raise PreflightError(
            f"videos: {len(unknown)} not in {source.url} (format {fmt}): {', '.join(unknown[:5])}"
            + (" ..." if len(unknown) > 5 else "")
        )
    # Reading the checkpoint imports torch (the command line's parsing does not); building a network imports timm
    # as well (~2.5 s more), which only an official file, recording no model, needs here.
    from model import describe_checkpoint

    with local_copy(cfg.model.checkpoint, prefix="hmhi-preflight-") as path:
        info = describe_checkpoint(path)
        for warning in settings_from_checkpoint(cfg, info):
            log.warning("%s: %s", cfg.model.checkpoint, warning)
        # An official file records nothing: the config picks the architecture. Do the weights fit it?
        if info.settings is None:
            from model import create_model, load_checkpoint

            load_checkpoint(create_model(cfg.model.name, **cfg.model.architecture()), path)
    try:  # a flow engine the record named is checked like a flag (a ptlflow model needs its checkpoint file)
        cfg.flow = config_from_dict(FlowConfig, config_to_dict(cfg.flow))
    except ConfigError as e:
        raise e.under("flow") from None
    log.info(
        "pre-flight: %d videos in %s (%s); model %s at %dx%d, T=%d, flow %s (defaults: %s)",
        len(records),
        source.url,
        fmt,
        cfg.model.name,
        cfg.model.input_size,
        cfg.model.input_size,
        cfg.model.memory_size,
        cfg.flow.engine,
        "the checkpoint's record" if info.settings is not None else "the official protocol",
    )


def work_list(cfg: SegmentConfig, summary: JobSummary, source, output) -> tuple[str, list[dict], int]:
    """(format, the records to segment, number of records found); skips and unknown ``--videos`` go in ``summary``.

    One listing of the input and one of ``done/``: no request per video on the driver.
    """
    fmt, records = list_input(cfg, source)
    records = _safe_ids(records, summary, source)
    if cfg.videos:
        wanted = set(cfg.videos)
        records = [r for r in records if r["video_id"] in wanted or r["name"] in wanted]
        for name in sorted(wanted - {r["video_id"] for r in records} - {r["name"] for r in records}):
            summary.rejected("video", name, f"not found in {source.url} (format {fmt})")
    finished = set() if cfg.outputs.overwrite else set(finished_video_ids(output))
    todo, skipped = [], 0
    for rec in records:
        if rec["video_id"] not in finished:
            todo.append(rec)
            continue
        skipped += 1
        if skipped <= _LISTED_SKIPS:
            summary.skipped(
                "video", rec["video_id"], f"already done ({output.join(done_marker(rec['video_id']))})"
            )
        else:  # a rerun over 100,000 finished videos: count them, do not list them
            summary.counts["video"]["skipped"] += 1
    if skipped > _LISTED_SKIPS:
        summary.set("skipped_not_listed", skipped - _LISTED_SKIPS)
    if cfg.max_videos:
        todo = todo[: cfg.max_videos]
    return fmt, todo, len(records)


def _safe_ids(records: list[dict], summary: JobSummary, source: Storage) -> list[dict]:
    """The records whose video id can name output files; the others rejected by name (a crafted or corrupt index
    entry such as ``.``, ``..``, ``a/b`` or ``''`` would otherwise reach other videos' outputs)."""
    safe = []
    for rec in records:
        try:
            check_name(rec.get("video_id"), "video id")
        except UnsafeNameError as err:
            summary.rejected("video", repr(rec.get("video_id")), f"{err} (from {source.url})")
            continue
        safe.append(rec)
    return safe


def _segment_on_actors(cfg: SegmentConfig, batches: list[list[str]], output: Storage) -> Iterator[dict]:
    """Segment ``batches`` of JSON records on ``runtime.num_actors`` model actors; yields one result row per video.

    Plain Ray actors, each kept two batches ahead, and a blocking ``ray.wait``, not a Ray Data stage: Ray Data's
    driver polls its output queue a hundred times a second, and on a node whose cores all step the model every
    such wake-up stalls the model's OpenMP team (measured: a 100 Hz poller next to a 2-thread model step made it
    12% slower). Ray restarts a killed actor and reruns its unfinished batches on it; a rerun video overwrites the
    same objects, so every video still ends with one set of outputs and one done marker. The actors write through
    ``output``, the fenced output storage (its lease's ``LeaseFence`` travels with it).
    """
    import ray

    rt = cfg.runtime
    actor_class = ray.remote(SegmentActor).options(
        num_cpus=rt.cpus_per_actor, num_gpus=rt.gpus_per_actor, max_restarts=-1, max_task_retries=-1
    )
    config = config_to_dict(cfg)
    actors = [actor_class.remote(config, output) for _ in range(min(rt.num_actors, len(batches)))]
    queue = deque(batches)
    running: dict = {}  # result ref -> the actor computing it

    def submit(actor) -> None:
        running[actor.segment_batch.remote(queue.popleft())] = actor

    try:
        for _ in range(2):  # two per actor: the next batch waits in the actor's queue, not on the driver
            for actor in actors:
                if queue:
                    submit(actor)
        while running:
            [ready], _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(ready)
            yield from ray.get(ready)
            if queue:
                submit(actor)
    finally:
        for actor in actors:
            ray.kill(actor)


@holds_output_lease("segment")  # one run per output (pipeline/lease.py)
def run(cfg: SegmentConfig) -> dict:
    """Run the job; returns the summary dict (also written to ``<output>/summary.json``)."""
    import ray

    cpu0 = time.process_time()
    summary = JobSummary("segment", config=config_to_dict(cfg))
    source = open_storage(cfg.input)
    output = fenced(open_storage(cfg.output))  # every write and delete checks this run's lease
    output.check()
    fmt, todo, found = work_list(cfg, summary, source, output)
    summary.set("work_list_s", round(summary.elapsed_s, 3))
    log.info(
        "%d videos found in %s (format %s); %d to segment, %d already done",
        found,
        source.url,
        fmt,
        len(todo),
        summary.counts["video"]["skipped"],
    )

    if todo:
        init_ray()
        rt = cfg.runtime
        cpus = ray.cluster_resources().get("CPU", 0)
        node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=cpus)
        rt.cpus_per_actor = rt.actor_cpus(
            cpus, node_cpus
        )  # travels to the actors resolved; summary.config keeps the asked value
        summary.set("actor_cpus", rt.cpus_per_actor)
        needed = rt.num_actors * rt.cpus_per_actor + rt.decode_cpus
        if cpus < needed:
            # Actors holding every CPU would leave none for decoding: the job would wait forever.
            log.warning(
                "the cluster has %s CPUs, fewer than %s actors x %s CPUs + one %s-CPU decode task = %s; "
                "unless it scales up, lower runtime.num_actors, cpus_per_actor or decode_cpus",
                cpus,
                rt.num_actors,
                rt.cpus_per_actor,
                rt.decode_cpus,
                needed,
            )
        batch = rt.videos_per_batch or 2 * rt.videos_in_flight
        records = [json.dumps(rec) for rec in todo]
        batches = [records[i : i + batch] for i in range(0, len(records), batch)]
        summary.expect("video", len(todo))
        actor_wall: dict[str, float] = {}  # actor -> its wall time since ready, at its latest result
        for row in _segment_on_actors(cfg, batches, output):
            check_lease()  # a run that may have lost its output counts nothing more
            if row["status"] == "done":
                summary.done("video", str(row["video_id"]), frames=int(row["frames"]))
                summary.add("model_seconds", float(row["model_seconds"]))
            else:
                summary.rejected("video", str(row["video_id"]), str(row["error"]))
            summary.add("model_step_s", float(row["step_seconds"]))
            actor_wall[row["actor"]] = max(actor_wall.get(row["actor"], 0.0), float(row["actor_wall_s"]))
        if actor_wall:
            # Time inside the model step over the actors' wall time (each from ready to its last result).
            busy = summary.figures["model_step_s"] / max(1e-9, sum(actor_wall.values()))
            summary.set("model_busy_fraction", round(busy, 3))
    figures = summary.figures
    frames = figures.get("frames", 0)
    elapsed = max(summary.elapsed_s, 1e-9)
    summary.set("frames_per_second", round(frames / elapsed, 3) if frames else 0)
    if figures.get("model_seconds"):
        summary.set("model_frames_per_second", round(frames / figures["model_seconds"], 3))
    done = summary.counts["video"]["done"]
    if done:
        # What scale costs beyond the model: the driver's own CPU, and the job's wall time not spent inside the
        # model (actors step in parallel, so their model time counts once per actor), per finished video.
        summary.set("driver_cpu_ms_per_video", round(1000 * (time.process_time() - cpu0) / done, 3))
        model_wall = figures.get("model_seconds", 0.0) / max(1, cfg.runtime.num_actors)
        summary.set("overhead_ms_per_video", round(1000 * max(0.0, elapsed - model_wall) / done, 1))
    # Exports and the overlay index page cover every finished video of the output, this run's and earlier ones.
    run_exports(output, summary, cfg.outputs.export, overlay_index=cfg.outputs.overlay, kind="exported video")
    return summary.finish(storage=output, rel=SUMMARY)


JOB = JobSpec(
    name="segment",
    summary="segment every video of a corpus (or of the flow job's shards) with a checkpoint; masks to storage",
    config=SegmentConfig,
    run=run,
    preflight=preflight,
    flags=FLAGS,
    description="""Segment every video of a corpus with HMHI-Net and write the masks back to storage.

Input: video files, frame folders, any layout pipeline.ingest reads, or the flow job's shards. A checkpoint this
project wrote records its model: the input size, memory size, normalisation and training flow are taken from it
(a flag that contradicts it is honoured with a warning naming both values); an official HMHI-Net file records
nothing and gets the official protocol's defaults (hmhi_mit_b1, T=5, 512x512, DIS flow; --preset official: T=3).
Writes below --output: masks/<video>/<frame>.png, rle/<video>.parquet, optional probs/ and overlays/, and
done/<video>.json (last; it says what produced the masks). A rerun skips finished videos. Score the masks with
evaluate --pred <output>/masks.""",
    examples=(
        "{prog} --input runs/demo/corpus --format davis2016 --checkpoint runs/demo/runs/demo/best/model.pt "
        "--output runs/seg --overlay",
        "{prog} --input s3://bucket/videos --output s3://bucket/seg1 --checkpoint s3://bucket/runs/r1/best/model.pt "
        "--num-actors 4 --set runtime.gpus_per_actor=1",
        "{prog} --input data/DAVIS2SEG --format hmhi --checkpoint hmhi_davis16.pth --output runs/official "
        "--preset official --flow-model pictures",
    ),
)
"""The segment job on the command line (``hmhi-uvos segment``, ``jobs/segment.py``)."""
