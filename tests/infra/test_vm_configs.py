"""The Ray cluster-launcher configs (AWS and on-premises) pass Ray's own schema and set up what a
Whale cluster needs: token auth on every node, the secrets file, GPU nodes with the CUDA build."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

VM = Path(__file__).resolve().parents[2] / "infra" / "vm"
ROOT = VM.parents[1]


def load(name: str) -> dict:
    return yaml.safe_load((VM / name).read_text())


@pytest.mark.parametrize("name", ["aws.yaml", "onprem.yaml"])
def test_config_passes_the_cluster_launchers_schema(name):
    config = load(name)
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before launching
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", ["aws.yaml", "onprem.yaml"])
def test_every_node_starts_ray_with_token_auth_and_the_secrets_file(name):
    config = load(name)
    mounts = config["file_mounts"]
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "~/whale.env" in mounts
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert len(start) == 1, key
        assert "RAY_AUTH_MODE=token" in start[0] and ". ~/whale.env" in start[0], key
    assert "--head" in " ".join(config["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in " ".join(config["head_start_ray_commands"])


def test_aws_has_cpu_and_gpu_workers_on_the_matching_images():
    config = load("aws.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert config["docker"]["image"].endswith("-cpu")
    assert types["gpu"]["docker"]["worker_image"].endswith("-cuda")
    assert "worker_image" not in types["cpu"].get("docker", {})
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]


def test_onprem_installs_the_same_torch_as_the_makefile():
    config = load("onprem.yaml")
    assert config["provider"]["type"] == "local"
    assert config["min_workers"] == config["max_workers"] == len(config["provider"]["worker_ips"])
    makefile_torch = re.search(r"^TORCH_SPEC\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    setup = " ".join(config["setup_commands"])
    assert "make install" in setup and makefile_torch in setup
    assert ".venv" in config["rsync_exclude"]


def test_cluster_env_template_names_every_secret_a_ray_process_reads():
    keys = {line.split("=", 1)[0].lstrip("# ").strip() for line in (VM / "cluster.env.example").read_text().splitlines()
            if "=" in line}
    assert {"MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
            "WHALE_API_KEY"} <= keys
