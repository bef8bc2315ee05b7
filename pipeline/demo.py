"""The one-command demo: the real pipeline, end to end, on a synthetic corpus, on a CPU-only machine.

    make demo                                   # storage under runs/demo
    make demo STORAGE=s3://bucket/prefix        # the same against S3 (AWS_ENDPOINT_URL for any S3-compatible server)
    python -m pipeline.demo --storage runs/demo [--train-steps 500] [--set key=value ...]

Stages (each job runs as ``python -m pipeline <job> ...`` in its own process, the installed ``hmhi-uvos <job>``
command exactly as a user runs it, and starts its own local Ray; nothing is read from a checkout):

1. ``pipeline.synthetic``       a seeded corpus in DAVIS-2016 layout            -> <storage>/corpus
2. ``precompute_flow``          DIS optical flow, WebDataset shards             -> <storage>/shards
3. ``train``                    2 Ray Train workers (gloo DDP), DEMO_TRAINING   -> <storage>/runs/<run_name>
4. ``segment``                  the best checkpoint on the held-out test videos -> <storage>/segment
5. ``evaluate``                 DAVIS-2016 J&F and report.html (table, plot, worst frames over the frames) -> <storage>/eval

It ends by printing J&F (also on the paused and occluded frames) and the path of evaluate's report.html; the
figures are saved in <storage>/demo_summary.json.

Every stage resumes: a rerun skips what is done (the corpus, shards, training steps, segmented videos).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import logging
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import yaml

from pipeline.cli import run_job_main
from pipeline.config import config_to_dict, parse_job_args, require
from pipeline.errors import JobFailed
from pipeline.run_layout import BEST_MODEL, final_model
from pipeline.runtime import setup_logging
from pipeline.storage import Storage, open_storage
from pipeline.synthetic import SyntheticConfig, generate_corpus

log = logging.getLogger("pipeline.demo")

__all__ = ["DemoConfig", "DemoError", "main", "run_demo", "slice_scores"]

DEMO_TRAINING: dict = {
    "num_workers": 2,
    "use_gpu": False,
    "cpus_per_worker": 1,
    "max_failures": 3,
    "log_every_steps": 20,
    "model": {
        "name": "hmhi_mit_b0",
        "memory_size": 5,
        "options": {"decoder_width": 64},
        "input_size": 128,
        "precision": "fp32",
    },
    "data": {"clip_length": 5, "batch_size_per_worker": 1, "shuffle_buffer": 8, "prefetch_batches": 1},
    "optim": {"lr": 1.0e-3, "weight_decay": 5.0e-4, "seed": 666},
    "checkpoint": {"keep_last": 2},
}
"""The demo's training config (written to <storage>/demo_train.yaml and given to ``train --config``): the laptop
model of configs/tiny_cpu.yaml (MiT-B0, decoder width 64, a higher learning rate than the official one) trained
at the corpus's 128 px: at 96x96 the boundary measure F lags far behind J (F 0.52, J 0.76 after 400 steps). It
lives in the package so that an installed ``hmhi-uvos demo`` needs no checkout. Steps, cadence and workers come
from :class:`DemoConfig`."""


class DemoError(JobFailed):
    """A demo stage failed; the message names the stage and what to look at (exit status 1)."""


@dataclass
class DemoConfig:
    storage: str = "runs/demo"
    """Where everything goes: a local directory or s3://bucket/prefix (AWS_* variables give the endpoint/creds)."""
    corpus: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The synthetic corpus (videos, frames, size, seed, ...). Its ``val_fraction`` of the videos is held out for the
    reported J&F (the test split: never trained on or used to select a model); ``out`` is set by the demo to
    <storage>/corpus."""
    train_val_fraction: float = 0.1
    """Fraction of the training videos the flow job sets aside for validation during training; the held-out
    videos that the demo scores are never used for training or model selection."""
    train_config: str = ""
    """Training config file (path or URL); empty: the demo's own, :data:`DEMO_TRAINING`."""
    train_steps: int = 1200
    """Training steps (optim.max_steps); ~0.7 s each with 2 CPU workers on the 2-core reference machine."""
    validate_every: int = 0
    """Validate every this many steps during training; 0: only at the last step, so the reported model is the final
    one and the held-out test videos play no part in choosing it."""
    num_workers: int = 2
    """Ray Train workers (gloo DDP on CPU)."""
    run_name: str = "demo"
    """Training run name under <storage>/runs/ (a rerun with the same name resumes)."""
    train_overrides: list[str] = field(default_factory=list)
    """Extra key=value overrides for the train job (after the demo's own: steps, cadence, workers)."""
    flow_preset: str = "medium"
    """DIS preset for the flow stages: ultrafast, fast or medium."""

    def __post_init__(self):
        require(bool(self.storage), "storage", self.storage, "is required")
        require(
            self.corpus.videos >= 2,
            "corpus.videos",
            self.corpus.videos,
            "must be >= 2 (one train and one test video at least)",
        )
        require(
            not self.corpus.out,
            "corpus.out",
            self.corpus.out,
            "is set by the demo (<storage>/corpus): leave it out",
        )
        require(self.train_steps >= 1, "train_steps", self.train_steps, "must be >= 1")
        require(
            0.0 <= self.train_val_fraction < 1.0,
            "train_val_fraction",
            self.train_val_fraction,
            "must be in [0, 1)",
        )
        require(self.validate_every >= 0, "validate_every", self.validate_every, "must be >= 0")
        require(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")
        require(
            self.flow_preset in ("ultrafast", "fast", "medium"),
            "flow_preset",
            self.flow_preset,
            "must be ultrafast, fast or medium",
        )


# -- stages ----------------------------------------------------------------------------------------------------------


def _banner(index: int, total: int, text: str) -> None:
    print(f"\n=== [{index}/{total}] {text} ===", flush=True)


def _run_job(job: str, args: Sequence[str], stage: str) -> float:
    """Run the job as ``hmhi-uvos <job> args`` does, in its own process (``python -m pipeline``: the installed code,
    whatever the working directory), with live output; returns its wall time."""
    cmd = [sys.executable, "-m", "pipeline", job, *args]
    print("$ hmhi-uvos " + " ".join(_quote(a) for a in cmd[3:]), flush=True)
    started = time.perf_counter()
    code = subprocess.call(cmd)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise DemoError(
            f"stage '{stage}' failed: hmhi-uvos {job} exited with status {code} (its log is above)"
        )
    return elapsed


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "/._-=:,[]" for c in arg) else repr(arg)


