"""Processes for the lease race and pause tests (tests/faults/test_lease.py): real processes, real lease objects.

- :func:`race_worker` (a ``multiprocessing`` spawn target): for each trial, wait at a barrier with the other worker,
  try to take the lease of that trial's output, report, wait until both have tried, release.
- ``python -m tests.faults.lease_workers commit ROOT TTL TAG``: take the lease of ROOT and commit
  ``commits/<TAG>-<n>.json`` through the fenced storage every few milliseconds until the lease is lost (exit 3).
- ``... driver ROOT TTL FENCE_FILE``: take the lease of ROOT, write the fenced storage pickled (what a Ray actor
  receives) to FENCE_FILE, then only keep the lease (renewing) until killed.
- ``... writer FENCE_FILE TAG``: commit through the unpickled fenced storage every few milliseconds until the
  fence fails (exit 3): a Ray actor writing for a driver.

The committing processes print one line per event (``ready``, ``lost <reason>``) on stdout.
"""

from __future__ import annotations

import os
import pickle
import sys
import time

from pipeline.lease import LeaseHeldError, OutputLease
from pipeline.storage import Storage, StorageError, open_storage

COMMIT_PAUSE_S = 0.003
"""Pause between two commits."""
JOB = "lease-test"


def race_worker(roots: list[str], ttl_s: float, start, tried, results) -> None:
    """Trial by trial: start together (``start`` barrier), try the lease, report ``(trial, won)``, wait for the
    other worker (``tried``), release."""
    for trial, root in enumerate(roots):
        start.wait()
        lease = OutputLease(root, job=JOB, ttl_s=ttl_s, clean=False)
        try:
            lease.acquire()
            won: bool | str = True
        except LeaseHeldError:
            won = False
        except Exception as err:  # reported, so that the test fails with it rather than waiting at a barrier
            won = f"{type(err).__name__}: {err}"
        results.put((trial, won, lease.info.run_id if won is True else None))
        tried.wait()
        if won is True:
            lease.release()


def _commit_loop(storage: Storage, tag: str) -> int:
    print("ready", flush=True)
    n = 0
    while True:
        try:
            storage.write_json(f"commits/{tag}-{n:06d}.json", {"tag": tag, "n": n, "at": time.time()})
        except StorageError as err:  # LeaseLostError, or the upload/temporary file collected by the taker
            print(f"lost {type(err).__name__}: {err}", flush=True)
            return 3
        n += 1
        time.sleep(COMMIT_PAUSE_S)


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "commit":
        root, ttl_s, tag = argv[1], float(argv[2]), argv[3]
        lease = OutputLease(root, job=JOB, ttl_s=ttl_s).acquire()
        return _commit_loop(open_storage(root).fenced(lease), tag)
    if mode == "driver":
        root, ttl_s, fence_file = argv[1], float(argv[2]), argv[3]
        lease = OutputLease(root, job=JOB, ttl_s=ttl_s).acquire()
        with open(fence_file + ".part", "wb") as f:
            pickle.dump(open_storage(root).fenced(lease), f)
        os.replace(fence_file + ".part", fence_file)
        print("ready", flush=True)
        while True:
            time.sleep(1)
    if mode == "writer":
        with open(argv[1], "rb") as f:
            storage = pickle.load(f)
        return _commit_loop(storage, argv[2])
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
