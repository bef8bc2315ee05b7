"""The Grafana dashboard of the hmhi-uvos jobs, built from the one metric declaration (pipeline/telemetry.py).

    .venv/bin/python -m infra.grafana.dashboard > infra/grafana/hmhi-dashboard.json

One row per job (flow, segment, train, evaluate, export), each with its throughput, videos in flight and queued,
latency percentiles, rejections, storage retries and busy fraction where the job has them. Every query names
metrics through :mod:`pipeline.telemetry`'s objects, so a renamed metric cannot leave a dead panel behind; the
committed JSON is this module's output (tests/infra/test_grafana_dashboard.py checks both). The panels read a
Prometheus data source chosen with the dashboard's ``datasource`` variable, and the ``cluster`` variable picks the
Ray cluster by Ray's ``SessionName`` label.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

from pipeline import telemetry as t

__all__ = ["JOBS", "build_dashboard", "main"]

JOBS = ("precompute_flow", "segment", "train", "evaluate", "export")
"""The jobs, one dashboard row each, by their ``hmhi_job`` label."""

_WIDTH = 24  # Grafana's grid is 24 columns wide
_SELECTOR = 'SessionName=~"$cluster"'


def _sel(job: str, **labels: str) -> str:
    """The label selector of one job's series (plus ``labels``, values taken as regular expressions)."""
    parts = [f'{t.JOB_LABEL}="{job}"', _SELECTOR, *(f'{k}=~"{v}"' for k, v in labels.items())]
    return "{" + ",".join(parts) + "}"


def _rate(metric: t.Metric, job: str, window: str = "1m", suffix: str = "", by: str = "", **labels) -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping}(rate({metric.exported_name}{suffix}{_sel(job, **labels)}[{window}]))"


def _quantiles(metric: t.Metric, job: str, by: str = "") -> list[tuple[str, str]]:
    """p50, p95 and p99 of a histogram over 5 minutes: (expression, legend) pairs."""
    grouping = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({grouping})"
            f"(rate({metric.exported_name}_bucket{_sel(job)}[5m])))",
            f"{legend}p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _gauge(metric: t.Metric, job: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping}({metric.exported_name}{_sel(job)})"


