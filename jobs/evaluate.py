"""Score predicted masks against ground truth with the DAVIS J&F measures.

    python jobs/evaluate.py --pred s3://bucket/run1/masks --gt /data/DAVIS --output s3://bucket/run1/eval
    ray job submit --working-dir . -- python jobs/evaluate.py --pred ... --gt ... --protocol all

Predictions: ``<pred>/<sequence>/<frame>.png``; ground truth: a DAVIS root (``Annotations/480p``), its
``Annotations`` folder, or a root of sequence folders. One Ray task per sequence. Writes to ``--output``:
``per_sequence.csv``, ``per_frame.csv``, ``summary.json`` (also printed), ``jf_per_sequence.png`` and
``report.html`` (the page to open: table, plot, the worst frames of each sequence over the frame images).
The protocol, threshold and evaluated resolution are recorded in every result file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import config_to_dict, parse_job_args, require
from pipeline.evaluation.dataset import SequenceResult, list_frames, resolve_gt_root, score_sequence
from pipeline.evaluation.metrics import METRIC_KEYS, aggregate_results
from pipeline.evaluation.report import resolve_frames_root, write_report
from pipeline.jobs import JobSummary, init_ray, run_job_main, setup_logging
from pipeline.storage import Storage, open_storage

log = logging.getLogger("jobs.evaluate")

CSV_COLUMNS = ("sequence", *METRIC_KEYS)

# hmhi_official keeps stretched soft-map values > 128 (docs/evaluation.md §6); on a 0-255 scale that
# is value / 255 > 128 / 255. Binary masks (palette or 0/255) are unaffected.
HMHI_OFFICIAL_THRESHOLD = 128 / 255


@dataclass
class EvaluateConfig:
    pred: str = ""
    """URL or path of the predictions: <pred>/<sequence>/<frame>.png (e.g. segment's <output>/masks)."""
    gt: str = ""
    """URL or path of the ground truth: a DAVIS root (Annotations/480p/<sequence>/), or a root of sequence folders."""
    output: str = ""
    """URL or path for the result files; empty: print the summary only."""
    protocol: Literal["davis2016", "all", "hmhi_official"] = "davis2016"
    """Frames scored: davis2016 drops the first and last frame, all keeps every frame, hmhi_official
    averages every frame but takes recall/decay over the inner frames (docs/evaluation.md §6)."""
    threshold: float | None = None
    """Soft (greyscale) predictions: foreground where value/255 > threshold. None: any non-zero pixel
    (hmhi_official: > 128 of 255)."""
    bound_th: float = 0.008
    """Boundary tolerance: a fraction of the image diagonal (< 1) or pixels (>= 1)."""
    sequences: list[str] = field(default_factory=list)
    """Only these sequences (default: every ground-truth sequence)."""
    sequence_list: str = ""
    """A text file (path/URL, or relative to --gt) with one sequence per line, e.g. ImageSets/2016/val.txt."""
    plot: bool = True
    """Write the per-sequence J&F bar plot."""
    frames: str = ""
    """URL or path of the frame images (<sequence>/<frame>.jpg) drawn under the masks in report.html; empty: the
    DAVIS root's JPEGImages/480p when --gt is a DAVIS layout, else the masks are drawn over black."""

    def __post_init__(self):
        require(bool(self.pred), "pred", self.pred, "is required (URL or path of the predicted masks)")
        require(bool(self.gt), "gt", self.gt, "is required (URL or path of the ground truth)")
        require(self.threshold is None or 0.0 <= self.threshold < 1.0, "threshold", self.threshold,
                "must be in [0, 1) or null")  # fmt: skip
        require(self.bound_th > 0, "bound_th", self.bound_th, "must be > 0")

    @property
    def effective_threshold(self) -> float | None:
        if self.threshold is None and self.protocol == "hmhi_official":
            return HMHI_OFFICIAL_THRESHOLD
        return self.threshold


def _read_sequence_list(cfg: EvaluateConfig, gt: Storage) -> list[str]:
    names = list(cfg.sequences)
    if cfg.sequence_list:
        source = cfg.sequence_list
        if "://" not in source and not source.startswith("/") and gt.exists(source):
            text = gt.read_text(source)
        else:
            directory, _, leaf = source.rstrip("/").rpartition("/")
            text = open_storage(directory or ".").read_text(leaf)
        names += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return list(dict.fromkeys(names))


def _json_safe(value):
    """NaN (a sequence too short for the protocol) becomes null, so the JSON stays standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: float) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else repr(float(value))


def _per_sequence_csv(results: list[SequenceResult]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for result in results:
        writer.writerow([result.sequence, *(_fmt(result.metrics[key]) for key in METRIC_KEYS)])
    return buffer.getvalue().encode()


def _per_frame_csv(results: list[SequenceResult]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("sequence", "frame", "J", "F", "prediction"))
    for result in results:
        missing, unreadable = set(result.missing), set(result.unreadable)
        for stem, j, f in result.frames:
            status = "missing" if stem in missing else "unreadable" if stem in unreadable else "ok"
            writer.writerow([result.sequence, stem, _fmt(j), _fmt(f), status])
    return buffer.getvalue().encode()


def _plot_png(results: list[SequenceResult], summary: dict, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers or CI
    from matplotlib.figure import Figure

    scored = [r for r in results if not math.isnan(r.metrics["JF_mean"])]
    scored.sort(key=lambda r: r.metrics["JF_mean"], reverse=True)
    figure = Figure(figsize=(max(6.0, 0.3 * len(scored) + 2), 4.5), dpi=100)
    axes = figure.add_subplot()
    names = [r.sequence for r in scored]
    axes.bar(range(len(scored)), [r.metrics["JF_mean"] for r in scored], color="#4c72b0")
    if not math.isnan(summary["JF_mean"]):
        axes.axhline(
            summary["JF_mean"], color="#c44e52", linestyle="--", label=f"mean J&F {summary['JF_mean']:.3f}"
        )
        axes.legend(loc="lower left")
    axes.set_xticks(range(len(scored)), names, rotation=90, fontsize=7)
    axes.set_ylim(0, 1)
    axes.set_ylabel("J&F mean")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate and write the result files; returns the summary dict (also printed as JSON)."""
    import ray

    job = JobSummary("evaluate")
    pred = open_storage(cfg.pred)
    gt = resolve_gt_root(open_storage(cfg.gt))
    output = open_storage(cfg.output) if cfg.output else None
    threshold = cfg.effective_threshold

    gt_frames = list_frames(gt)
    wanted = _read_sequence_list(cfg, open_storage(cfg.gt))
    if wanted:
        for name in wanted:
            if name not in gt_frames:
                job.rejected("sequence", name, f"no ground-truth frames in {gt.join(name)}")
        gt_frames = {name: gt_frames[name] for name in wanted if name in gt_frames}
    if not gt_frames:
        raise SystemExit(f"evaluate: no ground-truth sequences (<sequence>/<frame>.png) found in {gt.url}")
    pred_frames = list_frames(pred)
    if not set(pred_frames) & set(gt_frames) and pred.isdir("masks"):
        # The output root of jobs/segment.py was given: its masks are under masks/.
        pred = pred.child("masks")
        pred_frames = list_frames(pred)
    extra = sorted(set(pred_frames) - set(gt_frames))
    if extra:
        log.warning(
            "%d prediction folders have no ground truth and are ignored: %s",
            len(extra),
            ", ".join(extra[:10]),
        )
    log.info("evaluating %d sequences: pred %s, gt %s, protocol %s, threshold %s",
             len(gt_frames), pred.url, gt.url, cfg.protocol, threshold)  # fmt: skip

    init_ray()
    score_task = ray.remote(num_cpus=1)(score_sequence)
    pending = [
        score_task.remote(
            seq, gt, frames, pred, pred_frames.get(seq, {}), cfg.protocol, threshold, cfg.bound_th
        )
        for seq, frames in gt_frames.items()
    ]
    results: list[SequenceResult] = sorted(ray.get(pending), key=lambda r: r.sequence)

    scored: list[SequenceResult] = []
    for result in results:
        for message in result.warnings:
            log.warning("%s", message)
        if result.error:
            job.rejected("sequence", result.sequence, result.error)
            continue
        scored.append(result)
        if result.metrics["n_frames"] == 0:
            job.skipped(
                "sequence", result.sequence, f"too few frames ({len(result.frames)}) for {cfg.protocol}"
            )
        else:
            job.done("sequence", result.sequence, frames=result.metrics["n_frames"])
        job.add("missing_prediction_frames", len(result.missing))
        job.add("unreadable_prediction_frames", len(result.unreadable))
        job.add("resized_prediction_frames", result.resized)

    aggregate = aggregate_results({r.sequence: r.metrics for r in scored})
    resolutions = sorted({f"{r.resolution[1]}x{r.resolution[0]}" for r in scored if r.resolution})
    summary = {
        **{key: aggregate[key] for key in METRIC_KEYS},
        "n_sequences": aggregate["n_sequences"],
        "n_frames": aggregate["n_frames"],
        "protocol": cfg.protocol,
        "threshold": threshold,
        "foreground": "any non-zero pixel"
        if threshold is None
        else f"value/255 > {threshold:.6g} (palette: index != 0)",
        "bound_th": cfg.bound_th,
        "resolution": "ground truth (predictions resized to it, nearest neighbour)",
        "gt_resolutions": resolutions,
        "pred": pred.url,
        "gt": gt.url,
        "excluded": aggregate["excluded"],
        "missing_prediction_frames": {r.sequence: r.missing for r in scored if r.missing},
        "unreadable_prediction_frames": {r.sequence: r.unreadable for r in scored if r.unreadable},
        "rejected": {r.sequence: r.error for r in results if r.error},
        "config": config_to_dict(cfg),
    }
    plot_png = None
    if output is not None:
        output.write_bytes("per_sequence.csv", _per_sequence_csv(scored))
        output.write_bytes("per_frame.csv", _per_frame_csv(scored))
        if cfg.plot:
            title = (f"J&F per sequence, protocol {cfg.protocol}, "
                     f"threshold {threshold if threshold is not None else 'non-zero'}, {', '.join(resolutions)}")  # fmt: skip
            plot_png = _plot_png(scored, aggregate, title)
            output.write_bytes("jf_per_sequence.png", plot_png)
        summary["report"] = write_report(
            output, scored, summary, gt=gt, gt_frames=gt_frames, pred=pred, pred_frames=pred_frames,
            frames=resolve_frames_root(cfg.gt, cfg.frames), plot_png=plot_png, rejected=summary["rejected"])
        summary["job"] = job.to_dict()
        output.write_json("summary.json", _json_safe(summary))
    printable = {k: v for k, v in summary.items() if k not in ("config", "job")}
    print(json.dumps(_json_safe(printable), indent=2, default=str), flush=True)
    job.finish()
    return summary


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    cfg = parse_job_args(
        EvaluateConfig,
        argv,
        description=__doc__,
        flags={
            "--pred": "pred",
            "--gt": "gt",
            "--output": "output",
            "--protocol": "protocol",
            "--threshold": "threshold",
            "--sequences": "sequences",
            "--frames": "frames",
        },
    )
    return run(cfg)


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))
