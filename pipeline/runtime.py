"""The process runtime every job shares: one log format, quiet frameworks, and attaching to Ray."""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import faulthandler
import functools
import logging
import os
import select
import socket
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["init_ray", "keep_freed_memory", "quiet_frameworks", "quiet_ray_worker", "setup_logging"]

_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


# Framework messages a user of the jobs cannot act on. Each entry says why it is silenced; everything else is kept.
_SILENCED_WARNINGS = (
    # (message regex, category, module regex, reason)
    (
        "Grad strides do not match bucket view strides",
        UserWarning,
        "",
        "DDP (torch/csrc/distributed/c10d/reducer.cpp, once per worker, every run) compares each gradient's strides "
        "with its parameter's. HMHI-Net's depthwise convolutions (MiT's Mix-FFN dwconv, the memory encoders' fusers, "
        "PLAM's down-projection) have (C, 1, k, k) weights with stride k*k on the size-1 axis, and their backward "
        "returns stride 1 there: the same memory layout, and the reducer still copies the right values into its bucket; "
        "no setting of a job changes it.",
    ),
)
_SILENCED_LOG_RECORDS = (
    # (logger name, message prefix, reason)
    (
        "ray._private.authentication.authentication_token_setup",
        "Token authentication is enabled for this Ray cluster",
        "Ray 2.60 turns token authentication on for every local cluster a job starts and says so each time (with "
        "RAY_AUTH_MODE unset). It is the secure default and asks nothing of the user; the warning that it is "
        "*disabled* (anyone on the network may run code) is kept.",
    ),
    (
        "ray.data._internal.progress",
        "Progress bars disabled",
        "quiet_frameworks turns Ray Data's progress bars off when stderr is no terminal (each redraw would be a log "
        "line), and Ray Data then warns, on every run, that they are off.",
    ),
    (
        "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
        "Failed to send resource request",
        "Ray Train's controller registers its workers with the cluster autoscaler's coordinator (an actor it "
        "creates) and gives the call 5 s; on a busy machine it times out and logs a warning with a 20-line "
        "traceback that it calls safe to ignore. Only set in a local cluster a job starts, which has no "
        "autoscaler to tell.",
    ),
)
_SILENCED_STDERR_LINES = (
    # (bytes in the line, reason)
    (
        b"has constructor arguments in the object store and max_restarts > 0",
        "Ray's C++ core logs an ERROR for every restartable actor whose constructor arguments are in the object "
        "store (ray-project/ray#53727): Ray Data creates its actor pools so (the flow job's flow actors) and Ray "
        "Train its controller's helpers, on every run. The arguments live as long as the job's driver, so the "
        "restarts a job relies on work; nothing in a job's settings changes it. It is written by C++ straight to "
        "the file descriptor (the driver's own, or forwarded from an actor), where no Python filter reaches.",
    ),
    (
        b"KillActor RPC failed for actor",
        "At the end of a job that started its own local cluster, Ray's GCS may still try to kill an actor of a "
        "finished Ray Data pool whose worker process has already exited, and logs an ERROR that the RPC found the "
        "socket closed (the actor is gone either way). Forwarded to the driver while the cluster shuts down, in "
        "some runs and not others; nothing was lost and nothing can be done about it.",
    ),
)
_PARTIAL_LINE_WAIT_S = 0.1
"""How long the stderr filter waits for the end of a line before passing its start on."""
_QUIET_ENV = {
    # Ray prints the same line from every worker once per worker: keep its de-duplication on (the default, made
    # explicit because a user's environment may have turned it off).
    "RAY_DEDUP_LOGS": "1",
    # The "ray.init(...) will be ignored / usage stats" notices and the Ray Train V2 migration banner repeat on
    # every run and ask nothing of the user.
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    # Ray Data's live progress bars redraw dozens of times a second; in a log file (not a terminal) each redraw
    # becomes a line, and the job's own log already reports progress per video.
}