def _train_config_path(cfg: DemoConfig) -> str:
    """The training config to give ``train --config``: ``train_config``, else :data:`DEMO_TRAINING` written (again,
    the same bytes) to ``<storage>/demo_train.yaml``."""
    if cfg.train_config:
        return cfg.train_config
    root = open_storage(cfg.storage)
    root.write_text("demo_train.yaml", yaml.safe_dump(DEMO_TRAINING, sort_keys=False))
    return root.join("demo_train.yaml")


def _final_model(run_dir) -> str:
    """URL of the model to segment with: best/model.pt (validated at the last step by default), else the latest
    training checkpoint (when the shards hold no validation split)."""
    found = final_model(run_dir)
    if found is None:
        raise DemoError(f"stage 'train' left no model under {run_dir.url} (no {BEST_MODEL}, no checkpoint)")
    url, meta = found
    if meta:
        print(f"best checkpoint: step {meta.get('step')}, validation {meta.get('val')}", flush=True)
    return url


def slice_scores(per_frame_csv: str, metas: dict[str, dict], drop_first_last: bool = True) -> dict[str, dict]:
    """Mean J, F and J&F over all frames, the paused frames and the occluded frames of the synthetic sequences.

    ``per_frame_csv`` is jobs/evaluate.py's ``per_frame.csv`` text; ``metas`` maps a sequence to its synthetic
    ``Meta/<seq>/meta.json``. With ``drop_first_last`` the first and last frames are left out, as the DAVIS-2016
    protocol does. Frame values are pooled over sequences (each frame weighs the same).
    """
    rows = list(csv.DictReader(io.StringIO(per_frame_csv)))
    pools: dict[str, tuple[list[float], list[float]]] = {
        "all": ([], []),
        "paused": ([], []),
        "occluded": ([], []),
    }
    for row in rows:
        meta = metas.get(row["sequence"])
        if meta is None:
            continue
        t = int(row["frame"])
        if drop_first_last and (t == 0 or t == meta["frames"] - 1):
            continue
        j, f = float(row["J"]), float(row["F"])
        tags = ["all"]
        if t in meta["paused_frames"]:
            tags.append("paused")
        if t in meta["occluded_frames"]:
            tags.append("occluded")
        for tag in tags:
            pools[tag][0].append(j)
            pools[tag][1].append(f)
    out = {}
    for tag, (js, fs) in pools.items():
        jm = float(np.mean(js)) if js else math.nan
        fm = float(np.mean(fs)) if fs else math.nan
        out[tag] = {"J": jm, "F": fm, "JF": (jm + fm) / 2, "frames": len(js)}
    return out


