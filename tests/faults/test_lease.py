"""One writer per output (pipeline/lease.py): the lease, its fence and leftover collection, on local disk and on the
moto S3 server, with real processes racing for it and a real SIGSTOP of a holder that commits."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.lease import (
    LEASE_NAME,
    OUTPUT_MARKER,
    LeaseFence,
    LeaseHeldError,
    LeaseLostError,
    OutputLease,
    OutputRefusedError,
    _boot_id,
    _pid_ns,
    safety_margin_s,
)
from pipeline.storage import S3Options, clean_leftovers, open_storage, temp_name
from tests.conftest import SOAK
from tests.faults.lease_workers import JOB, race_worker
from tests.faults.proxy import FaultPlan

REPO = Path(__file__).resolve().parents[2]
# `make soak` (HMHI_SOAK=1) runs the issue-22 counts; `make test` runs enough trials to catch a broken protocol in
# most runs (a race lost 1 time in 50 shows in 200 trials most of the time, in 50 a third of the time).
RACE_TRIALS = 200 if SOAK else 50
PAUSE_TRIALS = 20 if SOAK else 6


def _foreign_lease(
    st, *, host: str, pid: int, ttl_s: float, run_id: str = "deadbeef0000", under: str = "", **more
) -> None:
    """An earlier run's lease at ``st`` (or at its folder ``under``)."""
    now = time.time()
    st.write_json(
        f"{under}/{LEASE_NAME}" if under else LEASE_NAME,
        {
            "job": JOB,
            "run_id": run_id,
            "host": host,
            "pid": pid,
            "pid_start": "",
            "started": now,
            "renewed": now,
            "ttl_s": ttl_s,
            "output": st.url,
            **more,
        },
    )


def _claimed(st, job: str = JOB, under: str = "") -> None:
    """The folder (``st``, or its folder ``under``) is an earlier output of ``job`` (what its first run leaves)."""
    marker = {"job": job, "created": time.time(), "run_id": "earlier", "output": st.join(under)}
    st.write_json(f"{under}/{OUTPUT_MARKER}" if under else OUTPUT_MARKER, marker)


# -- one holder, refusals, takeovers ---------------------------------------------------------------------------------


def test_second_run_is_refused_with_the_holder_named(storage_url):
    st = open_storage(storage_url)
    with OutputLease(st, job=JOB) as first:
        holder = st.read_json(LEASE_NAME)
        assert holder["run_id"] == first.info.run_id and holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname() and holder["job"] == JOB
        assert holder["boot_id"] == _boot_id() and holder["pid_ns"] == _pid_ns()
        with pytest.raises(
            LeaseHeldError, match=f"run {first.info.run_id} on host {socket.gethostname()} pid {os.getpid()}"
        ) as info:
            OutputLease(st, job=JOB).acquire()
        assert st.url in str(info.value)
        assert st.read_json(LEASE_NAME) == holder  # the refused run changed nothing
    assert not st.exists(LEASE_NAME)  # released
    assert st.read_json(OUTPUT_MARKER)["job"] == JOB  # the folder is this job's output from now on
    with OutputLease(st, job=JOB):  # and free for the next run
        pass


def test_stale_lease_is_taken_over(storage_url):
    st = open_storage(storage_url)
    st.check()
    _claimed(st)
    # A holder on another host that stopped renewing: taken over once its TTL has passed (store clock, 1 s steps).
    _foreign_lease(st, host="elsewhere.example", pid=12345, ttl_s=3.0)
    with pytest.raises(LeaseHeldError, match="elsewhere.example pid 12345"):
        OutputLease(st, job=JOB).acquire()
    time.sleep(4.2)
    with OutputLease(st, job=JOB) as lease:
        assert st.read_json(LEASE_NAME)["run_id"] == lease.info.run_id
    # A holder in this very kernel and PID namespace whose process is gone: taken over at once (a killed run's rerun).
    dead = subprocess.Popen(["true"])
    dead.wait()
    here = {"boot_id": _boot_id(), "pid_ns": _pid_ns()}
    _foreign_lease(st, host=socket.gethostname(), pid=dead.pid, ttl_s=3600, **here)
    with OutputLease(st, job=JOB) as lease:
        assert st.read_json(LEASE_NAME)["run_id"] == lease.info.run_id
    # The same host name in another container (another PID namespace) or another boot: its pid means nothing here.
    for other in (
        {"boot_id": _boot_id(), "pid_ns": "pid:[1]"},
        {"boot_id": "another-boot", "pid_ns": _pid_ns()},
        {},
    ):
        _foreign_lease(st, host=socket.gethostname(), pid=dead.pid, ttl_s=3600, **other)
        with pytest.raises(LeaseHeldError, match=f"pid {dead.pid}"):
            OutputLease(st, job=JOB).acquire()


