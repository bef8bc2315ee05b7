"""Scale benchmark of the dataset build (issue 13): driver cost per video, commit cost, segment's work list.

One JSON line per section on stdout (the machine and its load are in every line):

1. ``commit``: the cost of committing one group of shards (one index part, ``pipeline.shards.write_index_part``)
   when 100, 1,000 and 10,000 parts already exist, on local disk and on the moto S3 server; beside it, what the
   previous design paid per commit (rewriting the whole index, one row per sample) at the same size.
2. ``flow_job``: the flow job (``pipeline.dataset.job.run``) on many tiny videos (8 frames of 64x64, DIS
   ultrafast, frame folders on local disk): driver CPU-seconds per video (``time.process_time`` of the driver
   process, Ray Data's executor threads included), wall time, and the job's own figures.
3. ``segment_worklist``: what segment's driver does before any work, for N videos: one listing of N done markers
   and the work list from the shard index (``pipeline.segment.source.shard_records``).
4. ``segment``: the segment job (``jobs/segment.py``, the real job) on the flow job's shards of N tiny videos with the
   smallest model (a random-init ``hmhi_mit_b0`` with narrow heads, input 64, fp32): a first run is killed (SIGKILL
   of its process group) once half the done markers exist; the rerun, in this process, resumes: its work-list time,
   driver CPU ms per video, per-video overhead beyond the model (the run's wall time minus the time the actors spent
   inside the model, per video), and that every video ends exactly once (the first run's markers untouched, the
   rerun doing only the others); then a rerun with nothing left to do.
5. ``rehearsal``: the same jobs on the two-node loopback rehearsal (``infra/local/rehearse.py``: a Ray head and a
   worker node, moto S3, every stage a ``ray job submit``) at a small scale: synthetic corpus of N tiny videos, the
   flow job (one group per few videos), a one-step training run for a checkpoint, segment; the flow and segment
   drivers' CPU ms per video, segment's per-video overhead, and the groups of shards each node wrote.

    python bench/scale.py                       # 2,000 videos, commits up to 10,000 parts (~5 min on 2 cores)
    python bench/scale.py --videos 10000 --segment-videos 10000    # the issue's size
    python bench/scale.py --sections commit     # one section

Figures on a shared machine are noisy; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from common import machine, moto_s3

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _rows(group: str, samples: int = 4) -> list[dict]:
    shard = f"shards/train-{group}-0000.tar"
    return [
        {
            "key": f"{group}_{i}__000000",
            "shard": shard,
            "split": "train",
            "video_id": f"{group}_{i}",
            "clip_index": 0,
            "n_clips": 1,
            "frame_indices": list(range(8)),
            "n_frames": 8,
            "n_masks": 0,
            "height": 64,
            "width": 64,
            "offset": 100_000 * i,
            "bytes": 100_000,
            "sha256": "0" * 64,
            "shard_bytes": 400_000,
            "shard_sha256": "1" * 64,
        }
        for i in range(samples)
    ]


def bench_commit(root: str, sizes: list[int], probes: int) -> dict:
    """Median seconds of one commit (an index part) with N parts present, and the old whole-index rewrite."""
    import pyarrow as pa

    from pipeline.shards import INDEX_SCHEMA, list_index_parts, read_index, write_index_part
    from pipeline.storage import open_storage

    st = open_storage(root)
    out: dict = {"storage": "s3" if root.startswith("s3://") else "local", "samples_per_part": 4}
    present = 0
    for n in sizes:
        with ThreadPoolExecutor(8) as pool:  # populate (not measured)
            list(pool.map(lambda g: write_index_part(st, f"p{g:06d}", _rows(f"p{g:06d}")), range(present, n)))
        present = n
        times, cpu, user, system = [], [], [], []
        for k in range(probes):
            t0, c0 = time.perf_counter(), time.process_time()
            r0 = resource.getrusage(
                resource.RUSAGE_THREAD
            )  # this thread alone: user (Python) vs kernel (files)
            write_index_part(st, f"probe{n}_{k}", _rows(f"probe{n}_{k}"))
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            user.append(r1.ru_utime - r0.ru_utime)
            system.append(r1.ru_stime - r0.ru_stime)
            st.delete(f"index/probe{n}_{k}.parquet")
        whole = pa.Table.from_pylist(_rows("x", 4) * n, schema=INDEX_SCHEMA)
        t0 = time.perf_counter()
        st.write_parquet(
            "old_index.parquet", whole
        )  # what every commit cost before: the whole index rewritten
        old = time.perf_counter() - t0
        t0 = time.perf_counter()
        listed = len(list_index_parts(st))
        list_s = time.perf_counter() - t0
        read_s = None
        if n <= 1000 or st.is_local:
            t0 = time.perf_counter()
            read_index(root)
            read_s = round(time.perf_counter() - t0, 3)
        out[str(n)] = {
            "commit_ms_median": round(1000 * statistics.median(times), 3),
            "commit_cpu_ms_median": round(1000 * statistics.median(cpu), 3),
            "commit_thread_user_cpu_ms_mean": round(1000 * statistics.mean(user), 3),
            "commit_thread_system_cpu_ms_mean": round(1000 * statistics.mean(system), 3),
            "commit_ms_p90": round(1000 * sorted(times)[int(0.9 * (len(times) - 1))], 3),
            "old_whole_index_rewrite_ms": round(1000 * old, 3),
            "list_parts_s": round(list_s, 3),
            "parts_listed": listed,
            "read_index_unconsolidated_s": read_s,
        }
    # The first size once more, in a fresh folder, after the others: a difference between the first and the last
    # size that this probe shares is drift of the machine (warm-up, load), not the number of parts present.
    fresh = open_storage(f"{root}-again")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda g: write_index_part(fresh, f"p{g:06d}", _rows(f"p{g:06d}")), range(sizes[0])))
    again, again_cpu = [], []
    for k in range(probes):
        t0, c0 = time.perf_counter(), time.process_time()
        write_index_part(fresh, f"probe_{k}", _rows(f"probe_{k}"))
        again.append(time.perf_counter() - t0)
        again_cpu.append(time.process_time() - c0)
    out[f"{sizes[0]}_again_last"] = {
        "commit_ms_median": round(1000 * statistics.median(again), 3),
        "commit_cpu_ms_median": round(1000 * statistics.median(again_cpu), 3),
    }
    for figure in ("commit_ms_median", "commit_cpu_ms_median"):
        meds = [out[str(n)][figure] for n in sizes]
        out[f"{figure}_ratio_last_to_first"] = round(meds[-1] / meds[0], 3)
        out[f"{figure}_flat_within_25pct"] = abs(meds[-1] / meds[0] - 1) <= 0.25
        out[f"{figure}_ratio_last_to_first_again"] = round(
            meds[-1] / out[f"{sizes[0]}_again_last"][figure], 3
        )
    return out


class ThreadCpu:
    """Where a process's CPU time goes, by thread: samples ``/proc/self/task/*/stat`` every ``interval_s`` (Linux)
    and names each thread by Python's ``threading`` name, else the OS name (Ray's C++ threads name themselves).

    A thread's last sample is its CPU time; threads that end between samples lose at most ``interval_s`` of it.
    """

    def __init__(self, interval_s: float = 0.5):
        import threading

        self.interval_s = interval_s
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-thread-cpu-sampler", daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        import threading

        py_names = {t.native_id: t.name for t in threading.enumerate()}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/self/task/{tid}/comm") as f:
                    comm = f.read().strip()
            except OSError:  # the thread ended
                continue
            t = int(tid)
            self.cpu[t] = (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
            self.names.setdefault(t, py_names.get(t, comm))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> ThreadCpu:
        self.sample()
        self.start = dict(self.cpu)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def by_name(self) -> dict[str, float]:
        """CPU seconds spent during the block, per thread name (digits folded: ``ThreadPoolExecutor-3_1`` and
        ``-4_0`` are one entry), largest first; the sampler's own thread is left out."""
        import re

        out: dict[str, float] = {}
        for t, cpu in self.cpu.items():
            name = re.sub(r"\d+", "N", self.names[t])
            if name != "bench-thread-cpu-sampler":
                out[name] = out.get(name, 0.0) + cpu - self.start.get(t, 0.0)
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def _write_tiny_corpus(root: str, videos: int, frames: int, size: int) -> None:
    """``videos`` folders of ``frames`` JPEGs (a shifted noise texture: DIS has something to track)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (size * 2, size * 2, 3), np.uint8), (5, 5), 0)
    encoded = [
        cv2.imencode(".jpg", np.ascontiguousarray(base[t : t + size, t : t + size]))[1].tobytes()
        for t in range(frames)
    ]
    for v in range(videos):
        d = os.path.join(root, f"v{v:06d}")
        os.makedirs(d, exist_ok=True)
        for t, data in enumerate(encoded):
            with open(os.path.join(d, f"{t:05d}.jpg"), "wb") as f:
                f.write(data)


def bench_flow_job(tmp: str, videos: int, group_videos: int, cpus: int) -> dict:
    import ray

    from pipeline.config import load_config
    from pipeline.dataset.config import PrecomputeFlowConfig
    from pipeline.dataset.job import run

    corpus, out = os.path.join(tmp, "corpus"), os.path.join(tmp, "shards")
    t0 = time.perf_counter()
    _write_tiny_corpus(corpus, videos, 8, 64)
    gen_s = time.perf_counter() - t0
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cfg = load_config(
            PrecomputeFlowConfig,
            None,
            [
                f"input={corpus}",
                f"output={out}",
                "format=frames",
                "flow.preset=ultrafast",
                "shards.clip_length=8",
                f"shards.group_videos={group_videos}",
            ],
        )
        cpu0, t0 = time.process_time(), time.perf_counter()
        with (
            contextlib.redirect_stdout(sys.stderr),
            ThreadCpu() as threads,
        ):  # stdout carries only the JSON lines
            summary = run(cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        cpu1, t1 = time.process_time(), time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            rerun = run(cfg)
        rerun_wall, rerun_cpu = time.perf_counter() - t1, time.process_time() - cpu1
    finally:
        ray.shutdown()
    f = summary["figures"]
    return {
        "videos": videos,
        "frames_per_video": 8,
        "size": "64x64",
        "group_videos": group_videos,
        "ray_cpus": cpus,
        "corpus_write_s": round(gen_s, 2),
        "wall_s": round(wall, 2),
        "videos_per_s": round(videos / wall, 2),
        "driver_cpu_s": round(cpu, 3),
        "driver_cpu_ms_per_video": round(1000 * cpu / videos, 3),
        "driver_cpu_s_per_wall_s": round(cpu / wall, 4),
        "driver_cpu_s_by_thread": threads.by_name(),
        "driver_cpu_ms_per_video_in_run": f.get("driver_cpu_ms_per_video"),
        "driver_commit_s": round(float(f.get("driver_commit_s", 0)), 3),
        "index_parts_committed": f.get("index_parts_committed"),
        "shards": f.get("shards_total"),
        "writer_processes": f.get("writer_processes"),
        "consolidate_s": f.get("driver_consolidate_s"),
        "done": summary["counts"]["video"]["done"],
        "rerun_wall_s": round(rerun_wall, 2),
        "rerun_driver_cpu_ms_per_video": round(1000 * rerun_cpu / videos, 3),
        "rerun_skipped": rerun["counts"]["video"]["skipped"],
        "target_driver_cpu_ms_per_video": 2.0,
    }


def bench_segment_worklist(root: str, videos: int) -> dict:
    """One listing of N done markers plus the shard work list of N videos (an index of N one-sample videos)."""
    from pipeline.shards import consolidate_index, write_index_part
    from pipeline.storage import open_storage

    st = open_storage(root)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda v: st.write_bytes(f"done/v{v:06d}.json", b"{}"), range(videos)))
        list(
            pool.map(lambda g: write_index_part(st, f"g{g:06d}", _rows(f"g{g:06d}", 16)), range(videos // 16))
        )
    consolidate_index(st)
    t0 = time.perf_counter()
    done = {os.path.splitext(n)[0] for n in st.list("done", suffix=".json")}
    list_s = time.perf_counter() - t0
    out = {
        "storage": "s3" if root.startswith("s3://") else "local",
        "videos": videos,
        "done_markers": len(done),
        "list_done_markers_s": round(list_s, 3),
    }
    try:
        from pipeline.segment.source import shard_records
    except ImportError as e:  # the segment helper may move it
        out["shard_records"] = f"unavailable: {e}"
        return out
    t0 = time.perf_counter()
    records = shard_records(st)
    out["shard_records_s"] = round(time.perf_counter() - t0, 3)
    out["worklist_videos"] = len(records)
    out["worklist_total_s"] = round(out["shard_records_s"] + list_s, 3)
    return out


def _tiny_checkpoint(path: str) -> str:
    """The smallest model: a seeded random-init ``hmhi_mit_b0`` with narrow heads (as the tests' ``tiny_checkpoint``)."""
    import torch

    from model import create_model, save_checkpoint

    torch.manual_seed(0)
    net = create_model(
        "hmhi_mit_b0", decoder_width=16, readout_ffn_dim=32, semantic_mask_hidden=16, memory_size=3
    )
    save_checkpoint(net, path)
    return path


def _segment_args(shards: str, out: str, checkpoint: str) -> list[str]:
    return [
        "--input",
        shards,
        "--output",
        out,
        "--checkpoint",
        checkpoint,
        "--input-size",
        "64",
        "--precision",
        "fp32",
        "--set",
        "runtime.chunk_frames=8",
    ]


def _marker_mtimes(out: str) -> dict[str, int]:
    done = os.path.join(out, "done")
    return (
        {n: os.stat(os.path.join(done, n)).st_mtime_ns for n in os.listdir(done)}
        if os.path.isdir(done)
        else {}
    )


def bench_segment(tmp: str, videos: int, group_videos: int, cpus: int, kill_fraction: float = 0.5) -> dict:
    """The segment job on the flow job's shards of ``videos`` tiny videos: kill at ``kill_fraction``, resume, rerun."""
    import signal
    import subprocess

    import ray

    from jobs.segment import main as segment_main
    from pipeline.config import load_config
    from pipeline.dataset.config import PrecomputeFlowConfig
    from pipeline.dataset.job import run as flow_run

    corpus, shards, out = (os.path.join(tmp, name) for name in ("corpus", "shards", "out"))
    checkpoint = _tiny_checkpoint(os.path.join(tmp, "tiny.pth"))
    _write_tiny_corpus(corpus, videos, 8, 64)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        t0 = time.perf_counter()
        flow_cfg = load_config(
            PrecomputeFlowConfig,
            None,
            [
                f"input={corpus}",
                f"output={shards}",
                "format=frames",
                "flow.preset=ultrafast",
                "shards.clip_length=8",
                f"shards.group_videos={group_videos}",
                "val_fraction=0",
            ],
        )
        with contextlib.redirect_stdout(sys.stderr):
            flow_run(flow_cfg)
        shards_s = time.perf_counter() - t0
        args = _segment_args(shards, out, checkpoint)

        # 1. The first run, a separate driver on this Ray cluster, SIGKILLed once half the done markers exist.
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PYTHONPATH=repo)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, os.path.join(repo, "jobs", "segment.py"), *args],
            cwd=repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while proc.poll() is None and len(_marker_mtimes(out)) < kill_fraction * videos:
                time.sleep(0.2)
            killed_at = len(_marker_mtimes(out))
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the first segment run ended (status {proc.returncode}) before it was killed"
                )
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        first_wall = time.perf_counter() - t0
        first = _marker_mtimes(out)  # markers are written last: each is a finished video

        # 2. The rerun resumes in this process: only the videos without a marker.
        cpu0, t0 = time.process_time(), time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr), ThreadCpu() as threads:
            resumed = segment_main(args)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        after = _marker_mtimes(out)

        # 3. A rerun with every video done: the work list (one listing of N markers) and nothing else.
        cpu1, t1 = time.process_time(), time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            idle = segment_main(args)
        idle_wall, idle_cpu = time.perf_counter() - t1, time.process_time() - cpu1
    finally:
        ray.shutdown()
    counts, f = resumed["counts"]["video"], resumed["figures"]
    runtime = resumed["config"]["runtime"]
    actors = runtime["num_actors"]
    model_s = float(f.get("model_seconds", 0.0))
    overhead = (wall - model_s / actors) / max(1, counts["done"])
    untouched = all(after.get(n) == m for n, m in first.items())
    return {
        "videos": videos,
        "frames_per_video": 8,
        "size": "64x64",
        "input_size": 64,
        "model": "hmhi_mit_b0 tiny",
        "precision": "fp32",
        "ray_cpus": cpus,
        "num_actors": actors,
        "videos_in_flight": runtime["videos_in_flight"],
        "shards_build_s": round(shards_s, 1),
        "first_run_killed_after_s": round(first_wall, 1),
        "markers_when_killed": killed_at,
        "markers_after_kill": len(first),
        "resume_work_list_s": f.get("work_list_s"),
        "resume_done": counts["done"],
        "resume_skipped": counts["skipped"],
        "resume_rejected": counts["rejected"],
        "resume_did_only_the_rest": counts["done"] == videos - len(first) and counts["skipped"] == len(first),
        "first_run_markers_untouched": untouched,
        "every_video_exactly_once": untouched
        and len(after) == videos
        and counts["done"] + len(first) == videos,
        "resume_wall_s": round(wall, 2),
        "resume_model_s": round(model_s, 2),
        "resume_frames": f.get("frames"),
        "per_video_overhead_ms": round(1000 * overhead, 1),
        "model_ms_per_video": round(1000 * model_s / max(1, counts["done"]), 1),
        "driver_cpu_s": round(cpu, 3),
        "driver_cpu_ms_per_video": round(1000 * cpu / max(1, counts["done"]), 3),
        "driver_cpu_s_per_wall_s": round(cpu / wall, 4),
        "driver_cpu_s_by_thread": threads.by_name(),
        "job_driver_cpu_ms_per_video": f.get("driver_cpu_ms_per_video"),
        "job_overhead_ms_per_video": f.get("overhead_ms_per_video"),
        "rerun_nothing_to_do_s": round(idle_wall, 2),
        "rerun_work_list_s": idle["figures"].get("work_list_s"),
        "rerun_driver_cpu_ms_per_video": round(1000 * idle_cpu / videos, 3),
        "rerun_skipped": idle["counts"]["video"]["skipped"],
        "target_per_video_overhead_ms": 100,
        "target_driver_cpu_ms_per_video": 2.0,
    }