def _demo_summary(root, val: list[str], timings: dict[str, float], cfg: DemoConfig) -> dict:
    """The demo's own figures (J&F overall and on paused / occluded frames, stage times), saved as
    <storage>/demo_summary.json; the report to open is evaluate's report.html."""
    corpus, ev = root.child("corpus"), root.child("eval")
    summary = ev.read_json("summary.json")["figures"]  # evaluate's scores in the common job summary
    metas = {s: corpus.read_json(f"Meta/{s}/meta.json") for s in val}
    result = {
        "JF_mean": summary["JF_mean"],
        "J_mean": summary["J_mean"],
        "F_mean": summary["F_mean"],
        "protocol": summary["protocol"],
        "n_sequences": summary["n_sequences"],
        "slices": slice_scores(ev.read_text("per_frame.csv"), metas),
        "report": summary.get("report") or ev.join("report.html"),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "config": config_to_dict(cfg),
    }
    root.write_json("demo_summary.json", result)
    return result


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; returns the demo summary (J&F, slices, timings)."""
    root = open_storage(cfg.storage)
    root.check()
    urls = {name: root.join(name) for name in ("corpus", "shards", "runs", "segment", "eval")}
    timings: dict[str, float] = {}
    total = 5
    started = time.perf_counter()

    corpus_cfg = dataclasses.replace(cfg.corpus, out=urls["corpus"])
    _banner(
        1,
        total,
        f"synthetic corpus: {corpus_cfg.videos} videos x {corpus_cfg.frames} frames at "
        f"{corpus_cfg.size} -> {urls['corpus']}",
    )
    t0 = time.perf_counter()
    corpus_summary = generate_corpus(corpus_cfg)
    if corpus_summary["counts"].get("video", {}).get("rejected", 0):
        raise DemoError(f"stage 'corpus' rejected videos: {corpus_summary['rejected']}")
    timings["corpus"] = time.perf_counter() - t0
    val = root.child("corpus").read_json("synthetic.json")["val"]

    _banner(2, total, f"optical flow (DIS {cfg.flow_preset}) and WebDataset shards -> {urls['shards']}")
    timings["precompute_flow"] = _run_job("precompute_flow", _flow_args(cfg, urls), "precompute_flow")
    train_yaml = _train_config_path(cfg)
    _banner(3, total, f"training: {cfg.num_workers} Ray Train workers, {cfg.train_steps} steps, {train_yaml}")
    timings["train"] = _run_job("train", _train_args(cfg, urls, train_yaml), "train")
    model_url = _final_model(root.child(f"runs/{cfg.run_name}"))
    print(f"model for segmentation: {model_url}", flush=True)
    _banner(4, total, f"segmenting the {len(val)} held-out test videos -> {urls['segment']}")
    timings["segment"] = _run_job("segment", _segment_args(cfg, urls, model_url, val), "segment")
    _banner(5, total, f"DAVIS-2016 J&F and report.html on the held-out test videos -> {urls['eval']}")
    timings["evaluate"] = _run_job("evaluate", _evaluate_args(root, urls, val), "evaluate")

    timings["total"] = time.perf_counter() - started
    result = _demo_summary(root, val, timings, cfg)
    _print_result(result, started)
    return result


def _flow_args(cfg: DemoConfig, urls: dict[str, str]) -> list[str]:
    return [
        "--input",
        urls["corpus"],
        "--output",
        urls["shards"],
        "--format",
        "davis2016",
        "--flow-model",
        "dis",
        "--flow-preset",
        cfg.flow_preset,
        "--val-fraction",
        str(cfg.train_val_fraction),
    ]


def _train_args(cfg: DemoConfig, urls: dict[str, str], train_yaml: str) -> list[str]:
    overrides = [
        f"validation.every_steps={cfg.validate_every or cfg.train_steps}",
        "validation.max_samples=null",
        f"checkpoint.every_steps={min(100, cfg.train_steps)}",
        *cfg.train_overrides,
    ]
    return [
        "--config",
        train_yaml,
        "--data",
        urls["shards"],
        "--storage",
        urls["runs"],
        "--run-name",
        cfg.run_name,
        "--num-workers",
        str(cfg.num_workers),
        "--max-steps",
        str(cfg.train_steps),
        *[a for o in overrides for a in ("--set", o)],
    ]


def _segment_args(cfg: DemoConfig, urls: dict[str, str], model_url: str, val: list[str]) -> list[str]:
    return [
        "--input",
        urls["corpus"],
        "--output",
        urls["segment"],
        "--format",
        "davis2016",
        "--checkpoint",
        model_url,
        "--flow-model",
        "dis",
        "--set",
        f"flow.preset={cfg.flow_preset}",
        "--set",
        f"videos=[{','.join(val)}]",
    ]


def _evaluate_args(root: Storage, urls: dict[str, str], val: list[str]) -> list[str]:
    return [
        "--pred",
        root.join("segment/masks"),
        "--gt",
        urls["corpus"],
        "--output",
        urls["eval"],
        "--protocol",
        "davis2016",
        "--set",
        f"sequences=[{','.join(val)}]",
    ]


def _print_result(result: dict, started: float) -> None:
    s = result["slices"]
    print(
        f"\nJ&F = {result['JF_mean']:.3f}  (J {result['J_mean']:.3f}, F {result['F_mean']:.3f}; "
        f"{result['n_sequences']} held-out test videos, protocol {result['protocol']})",
        flush=True,
    )
    print(
        f"  paused frames: J&F {s['paused']['JF']:.3f} ({s['paused']['frames']} frames); occluded frames: "
        f"J&F {s['occluded']['JF']:.3f} ({s['occluded']['frames']} frames)",
        flush=True,
    )
    print(f"report: {result['report']}", flush=True)
    print(f"demo finished in {time.perf_counter() - started:.0f} s", flush=True)


def main(argv: Sequence[str] | None = None, prog: str = "python -m pipeline.demo") -> int:
    """The demo's command line (``make demo``, ``hmhi-uvos demo``); exit status as every job's: 0 done, 1 a stage
    failed, 2 a user error (one line)."""
    return run_job_main(functools.partial(_demo_from_args, prog=prog), None if argv is None else list(argv))


def _demo_from_args(argv: Sequence[str], prog: str) -> dict:
    cfg = parse_job_args(
        DemoConfig,
        argv,
        prog=prog,
        description=__doc__,
        flags={
            "--storage": "storage",
            "--videos": "corpus.videos",
            "--frames": "corpus.frames",
            "--size": "corpus.size",
            "--train-steps": "train_steps",
            "--train-config": "train_config",
            "--run-name": "run_name",
            "--num-workers": "num_workers",
        },
    )
    setup_logging()
    return run_demo(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
