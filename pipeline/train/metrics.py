"""Run-directory metric files: a CSV and TensorBoard event files, written through the storage layer.

Both live under ``<run>/logs/`` in the run storage (local or S3). TensorBoard writes to a local scratch directory
and the files are uploaded atomically, so nothing assumes the run directory is a local disk.
On resume, CSV rows after the resumed step are dropped first, so a restarted run neither loses nor duplicates
rows. (TensorBoard event files are append-only; a restarted attempt starts a new event file.)

Uploads are asynchronous and best-effort: ``write`` only records the row, a background thread uploads the latest
state, and a failed upload (a storage blip) logs a warning and is retried with the next rows (with a back-off),
so metrics never stall or kill training. The checkpoints, not these files, are what a resume relies on.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import shutil
import tempfile
import threading

from pipeline.retry import Backoff, Retrying, RetryPolicy
from pipeline.run_layout import METRICS_CSV, TENSORBOARD_DIR
from pipeline.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["MetricsWriter", "CSV_COLUMNS", "read_metrics_csv"]

CSV_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "loss_focal",
    "loss_bce",
    "loss_dice",
    "lr",
    "grad_norm",
    "clips_per_s",
    "clips_per_s_per_worker",
    "data_wait_frac",
    "val_J_mean",
    "val_F_mean",
    "val_JF_mean",
    "val_sequences",
    "wall_time",
)


def read_metrics_csv(run: Storage) -> list[dict[str, str]]:
    """Rows of ``logs/metrics.csv`` in ``run`` (empty if absent)."""
    if not run.exists(METRICS_CSV):
        return []
    return list(csv.DictReader(io.StringIO(run.read_text(METRICS_CSV))))


class MetricsWriter:
    """Appends metric rows to the run's CSV and TensorBoard files (rank 0 only); uploads in the background."""

    UPLOAD_RETRY = RetryPolicy(Backoff(first_s=1.0, max_s=60.0))
    """Failed background uploads: retried without limit (with the rows written meanwhile), after a jittered wait
    of up to 1 s, doubling to 60 s."""

    def __init__(self, run: Storage, resume_step: int, upload_retry: RetryPolicy = UPLOAD_RETRY):
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.rows = [r for r in read_metrics_csv(run) if int(r["step"]) <= resume_step]
        self._tb_dir = tempfile.mkdtemp(prefix="hmhi-tb-")
        self.tb = SummaryWriter(self._tb_dir)
        self.failed_uploads = 0
        """Uploads that failed (each was retried with later rows)."""
        self._lock = threading.Lock()  # rows and the TensorBoard writer, shared with the upload thread
        self._upload_lock = threading.Lock()  # one upload at a time, so an older snapshot never lands last
        self._pending = threading.Event()
        self._closing = threading.Event()
        self._upload_retry = upload_retry
        self._thread = threading.Thread(target=self._upload_loop, name="metrics-upload", daemon=True)
        self._thread.start()

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Record one row (merged with a row of the same step) and schedule an upload; never blocks on storage."""
        row = {k: "" for k in CSV_COLUMNS}
        with self._lock:
            for key, value in metrics.items():
                if key in row and value is not None:
                    if key == "wall_time":
                        row[key] = f"{value:.3f}"
                    else:
                        row[key] = f"{value:.6g}" if isinstance(value, float) else str(value)
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(float(value)):
                    self.tb.add_scalar(
                        key.replace("val_", "val/").replace("loss_", "loss/"), float(value), step
                    )
            row["step"] = str(step)
            # One row per step: a validation result at a logged step merges into that row.
            if self.rows and self.rows[-1]["step"] == str(step):
                merged = dict(self.rows[-1])
                merged.update({k: v for k, v in row.items() if v != ""})
                self.rows[-1] = merged
            else:
                self.rows.append(row)
        self._pending.set()

    def flush(self) -> bool:
        """Upload the current state now (in the calling thread); False (and a warning) if the upload failed.

        The training loop calls it at checkpoints, so a restart from a checkpoint finds the rows up to it.
        """
        try:
            self._upload()
            return True
        except Exception as e:  # any storage failure: metrics are best-effort, training goes on
            log.warning("%s failed (%s: %s); retrying with the next rows", self._what(), type(e).__name__, e)
            return False

    def _what(self) -> str:
        return f"metrics upload to {self.run.join('logs')}"

    def _upload(self) -> None:
        """Upload the CSV and the TensorBoard files as they are now; raises what the storage raised."""
        with self._upload_lock:
            with self._lock:
                buf = io.StringIO()
                writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
                writer.writeheader()
                for r in self.rows:
                    writer.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
                self.tb.flush()
                # A snapshot of the event files: the TensorBoard writer may append while they upload.
                snapshot = tempfile.mkdtemp(prefix="hmhi-tb-up-")
                for name in sorted(os.listdir(self._tb_dir)):
                    shutil.copyfile(os.path.join(self._tb_dir, name), os.path.join(snapshot, name))
            try:
                self.run.write_text(METRICS_CSV, buf.getvalue())
                for name in sorted(os.listdir(snapshot)):
                    self.run.upload_file(os.path.join(snapshot, name), f"{TENSORBOARD_DIR}/{name}")
            except Exception:
                self.failed_uploads += 1
                raise
            finally:
                shutil.rmtree(snapshot, ignore_errors=True)

    def _upload_loop(self) -> None:
        # The wait after a failure ends early when close() is called (close makes the last attempt).
        retrying = Retrying(
            self._upload_retry,
            self._what,
            action="retrying with the next rows",
            sleep=self._closing.wait,
            logger=log,
        )
        while not self._closing.is_set():
            if not self._pending.wait(timeout=0.5):
                continue
            self._pending.clear()
            try:
                self._upload()
                retrying.succeeded()
            except Exception as e:  # any storage failure: metrics are best-effort, training goes on
                self._pending.set()  # the rows are still to be uploaded
                retrying.failed(e)

    def close(self) -> None:
        """Stop the upload thread and make one last upload attempt (a failure is logged, not raised)."""
        self._closing.set()
        self._thread.join(timeout=60)
        with self._lock:
            self.tb.close()
        self.flush()
        shutil.rmtree(self._tb_dir, ignore_errors=True)