def bench_rehearsal(tmp: str, videos: int, group_videos: int) -> dict:
    """The flow and segment jobs on the two-node loopback rehearsal cluster; their figures from its report."""
    from infra.local.rehearse import Rehearsal, RehearsalConfig

    cfg = RehearsalConfig(
        workdir=tmp,
        videos=videos,
        frames=8,
        size="64x64",
        group_videos=group_videos,
        stages=["check", "synthetic", "flow", "train", "segment"],
        train_steps=1,
        job_timeout_s=1800.0,
    )
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        ok = Rehearsal(cfg).run()
    report = json.loads(open(os.path.join(tmp, "rehearsal.json")).read())
    if not ok:
        raise RuntimeError(f"the rehearsal failed: {report.get('error')}")
    flow, segment = report["job_figures"]["flow"], report["job_figures"]["segment"]
    stage_s = {s["name"]: s["seconds"] for s in report["stages"]}
    return {
        "videos": videos,
        "frames_per_video": 8,
        "size": "64x64",
        "group_videos": group_videos,
        "nodes": [{"head": n["is_head"], "cpus": n["cpus"]} for n in report["nodes"]],
        "total_s": round(time.perf_counter() - t0, 1),
        "stage_s": stage_s,
        "flow_driver_cpu_ms_per_video": flow.get("driver_cpu_ms_per_video"),
        "flow_groups_by_node": report["flow_groups_by_node"],
        "flow_writer_processes": flow.get("writer_processes"),
        "flow_index_parts": flow.get("index_parts_committed"),
        "flow_driver_commit_s": flow.get("driver_commit_s"),
        "segment_driver_cpu_ms_per_video": segment.get("driver_cpu_ms_per_video"),
        "segment_overhead_ms_per_video": segment.get("overhead_ms_per_video"),
        "segment_model_ms_per_video": round(1000 * segment.get("model_seconds", 0) / videos, 1),
        "segment_work_list_s": segment.get("work_list_s"),
        "segment_frames": segment.get("frames"),
        "segment_input": "frame folders on S3, DIS flow computed by the decode tasks, input 96",
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=2000, help="tiny videos in the flow-job section")
    p.add_argument("--group-videos", type=int, default=16, help="shards.group_videos of the flow job")
    p.add_argument("--cpus", type=int, default=2, help="Ray CPUs of the flow job")
    p.add_argument("--commit-sizes", default="100,1000,10000")
    p.add_argument("--probes", type=int, default=100, help="commits timed per size")
    p.add_argument(
        "--worklist-videos", type=int, default=10000, help="videos in the segment_worklist section"
    )
    p.add_argument("--segment-videos", type=int, default=2000, help="tiny videos in the segment section")
    p.add_argument("--rehearsal-videos", type=int, default=200, help="tiny videos in the rehearsal section")
    p.add_argument(
        "--sections",
        default="commit,flow_job,segment_worklist,segment",
        help="comma-separated, from commit, flow_job, segment_worklist, segment, rehearsal",
    )
    p.add_argument("--storages", default="local,s3", help="for the commit and segment sections")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    sections = args.sections.split(",")
    sizes = [int(n) for n in args.commit_sizes.split(",")]
    desc = machine()
    tmp = tempfile.mkdtemp(prefix="scale-bench-")
    try:
        with contextlib.ExitStack() as stack:
            roots = {}
            for name in args.storages.split(","):
                roots[name] = (
                    stack.enter_context(moto_s3("scale")) if name == "s3" else os.path.join(tmp, "local")
                )
            if "commit" in sections:
                for root in roots.values():
                    res = bench_commit(f"{root}/commit", sizes, args.probes)
                    print(
                        json.dumps({"bench": "scale", "section": "commit", **res, "machine": desc}),
                        flush=True,
                    )
            if "segment_worklist" in sections:
                for root in roots.values():
                    res = bench_segment_worklist(f"{root}/segment", args.worklist_videos)
                    print(
                        json.dumps({"bench": "scale", "section": "segment_worklist", **res, "machine": desc}),
                        flush=True,
                    )
        if "flow_job" in sections:
            res = bench_flow_job(os.path.join(tmp, "flow"), args.videos, args.group_videos, args.cpus)
            print(json.dumps({"bench": "scale", "section": "flow_job", **res, "machine": desc}), flush=True)
        if "segment" in sections:
            res = bench_segment(
                os.path.join(tmp, "segment"), args.segment_videos, args.group_videos, args.cpus
            )
            print(
                json.dumps({"bench": "scale", "section": "segment", **res, "machine": machine()}), flush=True
            )
        if "rehearsal" in sections:
            res = bench_rehearsal(
                os.path.join(tmp, "rehearsal"), args.rehearsal_videos, max(1, args.group_videos // 4)
            )
            print(
                json.dumps({"bench": "scale", "section": "rehearsal", **res, "machine": machine()}),
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
