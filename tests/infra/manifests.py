"""Reading the Kubernetes manifests under infra/k8s the way the cluster would: documents by kind
and name, pod specs wherever they sit (Deployments, StatefulSets, Jobs, KubeRay groups), and a
container's environment resolved like the kubelet does (secretKeyRef, envFrom, $(VAR))."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"


def load_documents(directory: Path = K8S) -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def resources(directory: Path = K8S) -> list[dict]:
    """Every Kubernetes object (the kustomization file is not one)."""
    return [d for _, d in load_documents(directory) if d.get("kind") != "Kustomization"]


def find(kind: str, name: str | None = None, directory: Path = K8S) -> dict:
    matches = [d for d in resources(directory)
               if d["kind"] == kind and (name is None or d["metadata"].get("name") == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) for every pod template in an object."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        yield kind, spec["template"]["spec"]
    elif kind == "RayCluster":
        yield from ray_cluster_pod_specs(spec)
    elif kind == "RayJob":
        yield from ray_cluster_pod_specs(spec["rayClusterSpec"])


def ray_cluster_pod_specs(spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"worker group {group['groupName']}", group["template"]["spec"]


def containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def read_env_file(path: Path) -> dict[str, str]:
    """A kustomize secretGenerator env file: KEY=VALUE lines, # comments."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def secret_keys_example() -> dict[str, dict[str, str]]:
    """Secret name -> its keys and example values, from the kustomization's secretGenerator and
    the committed *.env.example templates of its env files."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = {}
    for gen in kustomization["secretGenerator"]:
        values: dict[str, str] = {}
        for env_file in gen["envs"]:
            values.update(read_env_file(K8S / f"{env_file}.example"))
        out[gen["name"]] = values
    return out


def resolve_env(container: dict, secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env in order,
    $(VAR) expanded from variables defined before (unknown ones stay literal)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("secretRef")
        if ref:
            env.update(secrets[ref["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                      lambda m: env.get(m.group(1), m.group(0)), str(var["value"]))
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            if ref["key"] in secrets.get(ref["name"], {}):
                env[var["name"]] = secrets[ref["name"]][ref["key"]]
            elif not ref.get("optional"):
                raise KeyError(f"secret {ref['name']} has no key {ref['key']}")
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """$(VAR) in command/args, as the kubelet expands it."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)
