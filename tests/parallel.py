"""``make test``: the whole suite in two pytest processes side by side.

Why two: about half of the suite's time is spent waiting, not computing — the fault tests wait out lease TTLs,
paused processes, a slow store and retry back-offs, and the two-node rehearsal waits for `ray start` and its
jobs — while the rest (jobs, model, units) keeps the CPUs busy. Run one after the other they leave a third of
the 2-core machine idle; side by side the waiting half runs in the computing half's idle time (19:45 -> 14:25 on
the 2-core Intel machine, then ~90% busy: from there only less work makes the suite faster, bench/RESULTS.md). A
third group (the unit tests apart from the jobs' tests, one torch thread) was measured and not kept: 21:50 against
22:14 back to back, within the machine's noise. Both groups run with one torch thread and OpenMP threads that sleep
rather than spin (``QUIET_OPENMP``), and two of the jobs' tests join the waiting group so that the two end together
(14:53 -> 12:27 and 18:47 -> 15:20 back to back, bench/RESULTS.md).

Each process gets a temp dir of its own (``TMPDIR``): its pytest ``tmp_path``s, its Ray cluster's session folder
(Ray finds "the" local cluster through files under the temp dir, so no group attaches to another's), and
the scratch folders the tests count. Each starts its own moto server and Ray cluster on free loopback ports
(tests/conftest.py). The temp dirs are removed after a passing run and kept, with their path printed, after a
failing one (nothing to keep where a group selected no test).

    python -m tests.parallel [pytest options]          # all groups (what make test runs)
    python -m tests.parallel tests/jobs/test_train.py  # test paths given: one pytest process runs just those
    python -m tests.parallel --fast [pytest options]   # make test-fast: the unit tests, in two groups as well

``--fast`` splits the unit tests in two groups for the same reason: in one process they kept 1.1 of the 2 cores
busy (pytest is one thread, torch's small ops barely two). The network's tests beside the rest, each group with one
torch thread, took 52 s where one process took 118 s, back to back in a slow hour (92 instead of 132 CPU-s).

Each group keeps its own pytest cache (``.pytest_cache/<group>``), so ``make test PYTEST_ARGS=--lf`` reruns each
group's last failures. Every output line carries its group's name, and each group ends with pytest's own summary.
The run ends with a recap of the groups (their final lines and every FAILED or ERROR line), so the last lines of
the output, all a CI log may keep, say what failed in any group.
The exit status is pytest's: the first failing group's, else 0 (5, "no tests collected", only when no group ran a
test, as with a ``-k`` that matches nothing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

WAITING = (
    "tests/faults",
    "tests/infra/test_rehearsal.py",
    # Two of the jobs' tests as well, so that the groups end together: without them the waiting group ended two
    # minutes before the other, leaving a core idle (11:13 against 13:16).
    "tests/jobs/test_metrics_endpoint.py",
    "tests/jobs/test_segment_official.py",
)
"""The tests that mostly wait (see the module docstring) and two that even the groups out; everything else under
tests/ is the other group."""
NO_TESTS_COLLECTED = 5
"""pytest's exit status when nothing was selected."""
_FINAL_LINE = re.compile(
    r"(no tests ran|\d+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b.*) in [\d.]+s.*"
)


FAST_SELECTION = ("-m", "not integration and not slow", "--ignore=tests/jobs", "--ignore=tests/infra")
"""``make test-fast``'s tests: no integration test (no Ray cluster, no S3 server), nothing marked slow; tests/jobs and
tests/infra hold integration tests only and are not even collected (that spares importing their modules)."""
FAST_MODEL = ("tests/model", "tests/faults")
"""The fast tests that run the network (and the lease's local units): about half of test-fast's time."""
QUIET_OPENMP = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
"""For every group (and the Ray clusters and jobs it starts). One torch thread: with torch's default (a thread per
core) two busy groups on two cores spin on each other (test-fast measured 40% more CPU time, and the network's group
twice as slow). Passive waiting: the model actors set their own thread count from their CPUs (2 for 1.6 CPUs), and
libgomp's threads spin at every barrier before they sleep, burning the core the other group needs; with
``PASSIVE`` they sleep at once. Four job test files in two processes side by side, back to back: 432 -> 379 and
408 -> 330 CPU-s, 238 -> 208 and 222 -> 182 s (bench/RESULTS.md). Only the suite's setting: a model actor on
a machine of its own steps faster when its threads spin (pipeline/segment/runner.py)."""


