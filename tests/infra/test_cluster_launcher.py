"""infra/ray-cluster/aws.yaml through Ray's own machinery, offline:

- ``prepare_config`` (merges Ray's AWS defaults, the first step of ``ray up``) and ``validate_config`` (the JSON
  schema shipped in Ray plus its cross-field checks), which need no cloud access;
- the next steps of ``ray up`` against moto's EC2/IAM emulation on loopback (the suite's moto server): Ray's
  ``bootstrap_aws`` (key pair, subnets in the configured zones, security group) and its AWS node provider
  launching the head and a GPU worker with each node_config (botocore validates every RunInstances field).
  Real AWS (AMI, quotas, SSH, the setup commands themselves) is not exercised.

Then the properties the deployment relies on."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG_PATH = REPO / "infra" / "ray-cluster" / "aws.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CONFIG_PATH.read_text())


def ray_validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_passes_rays_own_validation(raw):
    prepared = ray_validate(raw)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # prepare_config merged setup_commands into the per-role lists, as `ray up` runs them.
    assert prepared["head_setup_commands"][: len(raw["setup_commands"])] == raw["setup_commands"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["available_node_types"]["gpu_worker"].update(min_wokers=1), "min_wokers"),
        (lambda c: c.update(head_node_type="missing"), "head_node_type"),
        (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=100), "max_workers"),
        (lambda c: c.update(idle_timeout_minutes="ten"), "ten"),
    ],
)
def test_rays_validation_rejects_broken_variants(raw, mutate, message):
    """The validation is real: typical mistakes in this file would be caught."""
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(Exception, match=message):
        ray_validate(broken)


def test_cpu_head_gpu_workers_and_instance_profiles(raw):
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head schedules no tasks"
    assert re.match(r"^(m|c|r)\d", head["node_config"]["InstanceType"]), "the head is a CPU instance"
    gpu = [
        t
        for name, t in types.items()
        if name != raw["head_node_type"] and re.match(r"^(g|p)\d", t["node_config"]["InstanceType"])
    ]
    assert gpu and all(t["max_workers"] > t.get("min_workers", 0) for t in gpu)
    for name, t in types.items():
        arn = t["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn), f"{name}: {arn}"
    text = CONFIG_PATH.read_text()
    assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)\s*[:=]", text), (
        "no keys: IAM only"
    )


def test_setup_commands_install_python_the_dependencies_and_the_project(raw):
    setup = " && ".join(raw["setup_commands"])
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    version = re.search(r"uv python install (\d+\.\d+)", setup).group(1)
    assert f">={version}" in requires
    assert "-r ~/hmhi-uvos/pyproject.toml" in setup, "dependencies come from pyproject.toml"
    assert re.search(r"uv pip install [^&]*--no-deps[^&]* ~/hmhi-uvos\b", setup), "the project is installed"
    assert raw["file_mounts"]["~/hmhi-uvos"] == ".", "the repository is synced to every node"
    for cmd in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        assert "hmhi-venv/bin" in cmd, "ray must start from the project's venv so jobs run in it"
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "the job server is reached through an SSH tunnel only"
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start


@pytest.fixture
def bootstrapped(raw, s3_server, tmp_path, monkeypatch):
    """The config after Ray's AWS bootstrap against moto (the key pair lands in a temporary HOME)."""
    from ray.autoscaler._private.aws.config import bootstrap_aws

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return bootstrap_aws(ray_validate(raw))


def test_ray_aws_bootstrap_and_node_launch_against_moto(raw, bootstrapped, tmp_path):
    import boto3
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    region = raw["provider"]["region"]
    zones = raw["provider"]["availability_zone"].split(",")
    assert Path(bootstrapped["auth"]["ssh_private_key"]).is_relative_to(tmp_path)
    ec2 = boto3.client("ec2", region_name=region)
    iam = boto3.client("iam", region_name=region)
    for name, node_type in bootstrapped["available_node_types"].items():
        node_config = node_type["node_config"]
        assert node_config["SecurityGroupIds"] and node_config["KeyName"], name
        subnets = ec2.describe_subnets(SubnetIds=node_config["SubnetIds"])["Subnets"]
        assert {s["AvailabilityZone"] for s in subnets} <= set(zones), f"{name}: subnets outside {zones}"
        # The instance profiles are the operator's (REPLACE in the file); moto needs them to exist to attach them.
        profile = node_config["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
        if profile not in {
            p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]
        }:
            iam.create_instance_profile(InstanceProfileName=profile)

    provider = AWSNodeProvider(bootstrapped["provider"], bootstrapped["cluster_name"])
    launched = {}
    for name in (raw["head_node_type"], "gpu_worker"):
        node_config = copy.deepcopy(bootstrapped["available_node_types"][name]["node_config"])
        created = provider.create_node(
            node_config,
            {
                "ray-node-type": "head" if name == raw["head_node_type"] else "worker",
                "ray-user-node-type": name,
            },
            1,
        )
        (instance_id,) = created
        launched[name] = instance_id
    described = {
        i["InstanceId"]: i
        for r in ec2.describe_instances(InstanceIds=list(launched.values()))["Reservations"]
        for i in r["Instances"]
    }
    for name, instance_id in launched.items():
        instance = described[instance_id]
        node_config = raw["available_node_types"][name]["node_config"]
        assert instance["InstanceType"] == node_config["InstanceType"]
        assert instance["IamInstanceProfile"]["Arn"] == node_config["IamInstanceProfile"]["Arn"]
        assert instance["Placement"]["AvailabilityZone"] in zones
    ec2.terminate_instances(InstanceIds=list(launched.values()))


def test_node_config_typos_are_rejected_at_launch(bootstrapped):
    """botocore checks node_config against EC2's RunInstances model: a misspelled field fails before any call."""
    from botocore.exceptions import ParamValidationError
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    node_config = copy.deepcopy(bootstrapped["available_node_types"]["gpu_worker"]["node_config"])
    node_config["InstanceTyp"] = node_config.pop("InstanceType")
    provider = AWSNodeProvider(bootstrapped["provider"], bootstrapped["cluster_name"])
    with pytest.raises(ParamValidationError, match="InstanceTyp"):
        provider.create_node(node_config, {"ray-node-type": "worker", "ray-user-node-type": "gpu_worker"}, 1)