def test_unreadable_lease_is_held_until_its_ttl(tmp_path):
    st = open_storage(str(tmp_path / "o"))
    st.check()
    _claimed(st)
    lease_file = tmp_path / "o" / LEASE_NAME
    lease_file.write_bytes(b"")  # what a run killed mid-write could leave: no holder named
    with pytest.raises(LeaseHeldError, match="cannot be read.*held until it is 30 s old"):
        OutputLease(st, job=JOB, ttl_s=30).acquire()
    old = time.time() - 31
    os.utime(lease_file, (old, old))
    with OutputLease(st, job=JOB, ttl_s=30) as lease:
        assert st.read_json(LEASE_NAME)["run_id"] == lease.info.run_id


def test_renewal_keeps_the_lease_and_a_taken_over_holder_notices(s3_bucket):
    st = open_storage(f"{s3_bucket}/out")
    lease = OutputLease(st, job=JOB, ttl_s=3.0, renew_every_s=0.2).acquire()
    try:
        time.sleep(4.5)  # past the TTL: only renewal keeps it
        with pytest.raises(LeaseHeldError):
            OutputLease(st, job=JOB).acquire()
        lease.check()  # renewed all along: may commit
        _foreign_lease(st, host="elsewhere.example", pid=1, ttl_s=60)  # another run took it over
        deadline = time.time() + 10
        while not lease.lost and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(LeaseLostError, match=f"{st.url}/{LEASE_NAME}"):
            lease.check()
    finally:
        lease.release()
    assert st.read_json(LEASE_NAME)["host"] == "elsewhere.example"  # a lost lease is not deleted by its loser


def test_store_without_conditional_writes_falls_back_to_write_then_verify(s3_server, fault_proxy):
    fault_proxy.set_plan(FaultPlan(ignore_conditional_writes=True))
    st = open_storage(
        f"s3://{s3_server.create_bucket('nocond')}/out", S3Options(endpoint_url=fault_proxy.endpoint_url)
    )
    with OutputLease(st, job=JOB) as first:
        assert first._conditional is False
        with pytest.raises(LeaseHeldError, match=first.info.run_id):
            OutputLease(st, job=JOB).acquire()
    direct = OutputLease(open_storage(f"s3://{s3_server.create_bucket('cond')}/out"), job=JOB).acquire()
    assert direct._conditional is True  # moto honours If-None-Match, as S3 does
    direct.release()


def test_lease_file_is_plain_json_naming_the_run(tmp_path):
    st = open_storage(str(tmp_path / "o"))
    with OutputLease(st, job="segment", ttl_s=30) as lease:
        data = json.loads((tmp_path / "o" / LEASE_NAME).read_text())
        assert {"job", "run_id", "host", "pid", "pid_start", "started", "renewed", "ttl_s", "output"} <= set(
            data
        )
        assert data["ttl_s"] == 30 and data["output"] == st.url and lease.acquired_at > 0