def suite_groups(fast: bool = False) -> dict[str, list[str]]:
    """Each group's pytest paths and options: the whole suite's two, or (``fast``) test-fast's two."""
    if fast:
        return {
            "model": [*FAST_MODEL, *FAST_SELECTION],
            "units": ["tests", *(f"--ignore={path}" for path in FAST_MODEL), *FAST_SELECTION],
        }
    return {
        "waits": list(WAITING),
        "computes": ["tests", *(f"--ignore={path}" for path in WAITING)],
    }


def names_tests(args: list[str]) -> bool:
    """Whether the user's pytest arguments name tests to run (a path or a node id under the repository)."""
    return any(not a.startswith("-") and (REPO_ROOT / a.split("::")[0]).exists() for a in args)


def is_recap_line(line: str) -> bool:
    """Whether a line of pytest's output belongs in the recap: a FAILED or ERROR line of its short test summary,
    or its final line (``=== 3 failed, 497 passed in 862.36s (0:14:22) ===``, without the ``=`` under ``-q``)."""
    text = line.strip()
    return text.startswith(("FAILED ", "ERROR ")) or _FINAL_LINE.fullmatch(text.strip("= ")) is not None


def _pump(name: str, stream, lock: threading.Lock, recap: list[str]) -> None:
    for line in stream:
        if is_recap_line(line):
            recap.append(line.rstrip("\n"))
        with lock:
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()


def run_groups(groups: dict[str, list[str]], pytest_args: list[str]) -> int:
    """Run one pytest process per group at once, each with its paths and ``QUIET_OPENMP``; return the first failing
    group's exit status, else 0."""
    lock = threading.Lock()
    running = []
    for name, paths in groups.items():
        # short: Ray's Unix socket paths under it must stay below ~107 bytes
        tmp = tempfile.mkdtemp(prefix=f"hmhi-{name[0]}-", dir="/tmp")
        env = dict(os.environ, TMPDIR=tmp, PYTHONUNBUFFERED="1", **QUIET_OPENMP)
        # a cache of its own, so that the two do not overwrite each other's last failures (``--lf`` reruns them)
        cache = f"--override-ini=cache_dir=.pytest_cache/{name}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", cache, *paths, *pytest_args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        recap: list[str] = []
        pump = threading.Thread(target=_pump, args=(name, proc.stdout, lock, recap), daemon=True)
        pump.start()
        running.append((name, proc, pump, tmp, recap))
    statuses = []
    ends = []
    for name, proc, pump, tmp, recap in running:
        status = proc.wait()
        pump.join()
        statuses.append(status)
        ends.append(f"[{name}] exit status {status}")
        ends.extend(f"[{name}] {line}" for line in recap)
        if status in (0, NO_TESTS_COLLECTED):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            ends.append(f"[{name}] its temp dir (pytest's tmp_paths, Ray's logs) is kept: {tmp}")
    print("recap of the groups:", *ends, sep="\n")
    return combined_status(statuses)


def combined_status(statuses: list[int]) -> int:
    """The suite's exit status from its groups' pytest statuses.

    pytest's 5 ("no tests collected") in one group is no failure when another ran tests (a ``-k`` that selects
    tests of one group only).
    """
    failed = [s for s in statuses if s not in (0, NO_TESTS_COLLECTED)]
    if failed:
        return failed[0]
    return NO_TESTS_COLLECTED if all(s == NO_TESTS_COLLECTED for s in statuses) else 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fast = "--fast" in args
    args = [a for a in args if a != "--fast"]
    if names_tests(args):
        selection = list(FAST_SELECTION) if fast else []
        return subprocess.call([sys.executable, "-m", "pytest", *selection, *args], cwd=REPO_ROOT)
    return run_groups(suite_groups(fast), args)


if __name__ == "__main__":
    sys.exit(main())