def _panel(title: str, targets: list[tuple[str, str]], unit: str, kind: str = "timeseries") -> dict:
    return {
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _video_job_panels(job: str, unit: str, stage: str | None) -> Iterator[dict]:
    """The panels of a job that works through videos (flow, segment) or sequences (evaluate, export)."""
    yield _panel(
        "Throughput",
        [
            (_rate(t.ITEMS, job, kind=unit, status="done"), f"{unit}s done/s"),
            (_rate(t.FRAMES, job), "frames/s (finished items)"),
            *(
                [(_rate(t.MODEL_FRAME_SECONDS, job, suffix="_count"), "frames/s (model, live)")]
                if stage == "model"
                else []
            ),
            *(
                [(_rate(t.FLOW_FRAME_SECONDS, job, suffix="_count"), "frames/s (flow, live)")]
                if stage == "flow"
                else []
            ),
        ],
        "ops",
    )
    remaining, in_flight = _gauge(t.REMAINING, job), _gauge(t.IN_FLIGHT, job)
    yield _panel(
        "In flight, queued, remaining",
        [
            (in_flight, "in flight"),
            (f"{remaining} - ({in_flight} or vector(0))", "queued"),
            (remaining, "remaining"),
        ],
        "short",
    )
    yield _panel(
        "ETA",
        [
            (
                f"{remaining} / {_rate(t.ITEMS, job, window='5m', kind=unit, status='done|rejected')}",
                "time left",
            )
        ],
        "s",
        kind="stat",
    )
    latency = _quantiles(t.VIDEO_SECONDS, job)
    if stage == "model":
        latency += [(e, f"model/frame {legend}") for e, legend in _quantiles(t.MODEL_FRAME_SECONDS, job)]
    if stage == "flow":
        latency += [(e, f"flow/frame {legend}") for e, legend in _quantiles(t.FLOW_FRAME_SECONDS, job)]
    yield _panel("Latency percentiles (per video; per frame)", latency, "s")
    yield _panel(
        "Rejections and retries",
        [
            (_rate(t.ITEMS, job, window="5m", kind=unit, status="rejected"), f"{unit}s rejected/s"),
            (_rate(t.STORAGE_RETRIES, job, window="5m", by="kind"), "storage retries/s ({{kind}})"),
        ],
        "ops",
    )
    if stage is not None:
        busy = _rate(t.BUSY_SECONDS, job, stage=stage)
        wall = _rate(t.WORKER_SECONDS, job, stage=stage)
        yield _panel(f"Busy fraction ({stage})", [(f"{busy} / {wall}", f"{stage} busy")], "percentunit")
    yield _panel(
        "Storage bytes",
        [(_rate(t.STORAGE_BYTES, job, by="direction"), "{{direction}}")],
        "Bps",
    )


def _train_panels(job: str = "train") -> Iterator[dict]:
    yield _panel(
        "Throughput",
        [
            (_gauge(t.TRAIN_CLIPS_PER_SECOND, job), "clips/s (all ranks)"),
            (_rate(t.TRAIN_STEPS, job, by="rank"), "steps/s rank {{rank}}"),
        ],
        "ops",
    )
    yield _panel("Step time percentiles", _quantiles(t.TRAIN_STEP_SECONDS, job), "s")
    yield _panel("Data wait percentiles", _quantiles(t.TRAIN_DATA_WAIT_SECONDS, job), "s")
    yield _panel("Loss", [(_gauge(t.TRAIN_LOSS, job, by="rank"), "rank {{rank}}")], "short")
    checkpoints, restarts = t.TRAIN_CHECKPOINTS.exported_name, t.TRAIN_RESTARTS.exported_name
    yield _panel(
        "Checkpoints and restarts (last hour)",
        [
            (f"sum by (reason)(increase({checkpoints}{_sel(job)}[1h]))", "checkpoints ({{reason}})"),
            (f"sum by (cause)(increase({restarts}{_sel(job)}[1h]))", "restarts ({{cause}})"),
        ],
        "short",
    )
    yield _panel(
        "Retries and storage bytes",
        [
            (_rate(t.STORAGE_RETRIES, job, window="5m", by="kind"), "retries/s ({{kind}})"),
            (_rate(t.STORAGE_BYTES, job, by="direction"), "bytes/s {{direction}}"),
        ],
        "short",
    )


_ROWS = {  # job -> (what it does, the unit it counts, the stage whose busy fraction it shows)
    "precompute_flow": ("corpus -> optical flow -> shards", "video", "flow"),
    "train": ("Ray Train DDP workers", "step", None),
    "segment": ("videos -> masks", "video", "model"),
    "evaluate": ("J&F per sequence", "sequence", None),
    "export": ("COCO / CVAT files", "video", None),
}


def _layout(panels: list[dict], y: int) -> int:
    """Place ``panels`` left to right, four per line, from height ``y``; returns the next free height."""
    per_line, height = 4, 8
    for i, panel in enumerate(panels):
        panel["gridPos"] = {"h": height, "w": _WIDTH // per_line, "x": (i % per_line) * (_WIDTH // per_line)}
        panel["gridPos"]["y"] = y + (i // per_line) * height
    return y + -(-len(panels) // per_line) * height


def build_dashboard() -> dict:
    """The dashboard as Grafana's JSON model (import it, or load it as a provisioned dashboard)."""
    panels: list[dict] = []
    y = 0
    for job in JOBS:
        title = f"{job}: {_ROWS[job][0]}"
        row = {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1, "w": 24}}
        row["gridPos"].update(x=0, y=y)
        body = list(_train_panels() if job == "train" else _video_job_panels(job, *_ROWS[job][1:]))
        panels.append(row)
        y = _layout(body, y + 1)
        panels += body
    for i, panel in enumerate(panels, start=1):
        panel["id"] = i
    return {
        "uid": "hmhi-uvos-jobs",
        "title": "hmhi-uvos jobs",
        "description": "Live metrics of the hmhi-uvos jobs (hmhi_* metrics exported by Ray); see the README",
        "tags": ["hmhi-uvos", "ray"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
                {
                    "name": "cluster",
                    "type": "query",
                    "label": "Ray session",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": f"label_values({t.ITEMS.exported_name}, SessionName)", "refId": "S"},
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "refresh": 2,
                },
            ]
        },
        "panels": panels,
    }


def main() -> None:
    """Print the dashboard JSON (what ``infra/grafana/hmhi-dashboard.json`` holds)."""
    json.dump(build_dashboard(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
