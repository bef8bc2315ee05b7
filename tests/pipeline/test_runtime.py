"""Quiet logs (pipeline.runtime): framework notices a user cannot act on are dropped, one by one and nothing else:
Ray's log records in every process of a job's cluster, and Ray's C++ error lines on the driver's stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT


def _run_python(script: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter (stdio settings are per process; stderr a pipe, not a terminal), which
    must succeed; its completed process, stderr as text."""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_ray_records_are_dropped_one_message_at_a_time():
    from pipeline.runtime import quiet_ray_worker

    quiet_ray_worker()
    quiet_ray_worker()  # idempotent: one filter per logger
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert len(auth.filters) == 1

    def kept(logger: logging.Logger, message: str) -> bool:
        record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)
        return all(f.filter(record) for f in logger.filters)

    assert not kept(
        auth, "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled ..."
    )
    assert kept(auth, "Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    autoscaler = logging.getLogger(
        "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
    )
    assert not kept(
        autoscaler, "Failed to send resource request for train-1. If this only happens transiently ..."
    )
    assert kept(autoscaler, "something else")
    progress = logging.getLogger("ray.data._internal.progress")
    assert not kept(progress, "Progress bars disabled. To enable, set ...")


def test_the_aws_sdks_do_not_log_where_they_found_credentials(monkeypatch):
    from pipeline.runtime import quiet_frameworks

    monkeypatch.delenv("HMHI_LOG_LEVEL", raising=False)
    quiet_frameworks()
    for name in ("botocore.credentials", "aiobotocore.credentials"):
        sdk = logging.getLogger(name)
        assert not sdk.isEnabledFor(logging.INFO) and sdk.isEnabledFor(logging.WARNING)


def test_the_stderr_filter_drops_ray_s_cpp_line_and_passes_everything_else_on():
    """File-descriptor writes, as C++ makes them, and Python's print (a line and its newline written apart)."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from pipeline.runtime import _StderrLineFilter
        _StderrLineFilter.install()
        silenced = "[2026-12-06 17:26:09,821 E 1 1] core_worker.cc:2465: Actor with class name: 'MapWorker' has "
        silenced += "constructor arguments in the object store and max_restarts > 0. If the arguments ..."
        os.write(2, b"before\\n" + silenced.encode() + b"\\nafter\\n")
        print("(TrainController pid=9) " + silenced, file=sys.stderr)
        gcs = "\x1b[36m(pid=gcs_server)\x1b[0m [2026-12-07 00:35:00,200 E 9552 9552] (gcs_server) "
        gcs += "gcs_actor_scheduler.cc:538: Failed to kill actor 18b2, return status: Invalid: KillActor RPC failed "
        gcs += "for actor 18b2: RpcError: RPC error: Socket closed rpc_code: 14"
        print(gcs, file=sys.stderr)
        print("kept line", file=sys.stderr)
        sys.stderr.write("a partial line, then a pause")
        sys.stderr.flush()
        time.sleep(0.5)
        sys.stderr.write(" and its end\\nno newline at exit")
        """
    )
    proc = _run_python(script)
    assert proc.stderr == (
        "before\nafter\nkept line\na partial line, then a pause and its end\nno newline at exit"
    )


def test_the_stderr_filter_still_filters_what_ray_forwards_while_it_shuts_down_at_exit():
    """Ray's exit-time shutdown is registered (at its import) before the filter: the filter shuts Ray down first."""
    script = textwrap.dedent(
        """
        import atexit, sys, types
        ray = types.ModuleType("ray")  # stands in for Ray: what its shutdown forwards from the GCS
        ray.running = True
        ray.is_initialized = lambda: ray.running
        def shutdown():
            if ray.running:
                ray.running = False
                print("(pid=gcs_server) [2026-12-07 01:40:45,289 E 1 1] KillActor RPC failed for actor d1", file=sys.stderr)
                print("last forwarded line", file=sys.stderr)
        ray.shutdown = shutdown
        sys.modules["ray"] = ray
        atexit.register(ray.shutdown)  # as ray._private.worker does at import
        from pipeline.runtime import _StderrLineFilter
        _StderrLineFilter.install()
        print("job line", file=sys.stderr)
        """
    )
    proc = _run_python(script)
    assert proc.stderr == "job line\nlast forwarded line\n"


def test_ray_data_s_progress_bars_go_once_it_is_loaded_and_quieting_does_not_load_it():
    script = textwrap.dedent(
        """
        import sys
        from pipeline.runtime import quiet_frameworks
        quiet_frameworks()
        assert "ray.data" not in sys.modules, "quiet_frameworks imported Ray Data"
        import ray.data
        assert ray.data.DataContext.get_current().enable_progress_bars  # Ray's default
        quiet_frameworks()  # what the flow job does once it has imported Ray Data
        assert not ray.data.DataContext.get_current().enable_progress_bars
        """
    )
    _run_python(script)  # its assertions run in the subprocess


def test_the_job_log_follows_stderr_when_it_is_replaced_and_the_old_one_closed(monkeypatch):
    """A job's log handler outlives the stderr it started with (a test's capture, a notebook cell's): the next
    job's records go to the stderr of the moment, and none meets the closed stream ("--- Logging error ---")."""
    import io
    import logging

    from pipeline.runtime import _StderrHandler, setup_logging

    root, level = logging.getLogger(), logging.getLogger().level
    ours = [h for h in root.handlers if isinstance(h, _StderrHandler)]  # an earlier job's, in this process
    for handler in ours:
        root.removeHandler(handler)
    monkeypatch.setattr(logging, "raiseExceptions", True)
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        setup_logging()
        setup_logging()  # idempotent: one handler
        logging.getLogger("pipeline.test").info("first job")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("pipeline.test").info("second job")
        assert "second job" in second.getvalue() and "Logging error" not in second.getvalue()
        assert len([h for h in root.handlers if isinstance(h, _StderrHandler)]) == 1
    finally:
        for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
            root.removeHandler(handler)
        for handler in ours:
            root.addHandler(handler)
        root.setLevel(level)