def test_decorated_run_holds_the_lease_and_check_lease_sees_a_takeover(tmp_path):
    import pipeline.lease as lease_mod
    from pipeline.lease import check_lease, fenced, holds_output_lease

    class Cfg:
        output = str(tmp_path / "o")

    @holds_output_lease(JOB)
    def run(cfg):
        st = open_storage(cfg.output)
        out = fenced(st)
        assert st.read_json(LEASE_NAME)["job"] == JOB and out.fence is lease_mod._CURRENT
        check_lease()  # held: nothing to say
        out.write_text("before.txt", "x")
        with pytest.raises(LeaseHeldError, match=f"job {JOB}"):
            holds_output_lease(JOB)(lambda c: None)(cfg)  # a second run, even in this process
        _foreign_lease(st, host="elsewhere.example", pid=1, ttl_s=60)  # taken over while this run stalled
        lease_mod._CURRENT.renew()
        with pytest.raises(LeaseLostError, match="taken over"):
            check_lease()
        with pytest.raises(LeaseLostError):
            out.write_text("after.txt", "x")  # the fenced storage commits nothing more
        with pytest.raises(LeaseLostError):
            out.delete("before.txt")
        return "ran"

    assert run(Cfg()) == "ran"
    check_lease()  # outside a leased run: a no-op
    root = tmp_path / "o"
    assert (root / "before.txt").exists() and not (root / "after.txt").exists()
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]  # the refused write left no temporary file
    assert open_storage(Cfg.output).read_json(LEASE_NAME)["host"] == "elsewhere.example"  # the winner's, kept


def test_lease_reads_survive_cut_bodies_and_errors(s3_server, fault_proxy):
    st = open_storage(
        f"s3://{s3_server.create_bucket('cut')}/out", S3Options(endpoint_url=fault_proxy.endpoint_url)
    )
    fault_proxy.set_plan(FaultPlan(seed=5, error_rate=0.3, cut_rate=1.0, max_faults_per_request=2))
    with OutputLease(st, job=JOB) as first:
        with pytest.raises(LeaseHeldError, match=first.info.run_id):
            OutputLease(st, job=JOB).acquire()
    assert fault_proxy.counts["cut_rst"] + fault_proxy.counts["cut_fin"] >= 2  # the lease GETs were cut
    assert not open_storage(f"s3://{st.root}").exists(LEASE_NAME)  # and the release still happened


# -- whose folder -------------------------------------------------------------------------------------------------


def test_a_folder_that_is_not_the_jobs_own_output_is_refused_untouched(storage_url):
    st = open_storage(storage_url)
    st.write_bytes("photos/cat.jpg", b"not ours")
    leftover = f"shards/{temp_name('train-0001.tar')}"
    st.write_bytes(leftover, b"looks like a leftover, but this folder is not ours")
    with pytest.raises(
        OutputRefusedError, match="is not empty .*photos.*choose a new or empty output folder"
    ):
        OutputLease(st, job="segment").acquire()
    assert st.read_bytes("photos/cat.jpg") == b"not ours" and not st.exists(LEASE_NAME)
    assert not st.exists(OUTPUT_MARKER)
    if st.is_local:
        assert (Path(st.root) / "shards").iterdir()  # nothing cleaned
    # Another job's output is refused too, and so is a second job on this job's output.
    mine = open_storage(f"{storage_url}-2")
    with OutputLease(mine, job="segment"):
        mine.write_text("done/a.json", "{}")
    with pytest.raises(OutputRefusedError, match="holds the output of job 'segment'"):
        OutputLease(mine, job="evaluate").acquire()
    with OutputLease(mine, job="segment"):  # its own earlier output: fine
        pass
    # An output written before markers existed is recognised by its summary.
    legacy = open_storage(f"{storage_url}-3")
    legacy.write_json("summary.json", {"job": "evaluate"})
    with OutputLease(legacy, job="evaluate"):
        pass
    assert legacy.read_json(OUTPUT_MARKER)["job"] == "evaluate"


def test_bucket_and_filesystem_roots_are_refused(s3_bucket):
    for root in (s3_bucket, f"{s3_bucket}/", "/"):
        with pytest.raises(OutputRefusedError, match="root: an output must be a folder of its own"):
            OutputLease(root, job="segment").acquire()
    with pytest.raises(ValueError, match="bucket or file-system root"):
        clean_leftovers(open_storage(s3_bucket), older_than=time.time())


