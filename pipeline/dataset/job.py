"""The precompute_flow job's driver: plan groups of videos, let the workers make the shards, commit index parts.

The driver lists the corpus once, reads the index (``index.parquet`` plus the parts not consolidated yet) to find
the videos already done, cuts the sorted pending videos into groups of ``shards.group_videos`` and hands the groups
to the workers (``pipeline/dataset/stages.py``), which decode, compute flow, encode, pack and upload whole shards.
For each finished group the driver commits one small index part (``index/<group>.parquet``, written after the
group's shards are complete: its existence is the commit), so a commit costs the same at the 10th and the
10,000th group. At the end it consolidates the parts into ``index.parquet`` and the ``<split>.wids.json`` shard
lists, and writes ``manifest.parquet`` and ``summary.json``.

A rerun resumes: videos whose samples are all indexed are skipped; shards of a group that never got its part (a
killed run) are deleted first -- only names this job writes (``OWN_SHARD``), only in its own output -- and the group
is made again under the same names when its members are the same. Every write and delete goes through the output
storage fenced by the run's lease (pipeline/lease.py), the workers' shard uploads included.
Settings that change sample content are fixed at the first run (``precompute_settings.json``), and so is the
validation split (``val_split.parquet``): growing a corpus never moves a finished video between splits.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.cli import JobSpec
from pipeline.config import ConfigError, config_to_dict
from pipeline.dataset.config import PrecomputeFlowConfig
from pipeline.dataset.stages import (
    FLOW_TIME_FIELDS,
    OWN_SHARD,
    FlowStage,
    GroupStage,
    encode_clip_row,
    group_name,
    load_clips,
    pack_group_batch,
)
from pipeline.flow.render import RENDER_VERSION
from pipeline.ingest.formats import VideoRecord
from pipeline.ingest.manifest import assign_val_split, list_corpus, manifest_table
from pipeline.lease import fenced, holds_output_lease
from pipeline.preflight import PreflightError, check_disjoint, check_input, check_output
from pipeline.runtime import init_ray, quiet_frameworks
from pipeline.shards import (
    SAMPLE_VERSION,
    SETTINGS_NAME,
    SHARD_DIR,
    consolidate_index,
    read_index_parts,
    write_index_part,
)
from pipeline.storage import Storage, StorageError, open_storage, url_sha256
from pipeline.summary import JobSummary

log = logging.getLogger(__name__)

__all__ = ["FLAGS", "JOB", "plan_groups", "preflight", "run"]

FLAGS = {
    "--input": "input",
    "--output": "output",
    "--format": "format",
    "--flow-model": "flow.engine",
    "--flow-preset": "flow.preset",
    "--flow-ckpt": "flow.checkpoint",
    "--clip-length": "shards.clip_length",
    "--jpeg-quality": "shards.jpeg_quality",
    "--shard-size-mb": "shards.shard_size_mb",
    "--val-fraction": "val_fraction",
    "--max-side": "flow.max_side",
    "--num-gpus-per-actor": "compute.num_gpus_per_actor",
    "--concurrency": "compute.concurrency",
}

MANIFEST_NAME = "manifest.parquet"
VAL_SPLIT_NAME = "val_split.parquet"


# -- settings guard ------------------------------------------------------------------------------------------------


def _checkpoint_sha256(url: str) -> str:
    """SHA-256 of the flow checkpoint at a local path or storage URL (streamed; names the field when missing)."""
    try:
        return url_sha256(url)
    except (StorageError, OSError) as e:
        raise ConfigError("flow.checkpoint", url, f"cannot be read ({e})") from e


def _settings(cfg: PrecomputeFlowConfig) -> dict[str, Any]:
    """Settings that change sample content: a resumed run must use the same ones."""
    ckpt_sha = _checkpoint_sha256(cfg.flow.checkpoint) if cfg.flow.checkpoint else None
    return {
        "format": cfg.format,
        "davis_resolution": cfg.davis_resolution,
        "val_fraction": cfg.val_fraction,
        "flow_engine": cfg.flow.engine,
        "flow_preset": cfg.flow.preset if cfg.flow.engine == "dis" else None,
        "flow_checkpoint_sha256": ckpt_sha,
        "flow_max_side": None if cfg.flow.uses_pictures else cfg.flow.max_side,
        "clip_length": cfg.shards.clip_length,
        "jpeg_quality": cfg.shards.jpeg_quality,
        "render_version": RENDER_VERSION,
        "sample_version": SAMPLE_VERSION,
    }


def _check_settings(out: Storage, cfg: PrecomputeFlowConfig, write: bool = True) -> None:
    """Refuse an output whose shards were made with other settings; record them at a first run (``write``)."""
    settings = _settings(cfg)
    if out.exists(SETTINGS_NAME):
        previous = out.read_json(SETTINGS_NAME)
        diff = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigError(
                "output",
                out.url,
                f"holds shards made with other settings ({detail}); use a new --output or the same settings",
            )
    elif write:
        out.write_json(SETTINGS_NAME, settings)


def _assign_splits(out: Storage, records: list[VideoRecord], val_fraction: float) -> int:
    """Apply the stored validation split to the videos it knows; carve ``val_fraction`` of the *new* train videos
    only; store the result. Returns how many videos are in val."""
    if val_fraction <= 0:
        return 0
    stored: dict[str, str] = {}
    if out.exists(VAL_SPLIT_NAME):
        t = out.read_parquet(VAL_SPLIT_NAME)
        stored = dict(zip(t.column("video_id").to_pylist(), t.column("split").to_pylist(), strict=True))
    train = [r for r in records if r.split == "train"]
    new = [r for r in train if r.video_id not in stored]
    for r in train:
        if r.video_id in stored:
            r.split = stored[r.video_id]
    if not stored:
        assign_val_split(records, val_fraction)
    elif new:
        assign_val_split(new, val_fraction)
    if new or not stored:
        ids = sorted(stored.keys() | {r.video_id for r in train})
        split_of = dict(stored, **{r.video_id: r.split for r in train})
        out.write_parquet(VAL_SPLIT_NAME, pa.table({"video_id": ids, "split": [split_of[i] for i in ids]}))
    return sum(r.split == "val" for r in records)


def preflight(cfg: PrecomputeFlowConfig) -> None:
    """Before Ray and before any write: the corpus exists and its layout is found, the flow checkpoint exists,
    the output can be written and is not the corpus, and an output made earlier has the same settings."""
    inp = check_input("input", cfg.input)
    if cfg.flow.checkpoint:
        check_input("flow.checkpoint", cfg.flow.checkpoint, folder=False)
    out = check_output("output", cfg.output)
    check_disjoint("output", cfg.output, {"input": cfg.input, "flow.checkpoint": cfg.flow.checkpoint})
    listing = list_corpus(inp, cfg.format, cfg.davis_resolution)
    if not listing.records:
        raise PreflightError(f"input {inp.url}: no videos found (read as {listing.format})")
    if out.exists(SETTINGS_NAME):
        _check_settings(out, cfg, write=False)
    log.info("pre-flight: %s holds %d videos (%s)", inp.url, len(listing.records), listing.format)


# -- planning ------------------------------------------------------------------------------------------------------


def plan_groups(pending: list[dict[str, Any]], group_videos: int, workers: int = 1) -> list[dict[str, Any]]:
    """Cut the pending videos (sorted by video id) into consecutive groups of near-equal size, at most
    ``group_videos`` each and at least ``workers`` of them when there are that many videos; each group row carries
    its deterministic name and its videos (JSON).

    Why at least ``workers``: a group is one worker's work, so a corpus smaller than ``group_videos`` in a single
    group leaves every other worker idle (the flow bench's 6 videos on 2 CPUs ran on one actor: 0.6 of a plain
    process). The groups of a rerun are cut from its own pending videos, so a killed run's unfinished groups may
    be cut differently: their shards are removed and made again (see :func:`_remove_uncommitted_shards`).
    """
    pending = sorted(pending, key=lambda p: p["video_id"])
    n = len(pending)
    count = max(-(-n // group_videos), min(workers, n))
    bounds = [round(i * n / count) for i in range(count + 1)] if n else [0]
    groups = []
    for first, end in zip(bounds, bounds[1:]):
        members = pending[first:end]
        groups.append(
            {
                "group": group_name(p["video_id"] for p in members),
                "videos": json.dumps([{k: p[k] for k in ("record", "skip_keys")} for p in members]),
            }
        )
    return groups


def _remove_uncommitted_shards(out: Storage, committed: set[str]) -> int:
    """Delete shards that no index part lists: made by a group whose run was killed before its commit.

    Only this job's own shards (``OWN_SHARD``: ``shards/<split>-<group>-NNNN.tar``), and only in a folder whose
    ``precompute_settings.json`` marks it as this job's output; any other ``.tar`` there is left alone.
    """
    if not out.exists(SETTINGS_NAME) or not out.isdir(SHARD_DIR):
        return 0
    removed = 0
    for name in out.list(SHARD_DIR, suffix=".tar"):
        rel = f"{SHARD_DIR}/{name}"
        if rel in committed:
            continue
        if not OWN_SHARD.fullmatch(name):
            log.warning(
                "leaving %s alone: not a shard this job writes (not <split>-<group>-NNNN.tar)", out.join(rel)
            )
            continue
        log.warning("removing %s: written by an interrupted run but never committed", out.join(rel))
        out.delete(rel)
        removed += 1
    return removed


def _timed(rows, summary: JobSummary, counter: str):
    """Yield from ``rows``, adding the seconds spent waiting for each row to ``summary``'s ``counter``."""
    it = iter(rows)
    while True:
        t0 = time.perf_counter()
        try:
            row = next(it)
        except StopIteration:
            return
        finally:
            summary.add(counter, time.perf_counter() - t0)
        yield row


