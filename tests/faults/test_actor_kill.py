"""A Ray Data map actor SIGKILLed in the middle of the flow job and of ``segment`` (issue 14).

Ray Data restarts a dead map actor and resubmits its task (``max_restarts=-1``, ``max_task_retries=-1`` by
default); the jobs must then complete with every video exactly once: for the flow job, index rows unique per
(video, clip), every shard's checksum verified and no shard outside the index; for segment, every video's masks
complete and one done marker each.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from subprocess import Popen

import pytest

from pipeline.shards import read_index, verify_shard
from pipeline.storage import Storage, open_storage
from tests.faults.driver import finish_driver, start_driver
from tests.media import write_davis

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _kill_map_actor_once_committed(
    job: Popen, stage: str, out: Storage, commits: str, timeout: float = 300
) -> str:
    """Wait until the job has committed something under ``out/commits`` and a live actor of ``stage`` exists (a
    plain actor of that class, or a Ray Data map actor of that UDF class), SIGKILL its process and return its id."""
    # The GCS actor table: ray.util.state.list_actors needs the dashboard, which the session cluster runs without.
    from ray._private.state import actors as actor_table

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert job.poll() is None, (
            f"the job ended before an actor could be killed:\n{job.communicate()[0][-3000:]}"
        )
        if out.isdir(commits) and out.list(commits):
            actors = [
                a
                for a in actor_table().values()
                if a["State"] == "ALIVE"
                and a["Pid"]
                and (a["ActorClassName"] == stage or f"({stage})" in a["ActorClassName"])
            ]
            if actors:
                os.kill(actors[0]["Pid"], signal.SIGKILL)
                return actors[0]["ActorID"]
        time.sleep(0.05)
    raise AssertionError(f"no {stage} actor and commit under {out.join(commits)} within {timeout} s")


def _restarts(actor_id: str) -> int:
    from ray._private.state import actors as actor_table

    return actor_table(actor_id)["NumRestarts"]


def test_flow_job_with_a_killed_actor_writes_every_video_exactly_once(s3_bucket, tmp_path, ray_cluster):
    videos = {f"v{i}": 8 for i in range(6)}
    write_davis(tmp_path / "c", videos, size=(48, 64))
    out = f"{s3_bucket}/out"
    # One video per group and one actor: the groups pass through the actor one after the other.
    job = start_driver(
        ray_cluster,
        {},
        [
            "--input",
            str(tmp_path / "c"),
            "--output",
            out,
            "--clip-length",
            "4",
            "--shard-size-mb",
            "0.01",
            "--concurrency",
            "1",
            "--set",
            "shards.group_videos=1",
        ],
    )
    st = open_storage(out)
    killed = _kill_map_actor_once_committed(job, "GroupStage", st, "index")
    finish_driver(job)
    assert _restarts(killed) >= 1  # Ray restarted the killed actor, and the job went on

    summary = st.read_json("summary.json")
    assert summary["counts"]["video"] == {"done": 6, "skipped": 0, "rejected": 0}
    index = read_index(out)
    clips = Counter(
        zip(index.column("video_id").to_pylist(), index.column("clip_index").to_pylist(), strict=True)
    )
    assert clips == Counter({(v, c): 1 for v in videos for c in range(2)})  # 6 videos x 2 clips, each once
    keys = index.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 12
    shards = dict(
        zip(index.column("shard").to_pylist(), index.column("shard_sha256").to_pylist(), strict=True)
    )
    for shard, checksum in shards.items():
        verify_shard(st.join(shard), checksum)
    # No orphan: the shard folder holds exactly the index's shards.
    assert sorted(f"shards/{n}" for n in st.list("shards", recursive=True)) == sorted(shards)
    assert not st.exists("_lease.json")


def test_segment_with_a_killed_actor_completes_every_video_once(
    s3_bucket, tmp_path, ray_cluster, tiny_checkpoint
):
    videos = {f"v{i}": 5 for i in range(6)}
    write_davis(tmp_path / "c", videos, size=(48, 80))
    out = f"{s3_bucket}/seg"
    # One actor, one video per batch: the batches pass through the actor one after the other.
    job = start_driver(
        ray_cluster,
        {},
        [
            "--input",
            str(tmp_path / "c"),
            "--output",
            out,
            "--checkpoint",
            tiny_checkpoint,
            "--input-size",
            "64",
            "--num-actors",
            "1",
            "--set",
            "runtime.videos_in_flight=1",
            "--set",
            "runtime.videos_per_batch=1",
            "--set",
            "flow.preset=ultrafast",
            "--precision",
            "fp32",
        ],
        job="jobs.segment",
    )
    st = open_storage(out)
    killed = _kill_map_actor_once_committed(job, "SegmentActor", st, "done")
    finish_driver(job)
    assert _restarts(killed) >= 1  # Ray restarted the killed actor, and the job went on

    summary = st.read_json("summary.json")
    assert summary["counts"]["video"] == {"done": 6, "skipped": 0, "rejected": 0}
    assert st.list("done") == [f"{v}.json" for v in sorted(videos)]  # one done marker per video
    masks = Counter(name.split("/")[0] for name in st.list("masks", recursive=True))
    assert masks == Counter({v: 5 for v in videos})  # every video's masks complete, no stray file
    assert not st.exists("_lease.json")