def test_leftovers_are_collected_when_the_lease_is_taken(s3_server, s3_bucket, tmp_path):
    bucket = s3_bucket.removeprefix("s3://")
    client = s3_server.client()
    out = open_storage(f"{s3_bucket}/out")
    _claimed(out, "precompute_flow")
    # A nested output with a live lease inside this one: its uploads are its own run's.
    nested = out.child("eval")
    with OutputLease(nested, job="evaluate"):
        for key in ("out/shards/train-000001.tar", "elsewhere/x.bin", "out/eval/per_frame.csv"):
            up = client.create_multipart_upload(Bucket=bucket, Key=key)
            client.upload_part(
                Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 1000
            )
        # moto reports every upload as initiated on 2010-11-10 (S3 reports the real time): an older_than before
        # that keeps them all, which is how an upload started after the run's start is kept on S3.
        assert clean_leftovers(out, older_than=0, protected=(LEASE_NAME,))["multipart_uploads_aborted"] == 0
        with OutputLease(out, job="precompute_flow") as lease:
            assert lease.leftovers["multipart_uploads_aborted"] == 1
        left = sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
        assert left == ["elsewhere/x.bin", "out/eval/per_frame.csv"]  # outside, or another live output's

    root = tmp_path / "out"
    (root / "shards").mkdir(parents=True)
    (root / "eval").mkdir()
    _claimed(open_storage(str(root)), "precompute_flow")
    old = root / "shards" / temp_name("train-000001.tar")
    fresh = root / temp_name("index.parquet")
    keep = root / "shards" / "train-000000.tar"
    foreign_tmp = root / "shards" / f"notes.tmp-{uuid.uuid4().hex}"  # not this project's temp-name shape
    nested_tmp = root / "eval" / temp_name("per_frame.csv")
    (root / "eval" / LEASE_NAME).write_text(
        "{}"
    )  # a nested output's lease (even unreadable): not ours to clean
    for p in (old, fresh, keep, foreign_tmp, nested_tmp):
        p.write_bytes(b"x")
    for p in (old, keep, foreign_tmp, nested_tmp):
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    os.utime(fresh, (time.time() + 3600, time.time() + 3600))  # written after the run started
    with OutputLease(open_storage(str(root)), job="precompute_flow") as lease:
        assert lease.leftovers["temp_files_removed"] == 1
    assert (
        not old.exists() and fresh.exists() and keep.exists() and foreign_tmp.exists() and nested_tmp.exists()
    )


# -- fencing --------------------------------------------------------------------------------------------------------


def test_check_fails_before_a_takeover_is_possible_when_renewals_fail(s3_server, fault_proxy):
    """The store unreachable for longer than the TTL: the holder stops before its next commit, saying why, and
    before another run may take its output over."""
    st = open_storage(
        f"s3://{s3_server.create_bucket('cutoff')}/out",
        S3Options(endpoint_url=fault_proxy.endpoint_url, max_attempts=1),
    )
    lease = OutputLease(st, job=JOB, ttl_s=4.0).acquire()
    try:
        out = st.fenced(lease)
        out.write_text("a.txt", "before")
        fault_proxy.set_plan(FaultPlan(error_rate=1.0, max_faults_per_request=10**9))
        last_passed = 0.0  # seconds since the last renewal when a check last let the holder commit
        while True:
            try:
                lease.check()
            except LeaseLostError as err:
                message = str(err)
                break
            last_passed = time.monotonic() - lease._renewed_at
            time.sleep(0.05)
        failed_at = time.monotonic() - lease._renewed_at
        # Another run may take over once the lease is 4 s old by the store's whole-second clock (3 s at worst): no
        # check lets the holder commit after that. The failing check tries one renewal first, which on a loaded
        # machine may return well after 3 s; it commits nothing either way, so only the passing checks are timed.
        assert last_passed < 3.0
        assert failed_at > 4.0 - safety_margin_s(4.0, local=False)  # and the holder does not stop too early
        assert "renewing it failed" in message and "unreachable" in message
        assert "SlowDown" in message or "InternalError" in message  # what the store answered
    finally:
        fault_proxy.set_plan(FaultPlan())
        lease.release()


