"""The KubeRay manifests in infra/k8s: YAML parses, the objects carry what the KubeRay v1 CRDs require (a minimal
schema of the fields used, written from KubeRay's raycluster_types.go / rayjob_types.go and the operator's
validation rules), the images and users agree with the Dockerfile, no credential is inlined, and every RayJob
entrypoint names a real job and real config files and is accepted by the job's own command line."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
APP_DIR = "/app"  # WORKDIR of infra/docker/Dockerfile, where the image holds the repository
JOB_SCRIPTS = {"precompute_flow.py", "train.py", "segment.py", "evaluate.py"}

# -- minimal schema (KubeRay ray.io/v1) ------------------------------------------------------------------------------
# Known keys per object, to catch typos that the API server would prune silently; required keys per object.
RAYCLUSTER_SPEC_KEYS = {
    "suspend",
    "managedBy",
    "autoscalerOptions",
    "headServiceAnnotations",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "rayVersion",
    "workerGroupSpecs",
    "authOptions",
}
HEAD_GROUP_KEYS = {
    "template",
    "headService",
    "enableIngress",
    "rayStartParams",
    "serviceType",
    "resources",
    "labels",
}
HEAD_GROUP_REQUIRED = {"template", "rayStartParams"}
WORKER_GROUP_KEYS = {
    "suspend",
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
    "resources",
    "labels",
}
WORKER_GROUP_REQUIRED = {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"}
AUTOSCALER_KEYS = {
    "resources",
    "image",
    "imagePullPolicy",
    "securityContext",
    "idleTimeoutSeconds",
    "upscalingMode",
    "env",
    "envFrom",
    "volumeMounts",
    "version",
}
RAYJOB_SPEC_KEYS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionPolicy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}
RUNTIME_ENV_KEYS = {
    "working_dir",
    "py_modules",
    "pip",
    "uv",
    "conda",
    "env_vars",
    "config",
    "excludes",
    "image_uri",
    "container",
    "py_executable",
}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_RAYCLUSTER_NAME, MAX_RAYJOB_NAME = 63, 47
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", re.I)


def load_docs() -> dict[str, list[dict]]:
    docs: dict[str, list[dict]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                doc["__file__"] = path.name
                docs.setdefault(doc["kind"], []).append(doc)
    return docs


DOCS = load_docs()


def by_kind(kind: str) -> list[dict]:
    return DOCS.get(kind, [])


def check_keys(obj: dict, allowed: set[str], required: set[str], where: str) -> list[str]:
    errors = [f"{where}: unknown field {k!r}" for k in obj if k not in allowed]
    errors += [f"{where}: missing required field {k!r}" for k in sorted(required - set(obj))]
    return errors


def check_pod_template(template: dict, where: str) -> list[str]:
    errors = []
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        errors.append(f"{where}.template.spec.containers: needs at least one container")
    for c in containers:
        if not c.get("name") or not c.get("image"):
            errors.append(f"{where}: every container needs a name and an image")
    return errors


def check_start_params(params, where: str) -> list[str]:
    if not isinstance(params, dict):
        return [f"{where}.rayStartParams: must be a map"]
    return [
        f"{where}.rayStartParams[{k}]: values must be strings (map[string]string), got {type(v).__name__}"
        for k, v in params.items()
        if not isinstance(v, str)
    ]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def validate_raycluster_spec(spec: dict, where: str = "spec") -> list[str]:
    errors = check_keys(spec, RAYCLUSTER_SPEC_KEYS, {"headGroupSpec"}, where)
    head = spec.get("headGroupSpec") or {}
    errors += check_keys(head, HEAD_GROUP_KEYS, HEAD_GROUP_REQUIRED, f"{where}.headGroupSpec")
    errors += check_pod_template(head.get("template") or {}, f"{where}.headGroupSpec")
    errors += check_start_params(head.get("rayStartParams", {}), f"{where}.headGroupSpec")
    names = set()
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        w = f"{where}.workerGroupSpecs[{i}]"
        errors += check_keys(group, WORKER_GROUP_KEYS, WORKER_GROUP_REQUIRED, w)
        errors += check_pod_template(group.get("template") or {}, w)
        errors += check_start_params(group.get("rayStartParams", {}), w)
        lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        replicas = group.get("replicas", lo)
        if not all(isinstance(v, int) and v >= 0 for v in (lo, hi, replicas)):
            errors.append(f"{w}: replicas/minReplicas/maxReplicas must be non-negative integers")
        elif not lo <= replicas <= hi:
            errors.append(
                f"{w}: needs minReplicas <= replicas <= maxReplicas, got {lo} <= {replicas} <= {hi}"
            )
        if group.get("groupName") in names:
            errors.append(f"{w}: duplicate groupName {group.get('groupName')!r}")
        names.add(group.get("groupName"))
        # validation.go: resources either in rayStartParams or in the group's resources field, never both.
        if group.get("resources") and any(
            group.get("rayStartParams", {}).get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")
        ):
            errors.append(f"{w}: resources set both in rayStartParams and in resources")
    errors += check_keys(
        spec.get("autoscalerOptions") or {}, AUTOSCALER_KEYS, set(), f"{where}.autoscalerOptions"
    )
    mode = (spec.get("authOptions") or {}).get("mode")
    if mode is not None and mode not in ("token", "disabled"):
        errors.append(f"{where}.authOptions.mode: must be 'token' or 'disabled', got {mode!r}")
    if mode == "token" and (not spec.get("rayVersion") or version_tuple(spec["rayVersion"]) < (2, 52, 0)):
        errors.append(f"{where}: authOptions.mode 'token' needs rayVersion >= 2.52.0")
    return errors


def validate_rayjob(job: dict) -> list[str]:
    name, spec = job["metadata"]["name"], job.get("spec") or {}
    where = f"RayJob {name} ({job['__file__']})"
    errors = check_keys(spec, RAYJOB_SPEC_KEYS, {"entrypoint"}, where)
    if not DNS1035.match(name) or len(name) > MAX_RAYJOB_NAME:
        errors.append(f"{where}: name must be a DNS-1035 label of at most {MAX_RAYJOB_NAME} characters")
    selector = spec.get("clusterSelector") or {}
    if not selector and not spec.get("rayClusterSpec"):
        errors.append(f"{where}: one of rayClusterSpec or clusterSelector must be set")
    if selector and not selector.get("ray.io/cluster"):
        errors.append(f"{where}: clusterSelector needs a non-empty 'ray.io/cluster'")
    if spec.get("rayClusterSpec"):
        errors += validate_raycluster_spec(spec["rayClusterSpec"], f"{where}.rayClusterSpec")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        errors.append(f"{where}: suspend needs shutdownAfterJobFinishes")
    if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
        errors.append(f"{where}: submissionMode must be one of {sorted(SUBMISSION_MODES)}")
    if "activeDeadlineSeconds" in spec and not (
        isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    ):
        errors.append(f"{where}: activeDeadlineSeconds must be a positive integer")
    for key in ("backoffLimit", "ttlSecondsAfterFinished"):
        if key in spec and not (isinstance(spec[key], int) and spec[key] >= 0):
            errors.append(f"{where}: {key} must be a non-negative integer")
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    if not isinstance(runtime_env, dict):
        errors.append(f"{where}: runtimeEnvYAML must be a YAML mapping")
    else:
        errors += [
            f"{where}: runtimeEnvYAML: unknown runtime_env field {k!r}"
            for k in runtime_env
            if k not in RUNTIME_ENV_KEYS
        ]
        errors += [
            f"{where}: runtimeEnvYAML env_vars[{k}] must be a string"
            for k, v in (runtime_env.get("env_vars") or {}).items()
            if not isinstance(v, str)
        ]
    return errors


# -- tests -----------------------------------------------------------------------------------------------------------


def test_every_manifest_parses_with_kind_and_name():
    files = sorted(K8S.glob("*.yaml"))
    assert {f.name for f in files} >= {
        "raycluster.yaml",
        "rayjob-flow.yaml",
        "rayjob-train.yaml",
        "rayjob-segment.yaml",
        "rayjob-evaluate.yaml",
        "kustomization.yaml",
    }
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: needs apiVersion and kind"
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), f"{path.name}: needs metadata.name"


def test_raycluster_matches_the_crd_schema():
    (cluster,) = by_kind("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    name = cluster["metadata"]["name"]
    assert DNS1035.match(name) and len(name) <= MAX_RAYCLUSTER_NAME
    assert validate_raycluster_spec(cluster["spec"]) == []


def test_schema_check_catches_mistakes():
    """The hand-written schema is not vacuous: typical mistakes are reported."""
    (cluster,) = by_kind("RayCluster")
    spec = yaml.safe_load(yaml.safe_dump(cluster["spec"]))
    spec["workerGroupSpecs"][0]["minReplica"] = spec["workerGroupSpecs"][0].pop("minReplicas")  # typo
    spec["workerGroupSpecs"][0]["rayStartParams"] = {"num-gpus": 1}  # int, not string
    spec["headGroupSpec"]["template"]["spec"]["containers"] = []
    spec["authOptions"] = {"mode": "token"}
    spec["rayVersion"] = "2.50.0"
    errors = "\n".join(validate_raycluster_spec(spec))
    for expected in (
        "unknown field 'minReplica'",
        "missing required field 'minReplicas'",
        "values must be strings",
        "at least one container",
        "rayVersion >= 2.52.0",
    ):
        assert expected in errors


def test_raycluster_shape_cpu_head_gpu_workers_autoscaling():
    (cluster,) = by_kind("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    head_container = head["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in str(head_container.get("resources", {})), "the head must be CPU only"
    assert head["rayStartParams"].get("num-cpus") == "0", "the head schedules no tasks"
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    ]
    assert gpu_groups, "needs a GPU worker group"
    for group in gpu_groups:
        assert group["maxReplicas"] > group["minReplicas"] >= 0, "the autoscaler needs room to scale"
    # Ray's version in the CRD matches the Ray the project is tested with.
    import ray

    assert version_tuple(spec["rayVersion"])[:2] == version_tuple(ray.__version__)[:2]


def test_pods_use_the_image_user_and_s3_credentials_from_secret_or_irsa():
    (cluster,) = by_kind("RayCluster")
    dockerfile = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    uid = int(re.findall(r"^USER\s+(\d+)", dockerfile, re.M)[-1])
    (account,) = by_kind("ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in account["metadata"].get("annotations", {})
    templates = [cluster["spec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["spec"]["workerGroupSpecs"]
    ]
    images = set()
    for template in templates:
        pod = template["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
        for c in pod["containers"]:
            images.add(c["image"])
            refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
            assert refs, f"{c['name']}: S3 credentials come from a Secret (envFrom) when IRSA is not used"
            for env in c.get("env", []):
                assert not (SECRET_NAME.search(env["name"]) and "value" in env), (
                    f"{c['name']}: {env['name']} must come from a Secret, not a literal"
                )
            assert any(m["mountPath"] == "/dev/shm" for m in c.get("volumeMounts", [])), (
                "object store needs /dev/shm"
            )
    assert len(images) == 1, f"head and workers must run the same image, got {images}"
    (kustomization,) = by_kind("Kustomization")
    assert {i["name"] for i in kustomization["images"]} == {next(iter(images)).rsplit(":", 1)[0]}
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file()


def test_rayjobs_match_the_crd_schema_and_select_the_cluster():
    (cluster,) = by_kind("RayCluster")
    jobs = by_kind("RayJob")
    assert len(jobs) == 4
    for job in jobs:
        assert job["apiVersion"] == "ray.io/v1"
        assert validate_rayjob(job) == []
        spec = job["spec"]
        assert spec["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
        assert spec.get("shutdownAfterJobFinishes", False) is False, "a shared cluster must outlive each job"


def entrypoint_in_repo(entrypoint: str) -> list[str]:
    """The entrypoint's argv with the image's /app paths mapped onto this checkout."""
    return [
        str(REPO / t[len(APP_DIR) + 1 :]) if t.startswith(APP_DIR + "/") else t
        for t in shlex.split(entrypoint)
    ]


def test_entrypoints_name_real_jobs_and_configs():
    scripts = set()
    for job in by_kind("RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[0] == "python", f"{job['metadata']['name']}: entrypoint runs python"
        script = argv[1]
        assert script.startswith(f"{APP_DIR}/jobs/"), f"{script}: jobs live in the image under {APP_DIR}/jobs"
        scripts.add(Path(script).name)
        for token in argv[1:]:
            if token.startswith(APP_DIR + "/"):
                assert (REPO / token[len(APP_DIR) + 1 :]).is_file(), (
                    f"{job['__file__']}: {token} is not in the repo"
                )
        if "--config" in argv:
            assert argv[argv.index("--config") + 1].endswith(".yaml")
    assert scripts == JOB_SCRIPTS


# One interpreter resolves every command line: each job's main(argv + ["--print-config"]) parses and validates its
# config, prints it and exits 0, without touching storage or Ray (imports are paid once).
_PRINT_CONFIG_RUNNER = r"""
import contextlib, importlib.util, io, json, sys
results = []
for i, argv in enumerate(json.loads(sys.stdin.read())):
    spec = importlib.util.spec_from_file_location(f"job_under_test_{i}", argv[0])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    out, err, code = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            spec.loader.exec_module(module)
            module.main(argv[1:] + ["--print-config"])
            code = "returned without printing"
        except SystemExit as e:
            code = e.code or 0
        except Exception as e:
            code, _ = repr(e), err.write(repr(e))
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-3000:]})
print(json.dumps(results))
"""


def print_configs(commands: list[list[str]]) -> list[dict]:
    """Run ``--print-config`` for each ``[script, args...]`` (paths in this checkout) in one subprocess."""
    proc = subprocess.run(
        [sys.executable, "-c", _PRINT_CONFIG_RUNNER],
        input=json.dumps(commands),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_parsed(name: str, command: list[str], result: dict) -> None:
    assert result["code"] == 0, (
        f"{name}: the job rejected its command line: {result['code']}\n{result['stderr']}"
    )
    resolved = yaml.safe_load(result["stdout"])
    assert isinstance(resolved, dict), f"{name}: --print-config printed no config"
    for token in command:
        if token.startswith("s3://"):
            assert token in result["stdout"], f"{name}: {token} did not reach the resolved config"


def readme_job_commands() -> list[list[str]]:
    """The ``ray job submit ... -- python jobs/X.py ...`` commands of infra/README.md, with $B filled in."""
    text = (REPO / "infra" / "README.md").read_text()
    bucket = re.search(r"^B=(\S+)", text, re.M).group(1)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if "ray job submit" in line and " -- python jobs/" in line and "..." not in line:
                argv = shlex.split(line.split(" -- ", 1)[1].replace("$B", bucket))
                commands.append([str(REPO / argv[1]), *argv[2:]])
    return commands


@pytest.fixture(scope="module")
def job_commands() -> dict[str, tuple[list[str], dict]]:
    """name -> (command, --print-config result) for every RayJob entrypoint and README command, in one process."""
    named = [(j["__file__"], entrypoint_in_repo(j["spec"]["entrypoint"])[1:]) for j in by_kind("RayJob")]
    named += [(f"infra/README.md: {Path(c[0]).name}", c) for c in readme_job_commands()]
    results = print_configs([c for _, c in named])
    return {name: (command, result) for (name, command), result in zip(named, results, strict=True)}


def test_entrypoints_are_accepted_by_the_job_clis(job_commands):
    """Every flag and value of every RayJob entrypoint parses into the job's typed config."""
    manifests = {n: v for n, v in job_commands.items() if n.endswith(".yaml")}
    assert len(manifests) == 4
    for name, (command, result) in manifests.items():
        check_parsed(name, command, result)


def test_readme_commands_name_real_jobs_and_are_accepted(job_commands):
    readme = {n: v for n, v in job_commands.items() if n.startswith("infra/README.md")}
    assert {Path(c[0]).name for c, _ in readme.values()} == JOB_SCRIPTS
    for name, (command, result) in readme.items():
        assert Path(command[0]).is_file()
        if "--config" in command:
            assert (REPO / command[command.index("--config") + 1]).is_file()
        check_parsed(name, command, result)
