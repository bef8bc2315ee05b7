"""The evaluation job: score predicted masks against ground truth with the DAVIS J and F measures.

One Ray task per sequence (:func:`pipeline.evaluate.dataset.score_sequence`). Writes to ``output``:
``per_sequence.csv``, ``per_frame.csv``, ``jf_per_sequence.png``, ``report.html`` and ``summary.json`` (the
common job summary; the scores are under ``figures``, printed once at the end). The protocol, threshold and
evaluated resolution are recorded in every result file. A ground-truth sequence without any prediction is rejected
(named in the summary, with a warning) and left out of the scores; with predictions for none, nothing is scored,
no result file but the summary is written, and the job fails (exit status 1): a typo in ``--pred`` never looks like
a score of 0.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections import defaultdict
from dataclasses import dataclass

from pipeline.cli import JobSpec
from pipeline.config import config_to_dict
from pipeline.evaluate.config import EvaluateConfig
from pipeline.evaluate.dataset import (
    GroundTruth,
    SequenceResult,
    list_frames,
    read_ground_truth,
    score_sequence,
)
from pipeline.evaluate.report import resolve_frames_root, write_report
from pipeline.ingest.formats import YTOBJ_CLASSES, IngestError
from pipeline.lease import fenced, holds_output_lease
from pipeline.metrics import METRIC_KEYS, aggregate_results
from pipeline.preflight import PreflightError, check_disjoint, check_input, check_output
from pipeline.runtime import init_ray
from pipeline.storage import Storage, absolute_url, open_storage, open_url
from pipeline.summary import JobSummary, ProgressLine

log = logging.getLogger(__name__)

__all__ = ["CSV_COLUMNS", "FLAGS", "JOB", "preflight", "run", "sequence_class"]

CSV_COLUMNS = ("sequence", *METRIC_KEYS)

FLAGS = {
    "--pred": "pred",
    "--gt": "gt",
    "--output": "output",
    "--preset": "preset",
    "--protocol": "protocol",
    "--threshold": "threshold",
    "--sequences": "sequences",
    "--gt-format": "gt_format",
    "--frames": "frames",
}
"""Shortcut flags of ``jobs/evaluate.py`` (field paths of :class:`EvaluateConfig`)."""


def _read_sequence_list(cfg: EvaluateConfig, gt: Storage) -> list[str]:
    names = list(cfg.sequences)
    if cfg.sequence_list:
        source = cfg.sequence_list
        if "://" not in source and not source.startswith("/") and gt.exists(source):
            text = gt.read_text(source)
        else:
            storage, leaf = open_url(source)
            text = storage.read_text(leaf)
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


def sequence_class(sequence: str, categories: dict[str, str]) -> str | None:
    """The YouTube-Objects class of a sequence: the archive's class folder, else the official rule.

    The official evaluation (``utils/val_zvos.py:eval_JF_from_data``) takes the video name up to its first
    '0' (``aeroplane0001`` -> ``aeroplane``); only names that then start with a YouTube-Objects class count.
    """
    if sequence in categories:
        return categories[sequence]
    prefix = sequence.split("0")[0].rstrip("_-")
    return prefix if prefix in YTOBJ_CLASSES else None


def _per_class(scored: list[SequenceResult], categories: dict[str, str]) -> dict[str, dict[str, float]]:
    by_class: dict[str, list[SequenceResult]] = defaultdict(list)
    for result in scored:
        cls = sequence_class(result.sequence, categories)
        if cls is not None and not math.isnan(result.metrics["J_mean"]):
            by_class[cls].append(result)
    out = {}
    for cls in sorted(by_class):
        rows = by_class[cls]
        j = sum(r.metrics["J_mean"] for r in rows) / len(rows)
        f = sum(r.metrics["F_mean"] for r in rows) / len(rows)
        out[cls] = {"J_mean": j, "F_mean": f, "JF_mean": (j + f) / 2, "n_sequences": len(rows)}
    return out


def _prediction_root(cfg: EvaluateConfig, pred: Storage, wanted: set[str]) -> tuple[Storage, dict]:
    """The folder of prediction sequences: ``--pred`` itself, or the ``masks/`` (``probs/`` under the official
    preset) folder of a segment output root."""
    frames = list_frames(pred)
    if set(frames) & wanted:
        return pred, frames
    for sub in ("probs", "masks") if cfg.official else ("masks",):
        if pred.isdir(sub):
            child = pred.child(sub)
            return child, list_frames(child)
    return pred, frames


@holds_output_lease("evaluate", output=lambda cfg: cfg.output)  # one run per output; none without --output
def run(cfg: EvaluateConfig) -> dict:
    """Evaluate and write the result files; returns the job summary (scores under ``figures``).

    Resolve the inputs (ground truth, the sequences asked for, the predictions) -> score every sequence in a Ray
    task -> aggregate -> write the CSVs, the plot and the report.
    """
    job = JobSummary("evaluate", config=config_to_dict(cfg))
    output = fenced(open_storage(cfg.output)) if cfg.output else None  # every write checks this run's lease
    threshold = None if cfg.official else cfg.effective_threshold
    inputs = _resolve_inputs(cfg, job, threshold)
    results = _score_sequences(cfg, inputs, threshold) if inputs.gt_frames else []
    scored = _tally(cfg, results, job)
    if not scored:  # nothing to score (no predictions at all): no score, no report; the summary says why
        log.error(
            "no sequence scored: no predictions under %s for any ground-truth sequence", inputs.pred.url
        )
        return job.finish(storage=output, rel="summary.json")
    aggregate = aggregate_results({r.sequence: r.metrics for r in scored})
    scores = _scores(cfg, inputs, scored, aggregate, threshold)
    for key, value in _json_safe(scores).items():
        job.set(key, value)
    if output is not None:
        job.set("report", _write_results(cfg, output, inputs, results, scored, scores, aggregate, threshold))
    return job.finish(storage=output, rel="summary.json")


def preflight(cfg: EvaluateConfig) -> None:
    """Before Ray and before any write: the predictions and the ground truth exist (a missing ``--pred`` is a user
    error, not a score of 0), the ground truth holds sequences, the sequence list and frames exist, and the output
    can be written and is none of the inputs."""
    check_input("pred", cfg.pred)
    gt = check_input("gt", cfg.gt)
    if cfg.frames:
        check_input("frames", cfg.frames)
    if cfg.sequence_list:
        relative = "://" not in cfg.sequence_list and not cfg.sequence_list.startswith("/")
        beside_gt = relative and gt.exists(cfg.sequence_list)
        cfg.sequence_list = gt.join(cfg.sequence_list) if beside_gt else absolute_url(cfg.sequence_list)
        check_input("sequence_list", cfg.sequence_list, folder=False)
    if cfg.output:
        check_output("output", cfg.output)
        check_disjoint("output", cfg.output, {"pred": cfg.pred, "gt": cfg.gt, "frames": cfg.frames})
    truth = read_ground_truth(gt, cfg.gt_format, tuple(cfg.gt_splits), cfg.davis_resolution)
    if not truth.frames:
        raise PreflightError(
            f"gt {gt.url}: no ground-truth sequences (read as {truth.format}; expected <sequence>/<frame>.png, "
            "a DAVIS root or a dataset archive)"
        )


@dataclass
class _Inputs:
    """What is scored against what."""

    truth: GroundTruth
    """The ground truth as read (its root, format and categories)."""
    gt_frames: dict[str, dict[str, str]]
    """The sequences scored (those asked for that have ground truth): {sequence: {frame stem: path}}."""
    pred: Storage
    """The folder of prediction sequences."""
    pred_frames: dict[str, dict[str, str]]
    """{sequence: {frame stem: path}} of the predictions."""


def _resolve_inputs(cfg: EvaluateConfig, job: JobSummary, threshold: float | None) -> _Inputs:
    """Read the ground truth, keep the sequences asked for (rejecting those without ground truth) and find the
    predictions; raises ``IngestError`` when there is no ground truth to score."""
    gt_storage = open_storage(cfg.gt)
    truth = read_ground_truth(gt_storage, cfg.gt_format, tuple(cfg.gt_splits), cfg.davis_resolution)
    gt, gt_frames = truth.root, truth.frames
    wanted = _read_sequence_list(cfg, gt_storage)
    if wanted:
        for name in wanted:
            if name not in gt_frames:
                job.rejected("sequence", name, f"no ground-truth frames in {gt.join(name)}")
        gt_frames = {name: gt_frames[name] for name in wanted if name in gt_frames}
    if not gt_frames:
        raise IngestError(
            f"evaluate: no ground-truth sequences found in {gt.url} (read as {truth.format}; "
            "expected <sequence>/<frame>.png, a DAVIS root or a dataset archive)"
        )
    pred, pred_frames = _prediction_root(cfg, open_storage(cfg.pred), set(gt_frames))
    extra = sorted(set(pred_frames) - set(gt_frames))
    for name in [s for s in gt_frames if not pred_frames.get(s)]:
        job.rejected("sequence", name, f"no predictions in {pred.join(name)}")
    gt_frames = {name: frames for name, frames in gt_frames.items() if pred_frames.get(name)}
    if extra:
        log.warning(
            "%d prediction folders have no ground truth and are ignored: %s",
            len(extra),
            ", ".join(extra[:10]),
        )
    log.info(
        "evaluating %d sequences: pred %s, gt %s (%s), preset %s, protocol %s, threshold %s",
        len(gt_frames),
        pred.url,
        gt.url,
        truth.format,
        cfg.preset,
        cfg.protocol,
        threshold,
    )
    return _Inputs(truth, gt_frames, pred, pred_frames)


def _score_sequences(cfg: EvaluateConfig, inputs: _Inputs, threshold: float | None) -> list[SequenceResult]:
    """Every sequence scored in its own Ray task; the results sorted by sequence name."""
    import ray

    init_ray()
    score_task = ray.remote(num_cpus=1)(score_sequence)
    pending = [
        score_task.remote(
            seq,
            inputs.truth.root,
            frames,
            inputs.pred,
            inputs.pred_frames.get(seq, {}),
            cfg.protocol,
            threshold,
            cfg.bound_th,
            cfg.official,
        )
        for seq, frames in inputs.gt_frames.items()
    ]
    progress, results, rejected = ProgressLine("evaluate", "sequence", len(pending)), [], 0
    while pending:  # as they finish, for the progress line
        ready, pending = ray.wait(pending, num_returns=1)
        results.append(ray.get(ready[0]))
        rejected += bool(results[-1].error)
        progress.update(len(results), rejected)
    return sorted(results, key=lambda r: r.sequence)


def _tally(cfg: EvaluateConfig, results: list[SequenceResult], job: JobSummary) -> list[SequenceResult]:
    """Count every sequence in the summary (done, skipped as too short, rejected) -> the scored ones."""
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
            job.done("sequence", result.sequence)  # its frames count in the scores' n_frames
        job.add("n_missing_prediction_frames", len(result.missing))
        job.add("n_unreadable_prediction_frames", len(result.unreadable))
        job.add("n_resized_prediction_frames", result.resized)
    return scored


def _scores(
    cfg: EvaluateConfig,
    inputs: _Inputs,
    scored: list[SequenceResult],
    aggregate: dict,
    threshold: float | None,
) -> dict:
    """The scores and how they were measured (the summary's figures; per class for YouTube-Objects)."""
    resolutions = sorted({f"{r.resolution[1]}x{r.resolution[0]}" for r in scored if r.resolution})
    if cfg.official:
        foreground = "grey level > 128 of 255 after a bilinear resize to the ground truth (official)"
    elif threshold is None:
        foreground = "any non-zero pixel"
    else:
        foreground = f"value/255 > {threshold:.6g} (palette: index != 0)"
    scores = {
        **{key: aggregate[key] for key in METRIC_KEYS},
        "n_sequences": aggregate["n_sequences"],
        "n_frames": aggregate["n_frames"],
        "preset": cfg.preset,
        "protocol": cfg.protocol,
        "threshold": threshold,
        "foreground": foreground,
        "bound_th": cfg.bound_th,
        "resolution": "ground truth (predictions resized to it, "
        + ("bilinear)" if cfg.official else "nearest neighbour)"),
        "gt_resolutions": resolutions,
        "gt_format": inputs.truth.format,
        "pred": inputs.pred.url,
        "gt": inputs.truth.root.url,
        "excluded": aggregate["excluded"],
        "missing_prediction_frames": {r.sequence: r.missing for r in scored if r.missing},
        "unreadable_prediction_frames": {r.sequence: r.unreadable for r in scored if r.unreadable},
    }
    per_class = _per_class(scored, inputs.truth.categories)
    if per_class:
        # YouTube-Objects: the official code prints the per-class J means beside the per-video mean it returns;
        # papers' YouTube-Objects tables are per class, with their mean over the classes.
        scores["per_class"] = per_class
        scores["J_mean_over_classes"] = sum(c["J_mean"] for c in per_class.values()) / len(per_class)
    return scores


def _write_results(
    cfg: EvaluateConfig,
    output: Storage,
    inputs: _Inputs,
    results: list[SequenceResult],
    scored: list[SequenceResult],
    scores: dict,
    aggregate: dict,
    threshold: float | None,
) -> str:
    """Write the CSVs, the plot and the report to ``output``; returns the report's URL."""
    plot_png = None
    output.write_bytes("per_sequence.csv", _per_sequence_csv(scored))
    output.write_bytes("per_frame.csv", _per_frame_csv(scored))
    if cfg.plot:
        title = (
            f"J&F per sequence, protocol {cfg.protocol}, "
            f"threshold {threshold if threshold is not None else 'non-zero'}, "
            f"{', '.join(scores['gt_resolutions'])}"
        )
        plot_png = _plot_png(scored, aggregate, title)
        output.write_bytes("jf_per_sequence.png", plot_png)
    # Written before summary.json, which marks the evaluation finished.
    return write_report(
        output,
        scored,
        scores,
        gt=inputs.truth.root,
        gt_frames=inputs.gt_frames,
        pred=inputs.pred,
        pred_frames=inputs.pred_frames,
        frames=resolve_frames_root(cfg.gt, cfg.frames),
        plot_png=plot_png,
        rejected={r.sequence: r.error for r in results if r.error},
    )


JOB = JobSpec(
    name="evaluate",
    summary="DAVIS J&F of predicted masks against ground truth; CSVs, a plot and report.html",
    config=EvaluateConfig,
    run=run,
    preflight=preflight,
    flags=FLAGS,
    description="""Score predicted masks against ground truth with the DAVIS J&F measures.

Predictions: <pred>/<sequence>/<frame>.png, or a segment output root. Ground truth: a DAVIS root
(Annotations/480p), its Annotations folder, a root of sequence folders, or a dataset archive (FBMS-59,
YouTube-Objects, YouTube-VOS, official HMHI-Net layout) scored on its annotated frames. Writes to --output:
per_sequence.csv, per_frame.csv, jf_per_sequence.png, report.html and summary.json (scores under figures, also
printed). A sequence without predictions is rejected and left out of the scores; none at all fails the job.""",
    examples=(
        "{prog} --pred runs/seg/masks --gt runs/demo/corpus --output runs/seg-eval",
        "{prog} --pred s3://bucket/seg1/masks --gt s3://bucket/DAVIS --output s3://bucket/seg1-eval --protocol all",
        "{prog} --preset official --pred runs/official --gt data/FBMS --output runs/official-eval",
    ),
)
"""The evaluation job on the command line (``hmhi-uvos evaluate``, ``jobs/evaluate.py``)."""
