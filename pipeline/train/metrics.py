"""Run-directory metric files: a CSV and TensorBoard event files, written through the storage layer.

Both live under ``<run>/logs/`` in the run storage (local or S3). TensorBoard writes to a local scratch directory
and each flush uploads the event files atomically, so nothing assumes the run directory is a local disk.
On resume, CSV rows after the resumed step are dropped first, so a restarted run neither loses nor duplicates
rows. (TensorBoard event files are append-only; a restarted attempt starts a new event file.)
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import shutil
import tempfile

from pipeline.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["MetricsWriter", "CSV_COLUMNS", "read_metrics_csv"]

CSV_REL = "logs/metrics.csv"
TB_REL = "logs/tensorboard"
CSV_COLUMNS = (
    "step", "epoch", "loss", "loss_focal", "loss_bce", "loss_dice", "lr", "grad_norm", "clips_per_s",
    "clips_per_s_per_worker", "data_wait_frac", "val_J_mean", "val_F_mean", "val_JF_mean", "val_sequences",
    "wall_time",
)


def read_metrics_csv(run: Storage) -> list[dict[str, str]]:
    """Rows of ``logs/metrics.csv`` in ``run`` (empty if absent)."""
    if not run.exists(CSV_REL):
        return []
    return list(csv.DictReader(io.StringIO(run.read_text(CSV_REL))))


class MetricsWriter:
    """Appends metric rows to the run's CSV and TensorBoard files (rank 0 only)."""

    def __init__(self, run: Storage, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.rows = [r for r in read_metrics_csv(run) if int(r["step"]) <= resume_step]
        self._tb_dir = tempfile.mkdtemp(prefix="hmhi-tb-")
        self.tb = SummaryWriter(self._tb_dir)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        row = {k: "" for k in CSV_COLUMNS}
        for key, value in metrics.items():
            if key in row and value is not None:
                if key == "wall_time":
                    row[key] = f"{value:.3f}"
                else:
                    row[key] = f"{value:.6g}" if isinstance(value, float) else str(value)
            if isinstance(value, (int, float)) and key != "step" and math.isfinite(float(value)):
                self.tb.add_scalar(key.replace("val_", "val/").replace("loss_", "loss/"), float(value), step)
        row["step"] = str(step)
        # One row per step: a validation result at a logged step merges into that row.
        if self.rows and self.rows[-1]["step"] == str(step):
            merged = dict(self.rows[-1])
            merged.update({k: v for k, v in row.items() if v != ""})
            self.rows[-1] = merged
        else:
            self.rows.append(row)
        self.flush()

    def flush(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
        self.run.write_text(CSV_REL, buf.getvalue())
        self.tb.flush()
        self._upload_tensorboard()

    def close(self) -> None:
        self.tb.close()
        self._upload_tensorboard()
        shutil.rmtree(self._tb_dir, ignore_errors=True)

    def _upload_tensorboard(self) -> None:
        for name in sorted(os.listdir(self._tb_dir)):
            self.run.upload_file(os.path.join(self._tb_dir, name), f"{TB_REL}/{name}")