def test_a_lease_fence_travels_pickled_and_stops_writers_of_a_lost_run(storage_url):
    st = open_storage(storage_url)
    lease = OutputLease(st, job=JOB, ttl_s=30).acquire()
    try:
        remote = pickle.loads(pickle.dumps(st.fenced(lease)))  # what a Ray actor receives
        assert isinstance(remote.fence, LeaseFence) and remote.fence.run_id == lease.info.run_id
        remote.write_text("from-actor.txt", "ok")  # read the lease once, then trusted for a while
        assert remote.fence._valid_until > time.monotonic() + 10
        remote.fence._valid_until = 0.0  # as when the trusted span ends
        _foreign_lease(st, host="elsewhere.example", pid=1, ttl_s=60, run_id="taker0000000")
        with pytest.raises(LeaseLostError, match="no longer holds this output's lease.*taker0000000"):
            remote.write_text("late.txt", "no")
        assert not st.exists("late.txt")
    finally:
        lease.release()


# -- races: 200 trials, two processes released together -------------------------------------------------------------


def _race(roots: list[str], ttl_s: float) -> dict[int, list[tuple[bool, str | None]]]:
    ctx = multiprocessing.get_context("spawn")
    start, tried, results = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=race_worker, args=(roots, ttl_s, start, tried, results)) for _ in range(2)]
    for w in workers:
        w.start()
    outcomes: dict[int, list[tuple[bool, str | None]]] = defaultdict(list)
    try:
        for _ in range(2 * len(roots)):
            trial, won, run_id = results.get(timeout=120)
            outcomes[trial].append((won, run_id))
        for w in workers:
            w.join(timeout=60)
            assert w.exitcode == 0
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
    return outcomes


@pytest.mark.parametrize("situation", ["start_together", "stale_takeover"])
def test_two_runs_racing_for_an_output_never_both_hold_it(storage_url, situation, moto_atomic_conditions):
    base = open_storage(storage_url)
    folders = [f"trial-{i:03d}" for i in range(RACE_TRIALS)]
    roots = [base.join(folder) for folder in folders]
    if situation == "stale_takeover":  # every trial starts from an earlier run's stale lease
        local = base.is_local

        def stale(folder: str) -> None:
            _claimed(base, under=folder)
            # S3 ages have whole seconds: a TTL of -1 makes the lease stale at once (age >= 0 > -1).
            _foreign_lease(base, host="elsewhere.example", pid=1, ttl_s=1.0 if local else -1.0, under=folder)
            if local:
                old = time.time() - 3600
                os.utime(Path(base.root) / folder / LEASE_NAME, (old, old))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(stale, folders))
    started = time.perf_counter()
    outcomes = _race(roots, ttl_s=60.0)
    elapsed = time.perf_counter() - started
    print(f"{situation} {base.scheme}: {RACE_TRIALS} trials in {elapsed:.1f} s")
    assert sorted(outcomes) == list(range(RACE_TRIALS))
    errors = [won for results in outcomes.values() for won, _ in results if isinstance(won, str)]
    assert not errors, errors[:3]
    doubles = [t for t, results in outcomes.items() if sum(won for won, _ in results) != 1]
    assert not doubles, f"trials without exactly one holder: {doubles[:10]} ({outcomes[doubles[0]]})"


@pytest.fixture
def moto_atomic_conditions(request):
    """Make moto's conditional PUT atomic, as S3's is: moto checks ``If-None-Match``/``If-Match`` and then writes,
    in a threaded server, so two requests can both pass the check (S3 itself serialises them per key)."""
    if "s3" not in request.node.callspec.id:
        yield
        return
    from moto.s3.responses import S3Response

    original = S3Response.put_object
    lock = threading.Lock()

    def put_object(self, *args, **kwargs):
        with lock:
            return original(self, *args, **kwargs)

    S3Response.put_object = put_object
    try:
        yield
    finally:
        S3Response.put_object = original