def quiet_frameworks() -> None:
    """Silence framework noise that a user of the jobs cannot act on; the one place that does it (idempotent).

    Called by :func:`setup_logging` (the driver) and by the training workers (``pipeline.train.loop``), since the
    DDP warning is raised in the worker processes. What is silenced and why: :data:`_SILENCED_WARNINGS`,
    :data:`_QUIET_ENV` (environment variables a user may still set explicitly: only unset ones are filled in) and,
    once Ray Data is imported, its progress bars when stderr is not a terminal. ``HMHI_LOG_LEVEL=DEBUG`` keeps
    everything.
    """
    import warnings

    if os.environ.get("HMHI_LOG_LEVEL", "").upper() == "DEBUG":
        return
    quiet_ray_worker()
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    # Ray Train's INFO lines in the training workers ("Moving model to device", and one "Reporting training
    # result" per report and rank that prints every metric) repeat what the job's own step lines say; its warnings
    # and errors stay. The report line comes from a logger named by its file path (logging.getLogger(__file__) in
    # ray/train/v2/_internal/execution/context.py, Ray 2.60), outside "ray.train", so it is named here.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    # The AWS SDKs say at INFO where they found credentials, once per process and client stack: the job's log is
    # not the place (a mistake in an argument must stay one line, also in a process that already ran a job).
    for name in ("botocore.credentials", "aiobotocore.credentials"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if "ray.train" in sys.modules:  # only where training runs: importing Ray Train costs a second
        try:
            from ray.train.v2._internal.execution import context as train_context
        except ImportError:  # another Ray version: nothing to quiet
            pass
        else:
            logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    # Only where Ray Data is loaded: importing it costs a second of every process (a job's driver, every actor and
    # training worker), and only the flow job uses it (it calls this again once it has imported it).
    if not sys.stderr.isatty() and "ray.data" in sys.modules:
        from ray.data import DataContext

        with warnings.catch_warnings():
            # Ray 2.60's DataContext() assigns its own deprecated fields while it is built and warns about them.
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        if hasattr(ctx, "enable_operator_progress_bars"):
            ctx.enable_operator_progress_bars = False


def quiet_ray_worker() -> None:
    """The part of :func:`quiet_frameworks` that every process of a job's Ray cluster applies (Ray calls it at each
    worker's start: ``worker_process_setup_hook``, set by :func:`init_ray` for a cluster it starts): the warnings
    and log records of :data:`_SILENCED_WARNINGS` and :data:`_SILENCED_LOG_RECORDS`, which Ray's own actors (Ray
    Train's controller) log where no job code runs. Cheap: it imports nothing."""
    import warnings

    if os.environ.get("HMHI_LOG_LEVEL", "").upper() == "DEBUG":
        return
    for message, category, module, _reason in _SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for logger_name, prefix, _reason in _SILENCED_LOG_RECORDS:
        logger = logging.getLogger(logger_name)
        if not any(getattr(f, "prefix", None) == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with ``prefix`` (see :data:`_SILENCED_LOG_RECORDS`)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


class _StderrLineFilter:
    """This process's stderr (file descriptor 2) passed on to where it went before, without the whole lines that
    hold one of :data:`_SILENCED_STDERR_LINES` (C++ writes them to the descriptor: no Python filter sees them).

    A pipe replaces descriptor 2 and a thread copies what arrives, line by line, as it arrives; a partial line
    waits at most :data:`_PARTIAL_LINE_WAIT_S` for its end (``print`` writes a line and its newline apart). At exit
    the pipe is drained and descriptor 2 restored, and ``faulthandler`` writes to the real stderr, so a crash
    report is never lost in the pipe.
    """

    _installed: _StderrLineFilter | None = None

    def __init__(self) -> None:
        self._target = os.dup(2)
        read_end, write_end = os.pipe()
        self._read_end = read_end
        self._marker = f"hmhi-stderr-drained-{os.getpid()}-{id(self)}".encode()
        self._drained = threading.Event()
        sys.stderr.flush()
        os.dup2(write_end, 2)
        os.close(write_end)
        if faulthandler.is_enabled():
            faulthandler.enable(file=self._target)
        threading.Thread(target=self._copy, name="hmhi-stderr-filter", daemon=True).start()
        atexit.register(self.uninstall)

    @classmethod
    def install(cls) -> None:
        """Install the filter once per process (idempotent)."""
        if cls._installed is None:
            cls._installed = cls()

    def _copy(self) -> None:
        pending = b""
        while True:
            if pending and not select.select([self._read_end], [], [], _PARTIAL_LINE_WAIT_S)[0]:
                os.write(self._target, pending)  # a partial line that stays partial goes on as it is
                pending = b""
                continue
            try:
                chunk = os.read(self._read_end, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            out, drained = [], False
            for line in lines:
                if line.endswith(self._marker):  # uninstall's marker: everything before it is here
                    out.append(line[: -len(self._marker)])  # the end of a partial line, if any (no newline)
                    drained = True
                elif not self._silenced(line):
                    out.append(line + b"\n")
            if out:
                os.write(self._target, b"".join(out))
            if drained:
                self._drained.set()

    @staticmethod
    def _silenced(line: bytes) -> bool:
        return any(pattern in line for pattern, _reason in _SILENCED_STDERR_LINES)

    def uninstall(self) -> None:
        """Shut Ray down, copy out what the pipe still holds, then give descriptor 2 back (at exit)."""
        # Ray registers its own exit-time shutdown at import, before this handler, so it would run after it: the
        # lines the cluster forwards while it shuts down (the GCS's "KillActor RPC failed") would pass unfiltered.
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        sys.stderr.flush()
        os.write(2, self._marker + b"\n")
        self._drained.wait(timeout=2.0)
        os.dup2(self._target, 2)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse the memory a process frees instead of giving it back to the kernel (idempotent).
    Returns False, changing nothing, where the C library is not glibc.

    Why: a model step allocates and frees hundreds of tensors of up to 32 MiB. glibc serves a block above its mmap
    threshold (128 KiB at start, raised only to the largest size freed so far) with a fresh mmap and unmaps it when
    freed, and trims the heap top, so every step faults its pages in again: ~108,000 page faults and 0.30-0.37 s of
    kernel time per 512x512 HMHI-Net frame on one thread (AVX2 machine, torch 2.14), and an elementwise op writing
    a fresh 32 MiB output took 27 ms instead of 3.7 ms. With the threshold at glibc's maximum (32 MiB) and no
    trimming, the same step takes ~1 page fault. The price: the process keeps the memory of its peak (a model
    process reuses it at every step). Called by the processes that run the model: the segment actors and the
    training workers.
    """
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no C library by that name, or not glibc (no mallopt)
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        and mallopt(_M_TOP_PAD, 64 << 20)
    )


def setup_logging(level: int | str = logging.INFO) -> None:
    """One log format for every job (idempotent). ``HMHI_LOG_LEVEL`` overrides ``level``."""
    level = os.environ.get("HMHI_LOG_LEVEL", level)
    quiet_frameworks()
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)


class _StderrHandler(logging.StreamHandler):
    """The jobs' log handler: writes to ``sys.stderr`` as it is when a record is logged, not as it was when the
    handler was made, so that a caller who redirects stderr after a job ran (a notebook cell's capture, a test's)
    gets the next job's log and never an error about a stream that has since been closed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _stream) -> None:  # StreamHandler.__init__ and setStream assign it: always sys.stderr
        pass


def init_ray(**kwargs: Any) -> None:
    """Attach to the Ray cluster the job runs on, or start a local one.

    No-op when Ray is already initialised (tests, or a driver that set it up). Otherwise ``ray.init`` connects to
    ``RAY_ADDRESS`` or a running local cluster (``ray job submit`` sets this up), and else starts a local cluster.
    A local cluster starts without the dashboard: no job uses it, and its processes cost seconds of every local
    run's start-up (issue 16: 15-20 s vs 11-12 s for ``ray.init`` on the loaded 2-core machine); a job that needs it
    passes ``include_dashboard`` (the train job: Ray Train asks the State API). For the dashboard, start Ray with
    ``ray start --head`` and run the job against it. A local cluster started here gets its dashboard on a known
    loopback port (:func:`_pin_dashboard`) and :func:`quiet_ray_worker` in every process; once Ray runs, this
    process's stderr drops Ray's C++ lines of :data:`_SILENCED_STDERR_LINES`.
    """
    import ray

    quiet_frameworks()
    if ray.is_initialized():
        return
    kwargs.setdefault("log_to_driver", True)  # the workers' progress lines (training steps) are the job's log
    kwargs.setdefault("include_dashboard", False)  # only used when ray.init starts a cluster
    if _starts_local_cluster():
        if kwargs["include_dashboard"] is not False:
            _pin_dashboard(kwargs)
        # Every process of the cluster applies quiet_ray_worker (Ray's actors log where no job code runs). Only for
        # a cluster this job starts: a submitted job's runtime_env is its submitter's.
        runtime_env = dict(kwargs.get("runtime_env") or {})
        runtime_env.setdefault("worker_process_setup_hook", f"{__name__}.quiet_ray_worker")
        kwargs["runtime_env"] = runtime_env
    started = time.perf_counter()
    ray.init(**kwargs)
    if os.environ.get("HMHI_LOG_LEVEL", "").upper() != "DEBUG":
        _StderrLineFilter.install()  # after ray.init: the cluster's own processes keep the real stderr
    res = ray.cluster_resources()
    log.info(
        "Ray: %d CPUs, %d GPUs, %d nodes (ray.init %.1f s)",
        res.get("CPU", 0),
        res.get("GPU", 0),
        len(ray.nodes()),
        time.perf_counter() - started,
    )


def _starts_local_cluster() -> bool:
    """True when ``ray.init()`` will start a new local cluster (no ``RAY_ADDRESS``, no ``ray start`` cluster):
    Ray's own test of it."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # another Ray version: assume a cluster is given, and change nothing
        return False
    return canonicalize_bootstrap_address(None) is None  # type: ignore[arg-type]  # None: "find one", as ray.init


def _pin_dashboard(kwargs: dict[str, Any]) -> None:
    """Give a local cluster's dashboard a known loopback port and tell the cluster's processes where it is.

    Ray Train's placement-group cleaner (an actor) asks the dashboard's State API every second about the training
    controller; without an address it looks for "the" local Ray, and when another Ray runs on the machine (other
    users, tests) it fails with a 30-line "Found multiple active Ray instances" traceback. The cluster's processes
    inherit ``RAY_API_SERVER_ADDRESS`` from this one at start-up, which Ray's State API reads first.
    """
    if os.environ.get("RAY_API_SERVER_ADDRESS"):
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kwargs.setdefault("dashboard_host", "127.0.0.1")
    kwargs.setdefault("dashboard_port", port)
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://{kwargs['dashboard_host']}:{kwargs['dashboard_port']}"
