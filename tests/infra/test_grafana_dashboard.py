"""infra/grafana/hmhi-dashboard.json: it is what infra/grafana/dashboard.py builds, every query parses as PromQL
(promql-parser, the Rust parser's Python binding), every metric and label it queries is one the jobs export
(pipeline/telemetry.py, the one declaration), and each job has its row with the panels it needs."""

from __future__ import annotations

import json
import re

import promql_parser
import pytest

from infra.grafana.dashboard import JOBS, build_dashboard
from pipeline import telemetry
from tests.conftest import REPO_ROOT

DASHBOARD = REPO_ROOT / "infra" / "grafana" / "hmhi-dashboard.json"
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
RAY_LABELS = {"SessionName", "NodeAddress", "WorkerId", "Component", "Version", "le"}
"""Labels Ray adds to every application metric (and ``le`` of histogram buckets)."""


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def selectors(node) -> list:
    """Every vector selector in a parsed PromQL expression (walks the node types of promql_parser)."""
    if isinstance(node, promql_parser.VectorSelector):
        return [node]
    found = []
    for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            found += selectors(child)
    for arg in getattr(node, "args", None) or []:
        found += selectors(arg)
    return found


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expression) of every target."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_committed_dashboard_is_the_generated_one():
    assert load() == json.loads(json.dumps(build_dashboard())), (
        "infra/grafana/hmhi-dashboard.json is stale: regenerate it with "
        "`python -m infra.grafana.dashboard > infra/grafana/hmhi-dashboard.json`"
    )


def test_every_queried_metric_and_label_is_one_the_jobs_export():
    declared = {m.exported_name: m for m in telemetry.METRICS}
    used = set()
    for title, expr in queries(load()):
        parsed = promql_parser.parse(expr)
        found = selectors(parsed)
        assert found, f"{title}: {expr} queries no metric"
        for selector in found:
            base = HISTOGRAM_SERIES.sub("", selector.name)
            metric = declared.get(selector.name) or declared.get(base)
            assert metric is not None, f"{title}: {selector.name} is not a declared metric"
            if selector.name != metric.exported_name:  # _bucket/_sum/_count exist on histograms only
                assert metric.kind == "histogram", f"{title}: {selector.name} of a {metric.kind}"
            labels = {m.name for m in selector.matchers.matchers}
            assert labels <= set(metric.label_names) | RAY_LABELS, f"{title}: {labels} on {metric.name}"
            assert telemetry.JOB_LABEL in labels, f"{title}: {selector.name} without the job label"
            used.add(metric.name)
    # The dashboard shows every metric the jobs export.
    assert used == {m.name for m in telemetry.METRICS}, {m.name for m in telemetry.METRICS} - used


def test_the_parser_and_walk_do_find_metrics():
    """The check above is not vacuous: a misspelt metric is found and reported."""
    parsed = promql_parser.parse('sum(rate(ray_hmhi_frames_totl{hmhi_job="segment"}[1m])) / 2')
    assert [s.name for s in selectors(parsed)] == ["ray_hmhi_frames_totl"]
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        promql_parser.parse("sum(rate(ray_hmhi_frames_total[1m])")  # unbalanced


def test_one_row_per_job_with_throughput_in_flight_latency_rejections_retries_and_busy_fraction():
    panels = load()["panels"]
    rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
    assert len(rows) == len(JOBS)
    bodies = {}
    for n, start in enumerate(rows):
        end = rows[n + 1] if n + 1 < len(rows) else len(panels)
        job = panels[start]["title"].split(":")[0]  # "segment: videos -> masks"
        bodies[job] = panels[start + 1 : end]
    assert set(bodies) == set(JOBS)
    for job in ("precompute_flow", "segment"):
        titles = " | ".join(p["title"] for p in bodies[job])
        for needed in (
            "Throughput",
            "In flight",
            "ETA",
            "Latency percentiles",
            "Rejections and retries",
            "Busy",
        ):
            assert needed in titles, f"{job}: no {needed} panel ({titles})"
        exprs = " ".join(t["expr"] for p in bodies[job] for t in p["targets"])
        assert f'{telemetry.JOB_LABEL}="{job}"' in exprs and "histogram_quantile(0.95" in exprs
    train = " | ".join(p["title"] for p in bodies["train"])
    for needed in ("Throughput", "Step time", "Data wait", "Loss", "restarts"):
        assert needed in train
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:  # on the 24-column grid, inside it
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
