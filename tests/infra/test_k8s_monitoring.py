"""infra/k8s/monitoring: the PodMonitors that let kube-prometheus-stack scrape the RayCluster, validated like the
other manifests (test_k8s_manifests.py): a minimal schema of the prometheus-operator monitoring.coreos.com/v1
PodMonitor (fields from its CRD, to catch typos the API server would prune), and the wiring itself: the selectors
match the labels KubeRay puts on the `hmhi` cluster's pods, and every scraped port is a named port of those pods."""

from __future__ import annotations

import re

import yaml

from tests.infra.test_k8s_manifests import DNS1035, by_kind, check_keys
from tests.infra.test_k8s_manifests import REPO as REPO_ROOT

MONITORING = REPO_ROOT / "infra" / "k8s" / "monitoring"
KUBERAY_METRICS_PORT = 8080  # KubeRay sets --metrics-export-port=8080 unless rayStartParams says otherwise

PODMONITOR_SPEC_KEYS = {
    "jobLabel",
    "podTargetLabels",
    "podMetricsEndpoints",
    "selector",
    "selectorMechanism",
    "namespaceSelector",
    "sampleLimit",
    "targetLimit",
    "labelLimit",
    "labelNameLengthLimit",
    "labelValueLengthLimit",
    "keepDroppedTargets",
    "attachMetadata",
    "scrapeClass",
    "bodySizeLimit",
    "scrapeProtocols",
    "fallbackScrapeProtocol",
    "scrapeClassicHistograms",
    "nativeHistogramBucketLimit",
    "nativeHistogramMinBucketFactor",
    "convertClassicHistogramsToNHCB",
    "serviceDiscoveryRole",
}
ENDPOINT_KEYS = {
    "port",
    "portNumber",
    "targetPort",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "trackTimestampsStaleness",
    "metricRelabelings",
    "relabelings",
    "proxyUrl",
    "followRedirects",
    "enableHttp2",
    "filterRunning",
    "authorization",
    "basicAuth",
    "oauth2",
    "tlsConfig",
    "bearerTokenSecret",
    "noProxy",
    "proxyFromEnvironment",
    "proxyConnectHeader",
}
RELABEL_KEYS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def monitors() -> list[dict]:
    docs = []
    for path in sorted(MONITORING.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None and doc.get("kind") == "PodMonitor":
                docs.append(doc)
    return docs


def validate_podmonitor(doc: dict) -> list[str]:
    where = f"PodMonitor {doc.get('metadata', {}).get('name')}"
    errors = [] if doc.get("apiVersion") == "monitoring.coreos.com/v1" else [f"{where}: apiVersion"]
    spec = doc.get("spec") or {}
    errors += check_keys(spec, PODMONITOR_SPEC_KEYS, {"selector", "podMetricsEndpoints"}, f"{where}.spec")
    for i, endpoint in enumerate(spec.get("podMetricsEndpoints") or []):
        at = f"{where}.spec.podMetricsEndpoints[{i}]"
        errors += check_keys(endpoint, ENDPOINT_KEYS, set(), at)
        if not isinstance(endpoint.get("port"), str):
            errors.append(f"{at}: scrape a named port (port: <name>)")
        for j, relabel in enumerate(endpoint.get("relabelings") or []):
            errors += check_keys(relabel, RELABEL_KEYS, set(), f"{at}.relabelings[{j}]")
            names = [*relabel.get("sourceLabels", []), relabel.get("targetLabel", "x")]
            errors += [
                f"{at}.relabelings[{j}]: bad label name {n!r}" for n in names if not LABEL_NAME.match(n)
            ]
    return errors


def cluster_ports() -> dict[str, dict[str, int]]:
    """Node type -> {port name: number} of the Ray container of the RayCluster's pods (every worker group)."""
    (cluster,) = by_kind("RayCluster")
    spec = cluster["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0].get("ports", [])
    groups = [g["template"]["spec"]["containers"][0].get("ports", []) for g in spec["workerGroupSpecs"]]
    worker_ports = [{p["name"]: p["containerPort"] for p in ports} for ports in groups]
    common = set.intersection(*(set(p) for p in worker_ports))
    return {
        "head": {p["name"]: p["containerPort"] for p in head},
        "worker": {name: worker_ports[0][name] for name in common},
    }


def test_podmonitors_match_the_crd_schema():
    docs = monitors()
    assert {d["metadata"]["name"] for d in docs} == {"hmhi-ray-head", "hmhi-ray-workers"}
    for doc in docs:
        assert DNS1035.match(doc["metadata"]["name"])
        assert doc["metadata"]["namespace"] == "prometheus-system"
        assert doc["metadata"]["labels"]["release"] == "prometheus", (
            "kube-prometheus-stack selects by release"
        )
        assert validate_podmonitor(doc) == []


def test_schema_check_catches_mistakes():
    doc = yaml.safe_load(yaml.safe_dump(monitors()[0]))
    doc["spec"]["podMetricEndpoints"] = doc["spec"].pop("podMetricsEndpoints")  # typo
    errors = "\n".join(validate_podmonitor(doc))
    assert (
        "unknown field 'podMetricEndpoints'" in errors
        and "missing required field 'podMetricsEndpoints'" in errors
    )
    doc = yaml.safe_load(yaml.safe_dump(monitors()[0]))
    doc["spec"]["podMetricsEndpoints"][0]["port"] = 8080
    doc["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["targetLabel"] = "ray.io/cluster"
    errors = "\n".join(validate_podmonitor(doc))
    assert "named port" in errors and "bad label name 'ray.io/cluster'" in errors


def test_monitors_select_the_clusters_pods_and_scrape_named_ports():
    (cluster,) = by_kind("RayCluster")
    name, namespace = cluster["metadata"]["name"], cluster["metadata"].get("namespace", "default")
    ports = cluster_ports()
    scraped = set()
    for doc in monitors():
        spec = doc["spec"]
        labels = spec["selector"]["matchLabels"]
        # KubeRay labels every pod of a cluster ray.io/cluster=<name> and ray.io/node-type=head|worker.
        assert labels["ray.io/cluster"] == name
        node_type = labels["ray.io/node-type"]
        assert namespace in spec["namespaceSelector"]["matchNames"]
        for endpoint in spec["podMetricsEndpoints"]:
            assert endpoint["port"] in ports[node_type], f"{node_type} pods have no port {endpoint['port']!r}"
            scraped.add((node_type, endpoint["port"]))
    assert {("head", "metrics"), ("worker", "metrics")} <= scraped  # drivers on the head, actors on workers
    for node_type in ("head", "worker"):
        assert ports[node_type]["metrics"] == KUBERAY_METRICS_PORT
    head = cluster["spec"]["headGroupSpec"]
    assert "metrics-export-port" not in head["rayStartParams"]  # else the port above must follow it
    env = {e["name"]: e.get("value") for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_PROMETHEUS_HOST"].startswith("http://") and env["RAY_GRAFANA_HOST"].startswith("http://")


def test_monitoring_kustomization_lists_the_monitors():
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    for resource in kustomization["resources"]:
        assert (MONITORING / resource).is_file()
    assert "podmonitors.yaml" in kustomization["resources"]