def _fused(cfg: PrecomputeFlowConfig) -> bool:
    return cfg.compute.fused if cfg.compute.fused is not None else cfg.compute.num_gpus_per_actor == 0


def _flow_workers(cfg: PrecomputeFlowConfig) -> int:
    """Flow actors the run uses: ``compute.concurrency``, else one per GPU share, else per CPU share (Ray is up)."""
    import ray

    if cfg.compute.concurrency is not None:
        return cfg.compute.concurrency
    res = ray.cluster_resources()
    if cfg.compute.num_gpus_per_actor > 0:
        return max(1, int(res.get("GPU", 0) // cfg.compute.num_gpus_per_actor))
    per_actor = cfg.compute.num_cpus_per_actor if _fused(cfg) else 2
    return max(1, int(float(res.get("CPU", 1)) // per_actor))


def _build_dataset(cfg: PrecomputeFlowConfig, groups: list[dict[str, Any]], input_url: str, output: Storage):
    """The Ray Data pipeline: group rows -> group result rows (fused actors, or decode -> flow -> encode -> pack).

    ``output`` is the fenced output storage: the workers' shard uploads check the run's lease before they commit.
    """
    import ray.data

    quiet_frameworks()  # Ray Data is loaded now: its progress bars go too (they are off only where it is loaded)

    gpus = cfg.compute.num_gpus_per_actor
    fused = _fused(cfg)
    total_cpus = float(ray.cluster_resources().get("CPU", 1))
    actor_cpus, task_cpus = cfg.compute.num_cpus_per_actor, cfg.compute.num_cpus_per_task
    concurrency = _flow_workers(cfg)
    # FlowConfig.create_engine keeps DIS on the CPU whatever the device.
    engine_kwargs = {
        "flow": cfg.flow,
        "device": "cuda" if gpus > 0 else "cpu",
        "threads": max(1, int(cfg.compute.num_cpus_per_actor)),
    }
    load_kwargs = {
        "input_url": input_url,
        "clip_length": cfg.shards.clip_length,
        "max_video_mb": cfg.max_video_mb,
        "flow_pictures": cfg.flow.uses_pictures,
    }
    encode_kwargs = {"jpeg_quality": cfg.shards.jpeg_quality, "flow_level": cfg.shards.flow_compress_level}
    pack_kwargs = {"output": output, "target_bytes": int(cfg.shards.shard_size_mb * 1e6)}
    if fused:
        ds = ray.data.from_items(groups, override_num_blocks=len(groups))
        return ds.map(
            GroupStage,
            fn_constructor_kwargs=dict(
                engine_kwargs, load_kwargs=load_kwargs, encode_kwargs=encode_kwargs, **pack_kwargs
            ),
            # One group at a time per actor: a group is minutes of work, and Ray Data hands a second one (its
            # default is 2 in flight) to the first actor that is up, leaving the others idle (bench: 6 videos
            # in 2 groups ran on 1 of 2 actors).
            compute=ray.data.ActorPoolStrategy(
                size=min(concurrency, len(groups)), max_tasks_in_flight_per_actor=1
            ),
            num_cpus=min(actor_cpus, total_cpus),
            num_gpus=gpus or None,
        )
    if concurrency * actor_cpus + task_cpus > total_cpus:
        # Actors holding every CPU would starve the decode/encode tasks: shrink the reservations to fit.
        scale = total_cpus / (concurrency * actor_cpus + task_cpus)
        actor_cpus, task_cpus = actor_cpus * scale, task_cpus * scale
        log.warning(
            "%d flow actor(s) x %.2g CPU + tasks do not fit in %.3g CPUs: reserving %.2g CPU per actor "
            "and %.2g per task",
            concurrency,
            cfg.compute.num_cpus_per_actor,
            total_cpus,
            actor_cpus,
            task_cpus,
        )
    videos = [dict(v, group=g["group"]) for g in groups for v in json.loads(g["videos"])]
    ds = ray.data.from_items(videos, override_num_blocks=len(videos))
    ds = ds.flat_map(load_clips, fn_kwargs=load_kwargs, num_cpus=task_cpus)
    ds = ds.map(
        FlowStage,
        fn_constructor_kwargs=engine_kwargs,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=actor_cpus,
        num_gpus=gpus or None,
    )
    ds = ds.map(encode_clip_row, fn_kwargs=encode_kwargs, num_cpus=task_cpus)
    ds = ds.select_columns(
        ["group", "video_id", "start", "kind", "info", "key", "names", "blob", "index_row", *FLOW_TIME_FIELDS]
    )
    return ds.groupby("group").map_groups(
        pack_group_batch, fn_kwargs=pack_kwargs, batch_format="numpy", num_cpus=task_cpus
    )


@holds_output_lease("precompute_flow")  # one run per output (pipeline/lease.py)
def run(cfg: PrecomputeFlowConfig) -> dict[str, Any]:
    """Run the job on Ray (attached or local); returns the summary dict (also written to summary.json).

    Plan (list the corpus, read the index, skip the videos already done) -> build the Ray Data pipeline of the
    pending groups -> commit each finished group -> consolidate the index and write the manifest and summary.
    """
    init_ray()
    cpu0 = time.process_time()
    summary = JobSummary("precompute_flow", config=config_to_dict(cfg))
    inp = check_input("input", cfg.input)
    out = fenced(open_storage(cfg.output))  # every commit checks the lease
    out.check()
    _check_settings(out, cfg, write=False)
    plan = _plan(cfg, inp, out, summary)
    _check_settings(
        out, cfg
    )  # recorded once the corpus is listed: a corpus that cannot be read records nothing
    commits, writers = 0, defaultdict(int)  # writer -> index parts (groups) it wrote the shards of
    if plan.groups:
        ds = _build_dataset(cfg, plan.groups, inp.url, out)
        commits, writers = _commit_groups(cfg, ds, out, summary, plan.facts)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Ray Data stats:\n%s", ds.stats())
    return _finish(inp, out, summary, plan, commits, writers, cpu0)


@dataclass
class _Plan:
    """What a run has to do: the corpus's videos, those already done, and the groups of the pending ones."""

    records: list[VideoRecord]
    """The corpus's videos (at most ``max_videos``), with their splits."""
    corpus_format: str
    """The corpus layout the listing found."""
    facts: dict[str, dict[str, Any]]
    """Manifest facts per video: filled for the videos already done, then by the commits."""
    groups: list[dict[str, Any]]
    """The pending videos' groups (:func:`plan_groups`)."""


def _plan(cfg: PrecomputeFlowConfig, inp: Storage, out: Storage, summary: JobSummary) -> _Plan:
    """List the corpus, assign splits, find the videos the index already holds (skipped) and group the rest."""
    listing = list_corpus(inp, cfg.format, cfg.davis_resolution)
    records = listing.records[: cfg.max_videos] if cfg.max_videos else listing.records
    n_val = _assign_splits(out, records, cfg.val_fraction)
    log.info(
        "%s: %d videos (%s)%s", inp.url, len(records), listing.format, f", {n_val} in val" if n_val else ""
    )
    indexed_keys, n_clips_of, previous_facts = _indexed_videos(out)
    facts: dict[str, dict[str, Any]] = {}
    pending = []
    for r in records:
        done_keys = indexed_keys.get(r.video_id, set())
        if done_keys and len(done_keys) == n_clips_of[r.video_id]:
            summary.skipped("video", r.video_id, "already done (all samples indexed)")
            facts[r.video_id] = dict(previous_facts.get(r.video_id, {}), status="done", reason=None)
            continue
        pending.append(
            {
                "video_id": r.video_id,
                "record": json.dumps(r.to_dict()),
                "skip_keys": json.dumps(sorted(done_keys)),
            }
        )
    groups = plan_groups(pending, cfg.shards.group_videos, _flow_workers(cfg))
    summary.set("groups_planned", len(groups))
    summary.expect("video", len(pending))
    return _Plan(records, listing.format, facts, groups)


def _indexed_videos(out: Storage) -> tuple[dict[str, set[str]], dict[str, int], dict[str, dict[str, Any]]]:
    """What the committed index holds: per video its sample keys and its clip count, and the manifest facts of the
    earlier runs. Shards no index part lists (an interrupted run's) are deleted first."""
    index, part_videos, _ = read_index_parts(out)
    _remove_uncommitted_shards(out, set(index.column("shard").to_pylist()))
    indexed_keys: dict[str, set[str]] = defaultdict(set)
    n_clips_of: dict[str, int] = {}
    for vid, key, nc in zip(
        index.column("video_id").to_pylist(),
        index.column("key").to_pylist(),
        index.column("n_clips").to_pylist(),
        strict=True,
    ):
        indexed_keys[vid].add(key)
        n_clips_of[vid] = nc
    previous_facts: dict[str, dict[str, Any]] = {}
    if out.exists(MANIFEST_NAME):
        for r in out.read_parquet(MANIFEST_NAME).to_pylist():
            previous_facts[r["video_id"]] = {
                k: r[k]
                for k in ("frame_count", "height", "width", "fps", "annotated_frames", "status", "reason")
            }
    previous_facts.update(part_videos)
    return indexed_keys, n_clips_of, previous_facts


def _commit_groups(
    cfg: PrecomputeFlowConfig, ds, out: Storage, summary: JobSummary, facts: dict[str, dict[str, Any]]
) -> tuple[int, dict[str, int]]:
    """Commit each group the workers finish (its index part), record its videos; -> (commits, parts per writer)."""
    commits, writers = 0, defaultdict(int)
    flow_actors: dict[str, float] = {}  # flow actor -> its wall time since ready, at its latest clip
    for result in _timed(ds.iter_rows(), summary, "driver_wait_s"):
        t0 = time.perf_counter()
        rows, videos = json.loads(result["rows"]), json.loads(result["videos"])
        if rows:  # the group's shards are complete: commit them (the part is the marker)
            write_index_part(
                out,
                str(result["group"]),
                rows,
                {
                    v: {k: f.get(k) for k in ("frame_count", "height", "width", "fps", "annotated_frames")}
                    for v, f in videos.items()
                    if f["status"] == "done"
                },
                str(result["writer"]),
            )
            commits += 1
        summary.add("driver_commit_s", time.perf_counter() - t0)
        writers[str(result["writer"])] += 1
        for actor, wall_s in json.loads(result["flow_actors"]).items():
            flow_actors[actor] = max(flow_actors.get(actor, 0.0), wall_s)
        _record_group(result, videos, summary, facts)
        every = cfg.shards.consolidate_every
        if rows and every and commits % every == 0:
            t1 = time.perf_counter()
            consolidate_index(out)
            summary.add("driver_consolidate_s", time.perf_counter() - t1)
    if flow_actors:
        # Time inside the flow engine over the flow actors' wall time (each from ready to its last clip).
        busy = summary.figures.get("flow_s", 0.0) / max(1e-9, sum(flow_actors.values()))
        summary.set("flow_busy_fraction", round(busy, 3))
    return commits, writers


def _record_group(
    result: dict[str, Any],
    videos: dict[str, dict[str, Any]],
    summary: JobSummary,
    facts: dict[str, dict[str, Any]],
) -> None:
    """A finished group's videos (done or rejected, with their warnings) and figures into the summary and facts."""
    for vid, f in videos.items():
        if f["status"] == "rejected":
            summary.rejected("video", f["name"], f["reason"])
            facts[vid] = {"status": "rejected", "reason": f["reason"]}
            continue
        for w in f.pop("warnings", []):
            summary.add("warnings")
            log.warning(w)
        summary.done("video", vid)
        facts[vid] = f
    for figure in ("samples", "frames", "masks", "shards", "bytes"):
        summary.add(
            {"shards": "shards_written", "bytes": "bytes_written"}.get(figure, figure), int(result[figure])
        )
    summary.add("flows", int(result["frames"]))
    summary.add("worker_pack_s", float(result["pack_s"]))
    summary.add("flow_s", float(result["flow_s"]))


def _finish(
    inp: Storage,
    out: Storage,
    summary: JobSummary,
    plan: _Plan,
    commits: int,
    writers: dict[str, int],
    cpu0: float,
) -> dict[str, Any]:
    """Consolidate the index, write the manifest, and finish the summary (written to ``summary.json``); ``cpu0``
    is the driver's CPU time when the run started."""
    for figure in (
        "samples",
        "frames",
        "flows",
        "masks",
        "shards_written",
        "bytes_written",
        "driver_commit_s",
    ):
        summary.add(figure, 0)
    t0 = time.perf_counter()
    index = consolidate_index(out)
    summary.add("driver_consolidate_s", time.perf_counter() - t0)
    summary.set("index_parts_committed", commits)
    summary.set("writer_processes", len(writers))
    by_node: dict[str, int] = defaultdict(int)
    for writer, groups_written in writers.items():
        by_node[writer.rsplit(":", 2)[1] if writer.count(":") >= 2 else "?"] += groups_written
    summary.set("groups_by_writer_node", dict(sorted(by_node.items())))
    summary.set("shards_total", len(set(index.column("shard").to_pylist())))
    out.write_parquet(MANIFEST_NAME, manifest_table(plan.records, plan.facts))
    frames = summary.figures.get("frames", 0)
    driver_cpu = time.process_time() - cpu0
    summary.set("driver_cpu_s", round(driver_cpu, 3))
    summary.set("driver_cpu_ms_per_video", round(1000 * driver_cpu / max(1, len(plan.records)), 3))
    summary.set("format", plan.corpus_format)
    summary.set("input", inp.url)
    summary.set("output", out.url)
    summary.set("index_rows", index.num_rows)
    summary.set("frames_per_s", round(frames / summary.elapsed_s, 3) if frames else 0)
    return summary.finish(storage=out, rel="summary.json")


JOB = JobSpec(
    name="precompute_flow",
    summary="corpus -> optical flow and WebDataset training shards (local or S3)",
    config=PrecomputeFlowConfig,
    run=run,
    preflight=preflight,
    flags=FLAGS,
    description="""Precompute optical flow for a video corpus and shard it into WebDataset tars (local or S3).

Reads a corpus in any layout pipeline.ingest knows (DAVIS, YouTube-VOS, FBMS, YouTube-Objects, the official
HMHI-Net archives, folders of frames or video files; --format auto finds it) and writes below --output:
shards/<split>-*.tar (clips of frames, flow, masks), index.parquet and index/ parts, manifest.parquet and
summary.json. A rerun resumes: committed videos are skipped; the settings that change samples are fixed by the
first run (precompute_settings.json).""",
    examples=(
        "{prog} --input runs/demo/corpus --output runs/shards --format davis2016 --val-fraction 0.1",
        "{prog} --input s3://bucket/DAVIS --output s3://bucket/shards/davis16 --flow-preset fast",
        "{prog} --input data/FBMS --output runs/fbms-shards --flow-model raft_small --flow-ckpt raft_small.ckpt "
        "--num-gpus-per-actor 1",
    ),
)
"""The flow job on the command line (``hmhi-uvos precompute_flow``, ``jobs/precompute_flow.py``)."""
