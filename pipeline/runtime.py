"""The process runtime every job shares: one log format, quiet frameworks, and attaching to Ray."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["init_ray", "keep_freed_memory", "quiet_frameworks", "setup_logging"]

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
    :data:`_QUIET_ENV` (environment variables a user may still set explicitly: only unset ones are filled in) and
    Ray Data's progress bars when stderr is not a terminal. ``HMHI_LOG_LEVEL=DEBUG`` keeps everything.
    """
    import warnings

    if os.environ.get("HMHI_LOG_LEVEL", "").upper() == "DEBUG":
        return
    for message, category, module, _reason in _SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    # Ray Train's INFO lines in the training workers ("Moving model to device", and one "Reporting training
    # result" per report and rank that prints every metric) repeat what the job's own step lines say; its warnings
    # and errors stay. The report line comes from a logger named by its file path (logging.getLogger(__file__) in
    # ray/train/v2/_internal/execution/context.py, Ray 2.60), outside "ray.train", so it is named here.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if "ray.train" in sys.modules:  # only where training runs: importing Ray Train costs a second
        try:
            from ray.train.v2._internal.execution import context as train_context
        except ImportError:  # another Ray version: nothing to quiet
            pass
        else:
            logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    if not sys.stderr.isatty():
        try:
            from ray.data import DataContext
        except ImportError:  # Ray Data not installed: nothing to quiet
            return
        with warnings.catch_warnings():
            # Ray 2.60's DataContext() assigns its own deprecated fields while it is built and warns about them.
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        if hasattr(ctx, "enable_operator_progress_bars"):
            ctx.enable_operator_progress_bars = False


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
    if not any(getattr(h, "_hmhi", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
        handler._hmhi = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def init_ray(**kwargs: Any) -> None:
    """Attach to the Ray cluster the job runs on, or start a local one.

    No-op when Ray is already initialised (tests, or a driver that set it up). Otherwise ``ray.init`` connects to
    ``RAY_ADDRESS`` or a running local cluster (``ray job submit`` sets this up), and else starts a local cluster.
    A local cluster starts without the dashboard: no job uses it, and its processes cost seconds of every local
    run's start-up (issue 16: 15-20 s vs 11-12 s for ``ray.init`` on the loaded 2-core machine); a job that needs it
    passes ``include_dashboard`` (the train job: Ray Train asks the State API). For the dashboard, start Ray with
    ``ray start --head`` and run the job against it.
    """
    import ray

    quiet_frameworks()
    if ray.is_initialized():
        return
    kwargs.setdefault("log_to_driver", True)  # the workers' progress lines (training steps) are the job's log
    kwargs.setdefault("include_dashboard", False)  # only used when ray.init starts a cluster
    started = time.perf_counter()
    ray.init(**kwargs)
    res = ray.cluster_resources()
    log.info(
        "Ray: %d CPUs, %d GPUs, %d nodes (ray.init %.1f s)",
        res.get("CPU", 0),
        res.get("GPU", 0),
        len(ray.nodes()),
        time.perf_counter() - started,
    )