# -- a holder paused past its TTL commits nothing after the takeover (20 trials) ------------------------------------


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.lease_workers", *args],
        cwd=REPO,
        # Few attempts: moto answers 500 (S3: 404 NoSuchUpload) to a part or commit of an aborted upload, which the
        # default 8 attempts with back-off would retry for a minute before the writer gives up.
        env=dict(os.environ, PYTHONPATH=str(REPO), AWS_MAX_ATTEMPTS="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    result: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            if line.startswith(prefix):
                result.append(line.strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        raise AssertionError(f"no {prefix!r} line from {proc.args}: {_output(proc)}")
    return result[0]


def _output(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=30)
    return f"{out[-1500:]} {err[-1500:]}"


def _commits(st, tag: str) -> set[str]:
    return {n for n in st.list("commits") if n.startswith(f"{tag}-")}


def _take_over(st, ttl_s: float, deadline_s: float) -> OutputLease:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return OutputLease(st, job=JOB, ttl_s=ttl_s).acquire()
        except LeaseHeldError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _pause_trial(root: str, ttl_s: float, writer_apart: bool, fence_file: str) -> dict:
    """One trial: a run commits every few ms; its driver is SIGSTOPped past the TTL; another run takes over; SIGCONT.
    ``fence_file``: a local file for the pickled fence the driver hands its writer (``writer_apart``). Returns the
    counts the test asserts on."""
    st = open_storage(root)
    tag = "w"
    processes = []
    try:
        if writer_apart:  # a Ray actor's situation: the writer runs on while its driver is paused
            driver = _spawn("driver", root, str(ttl_s), fence_file)
            processes.append(driver)
            _wait_line(driver, "ready")
            writer = _spawn("writer", fence_file, tag)
            processes.append(writer)
        else:
            driver = writer = _spawn("commit", root, str(ttl_s), tag)
            processes.append(driver)
        _wait_line(writer, "ready")
        deadline = time.monotonic() + 60
        while len(_commits(st, tag)) < 20:  # committing at full pace
            assert writer.poll() is None and time.monotonic() < deadline, (
                f"the writer stopped: {_output(writer)}"
            )
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGSTOP)
        taker = _take_over(st, ttl_s, deadline_s=3 * ttl_s + 10)
        at_takeover = _commits(st, tag)
        os.kill(driver.pid, signal.SIGCONT)
        lost = _wait_line(writer, "lost", timeout=30)
        time.sleep(0.3)
        after = _commits(st, tag)
        taker.release()
        return {"before": len(at_takeover), "late": len(after - at_takeover), "lost": lost}
    finally:
        for proc in processes:
            _stop_process(proc)


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=30)


@pytest.mark.slow  # 20 trials, each paused past a TTL: ~20 s locally, ~60 s on S3
@pytest.mark.parametrize("writer_apart", [False, True], ids=["holder_commits", "actor_commits"])
def test_a_paused_holder_commits_nothing_after_a_takeover(storage_url, writer_apart, tmp_path):
    base = open_storage(storage_url)
    # Short TTLs, with room for a loaded machine: S3 ages have whole seconds, and the margin is 2 s + 10%.
    ttl_s = 3.0 if base.is_local else 6.0
    roots = [base.join(f"trial-{i:02d}") for i in range(PAUSE_TRIALS)]
    fences = [str(tmp_path / f"fence-{i:02d}.pkl") for i in range(PAUSE_TRIALS)]  # local files, S3 trials too
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:  # trials side by side: each mostly waits for its TTL to pass
        results = list(pool.map(lambda r, f: _pause_trial(r, ttl_s, writer_apart, f), roots, fences))
    elapsed = time.perf_counter() - started
    print(
        f"pause {base.scheme} {'actor' if writer_apart else 'holder'}: {PAUSE_TRIALS} trials in {elapsed:.1f} s"
    )
    assert all(r["before"] >= 20 for r in results)  # they were committing when paused
    assert [r["late"] for r in results] == [0] * PAUSE_TRIALS, results
    # Stopped by the fence, or by finding its pending commit collected by the taker (moto: a 500, S3: NoSuchUpload).
    reasons = ("LeaseLostError", "nothing was written", "StorageUnavailableError")
    assert all(any(reason in r["lost"] for reason in reasons) for r in results), results
