"""Segment every video of a corpus with HMHI-Net and write the masks back to storage.

    python jobs/segment.py --input s3://bucket/videos --output s3://bucket/run1 --checkpoint s3://bucket/hmhi.pth
    ray job submit --working-dir . -- python jobs/segment.py --input ... --output ... --checkpoint ... \\
        --num-actors 4 --set runtime.gpus_per_actor=1 --set runtime.videos_in_flight=16

Input: video files, DAVIS-style frame folders or any layout pipeline.ingest reads (``--format``, default
auto), or the data pipeline's shards (a root holding ``index.parquet``; frames and flow are read from them).
Otherwise flow is computed on the fly (``--flow-model``, default dis). Ray Data hands videos to an actor pool;
each actor steps ``videos_in_flight`` videos together through ``net.step`` while Ray generator tasks decode
and compute flow ahead of it. Outputs per video (original resolution): ``masks/<video>/<frame>.png``,
``rle/<video>.parquet``, optional ``probs/`` and ``overlays/``, and ``done/<video>.json`` written last.
A rerun skips finished videos; a killed run redoes unfinished ones; a corrupt video is reported and the
others finish. Score the masks with ``jobs/evaluate.py --pred <output>/masks --gt ...``.
"""

from __future__ import annotations

import json
import logging
import posixpath

from pipeline.config import config_to_dict, parse_job_args
from pipeline.ingest.manifest import list_corpus
from pipeline.jobs import JobSummary, init_ray, run_job_main, setup_logging
from pipeline.lease import holds_output_lease
from pipeline.segment.config import SegmentConfig
from pipeline.segment.outputs import done_marker
from pipeline.segment.runner import SegmentActor
from pipeline.segment.source import shard_records
from pipeline.shards import INDEX_NAME
from pipeline.storage import open_storage

log = logging.getLogger("jobs.segment")


def _finished(output) -> set[str]:
    return {posixpath.splitext(name)[0] for name in output.list("done", suffix=".json")}


@holds_output_lease("segment")  # one run per output (pipeline/lease.py)
def run(cfg: SegmentConfig) -> dict:
    """Run the job; returns the summary dict (also written to ``<output>/summary.json``)."""
    import ray

    summary = JobSummary("segment")
    source = open_storage(cfg.input)
    output = open_storage(cfg.output)
    output.check()
    if cfg.format == "shards" or (cfg.format == "auto" and source.exists(INDEX_NAME)):
        fmt, records = "shards", shard_records(source)  # frames and flow from the data pipeline's shards
    else:
        listing = list_corpus(source, cfg.format, cfg.davis_resolution)
        fmt, records = listing.format, [rec.to_dict() for rec in listing.records]
    if cfg.videos:
        wanted = set(cfg.videos)
        records = [r for r in records if r["video_id"] in wanted or r["name"] in wanted]
        for name in sorted(wanted - {r["video_id"] for r in records} - {r["name"] for r in records}):
            summary.rejected("video", name, f"not found in {source.url} (format {fmt})")
    finished = set() if cfg.outputs.overwrite else _finished(output)
    todo = []
    for rec in records:
        if rec["video_id"] in finished:
            summary.skipped(
                "video", rec["video_id"], f"already done ({output.join(done_marker(rec['video_id']))})"
            )
        else:
            todo.append(rec)
    if cfg.max_videos:
        todo = todo[: cfg.max_videos]
    log.info("%d videos found in %s (format %s); %d to segment, %d already done",
             len(records), source.url, fmt, len(todo), len(records) - len(todo))  # fmt: skip

    if todo:
        init_ray()
        rt = cfg.runtime
        cpus = ray.cluster_resources().get("CPU", 0)
        needed = rt.num_actors * rt.cpus_per_actor + rt.decode_cpus
        if cpus < needed:
            # Actors holding every CPU would leave none for decoding: the job would wait forever.
            log.warning("the cluster has %s CPUs, fewer than %s actors x %s CPUs + one %s-CPU decode task = %s; "
                        "unless it scales up, lower runtime.num_actors, cpus_per_actor or decode_cpus",
                        cpus, rt.num_actors, rt.cpus_per_actor, rt.decode_cpus, needed)  # fmt: skip
        batch = rt.videos_per_batch or 2 * rt.videos_in_flight
        items = [{"video_id": rec["video_id"], "record": json.dumps(rec)} for rec in todo]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * rt.num_actors)))
        results = dataset.map_batches(
            SegmentActor,
            fn_constructor_kwargs={"config": config_to_dict(cfg)},
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=rt.num_actors),
            num_cpus=rt.cpus_per_actor,
            num_gpus=rt.gpus_per_actor,
        )
        for row in results.iter_rows():
            if row["status"] == "done":
                summary.done("video", str(row["video_id"]), frames=int(row["frames"]))
                summary.add("model_seconds", float(row["model_seconds"]))
            else:
                summary.rejected("video", str(row["video_id"]), str(row["error"]))
    figures = summary.figures
    frames = figures.get("frames", 0)
    elapsed = max(summary.elapsed_s, 1e-9)
    summary.set("frames_per_second", round(frames / elapsed, 3) if frames else 0)
    if figures.get("model_seconds"):
        summary.set("model_frames_per_second", round(frames / figures["model_seconds"], 3))
    summary.config = config_to_dict(cfg)
    return summary.finish(storage=output, rel="summary.json")


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    cfg = parse_job_args(
        SegmentConfig,
        argv,
        description=__doc__,
        flags={
            "--input": "input",
            "--output": "output",
            "--checkpoint": "model.checkpoint",
            "--model": "model.name",
            "--format": "format",
            "--flow-model": "flow.engine",
            "--input-size": "model.input_size",
            "--threshold": "outputs.threshold",
            "--binarize": "outputs.binarize",
            "--save-probs": ("outputs.save_probs", True),
            "--overlay": ("outputs.overlay", True),
            "--overwrite": ("outputs.overwrite", True),
            "--num-actors": "runtime.num_actors",
            "--videos-in-flight": "runtime.videos_in_flight",
        },
    )
    return run(cfg)


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))
