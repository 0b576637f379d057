"""The KubeRay and MLflow manifests parse and carry what a working deployment needs."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from urllib.parse import urlparse

import pytest
import ray
import yaml

from tests.infra.manifests import (
    K8S,
    containers,
    find,
    load_documents,
    pod_specs,
    resolve_env,
    resources,
    secret_keys_example,
)

ROOT = K8S.parents[1]


def ray_clusters() -> list[tuple[str, dict]]:
    """(what, RayCluster spec): the standalone cluster and the one the RayJob creates."""
    return [("RayCluster", find("RayCluster")["spec"]), ("RayJob", find("RayJob")["spec"]["rayClusterSpec"])]


def test_every_yaml_parses_into_named_kubernetes_objects():
    docs = load_documents()
    assert {p.name for p, _ in docs} >= {"namespace.yaml", "postgres.yaml", "minio.yaml", "mlflow.yaml",
                                         "raycluster.yaml", "rayjob.yaml", "kustomization.yaml"}
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: a document lacks apiVersion/kind"
        if doc["kind"] != "Kustomization":
            meta = doc.get("metadata", {})
            assert meta.get("name") or meta.get("generateName"), f"{path.name}: {doc['kind']} has no name"
    kinds = {(d["apiVersion"], d["kind"]) for d in resources()}
    assert kinds >= {("v1", "Namespace"), ("v1", "Service"), ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment"),
                     ("batch/v1", "Job"), ("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob")}


def test_every_container_has_a_pinned_image_and_cpu_memory_requests():
    for doc in resources():
        for where, pod in pod_specs(doc):
            for c in containers(pod):
                name = doc["metadata"].get("name") or doc["metadata"]["generateName"]
                what = f"{doc['kind']} {name} {where} {c['name']}"
                image = c["image"]
                assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{what}: unpinned {image}"
                requests = c.get("resources", {}).get("requests", {})
                assert {"cpu", "memory"} <= set(requests), f"{what}: no cpu/memory requests"
                assert "memory" in c["resources"].get("limits", {}), f"{what}: no memory limit"


@pytest.mark.parametrize("what,spec", ray_clusters(), ids=["raycluster", "rayjob"])
def test_ray_cluster_has_head_cpu_and_gpu_groups_with_token_auth(what, spec):
    assert spec["rayVersion"] == ray.__version__, f"{what}: rayVersion differs from the installed Ray"
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"].endswith("-cpu")
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265, 10001}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for name, group in groups.items():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        (worker,) = group["template"]["spec"]["containers"]
        gpus = worker["resources"].get("limits", {}).get("nvidia.com/gpu")
        if name == "gpu":
            assert int(gpus) >= 1 and worker["image"].endswith("-cuda")
            assert worker["resources"]["requests"]["nvidia.com/gpu"] == gpus
            assert any(t["key"] == "nvidia.com/gpu" for t in group["template"]["spec"].get("tolerations", []))
        else:
            assert gpus is None and worker["image"].endswith("-cpu")
    # every Ray container sees the tracking, storage and serve secrets
    for _, pod in ray_cluster_pod_specs_of(spec):
        for c in pod["containers"]:
            refs = {s["secretRef"]["name"] for s in c.get("envFrom", [])}
            assert refs >= {"whale-mlflow", "whale-object-store", "whale-serve"}


def ray_cluster_pod_specs_of(spec):
    return pod_specs({"kind": "RayCluster", "spec": spec})


def test_rayjob_runs_the_pipeline_then_shuts_down():
    job = find("RayJob")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["rayClusterSpec"] == find("RayCluster")["spec"], "the RayJob's cluster drifted from raycluster.yaml"
    argv = shlex.split(job["entrypoint"])
    assert argv[:4] == ["python", "-m", "pipeline", "run"]
    config = argv[4]
    assert (ROOT / config).is_file(), f"the entrypoint's config {config} does not exist"
    # every --set names a real global key, and the output root is shared storage
    from pipeline.config import GLOBAL_KEYS

    overrides = dict(a.split("=", 1) for a in argv[5:] if "=" in a)
    assert set(overrides) <= set(GLOBAL_KEYS)
    assert overrides["output_root"].startswith("s3://")
    # the runtime env ships the image's source tree (WORKDIR) as the working dir
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    workdir = [line.split()[1] for line in (ROOT / "infra/docker/Dockerfile").read_text().splitlines()
               if line.startswith("WORKDIR ")]
    assert runtime_env["working_dir"] == workdir[-1]
    assert ".git" in runtime_env["excludes"]


def test_every_referenced_secret_and_key_is_generated():
    secrets = secret_keys_example()
    assert set(secrets) == {"whale-postgres", "whale-object-store", "whale-mlflow", "whale-serve"}
    for doc in resources():
        for where, pod in pod_specs(doc):
            for c in containers(pod):
                for src in c.get("envFrom", []):
                    assert src["secretRef"]["name"] in secrets, f"{where} {c['name']}: unknown secret"
                for var in c.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] in secrets, f"{where}: unknown secret {ref['name']}"
                        assert ref["key"] in secrets[ref["name"]] or ref.get("optional"), \
                            f"{where}: secret {ref['name']} has no key {ref['key']}"
    # the kustomization must keep names stable: RayCluster/RayJob references are not rewritten
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    assert {"WHALE_API_KEY"} <= set(secrets["whale-serve"])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(secrets["whale-object-store"])
    assert (K8S / "secrets" / ".gitignore").read_text().strip().endswith("*.env")


def test_in_cluster_uris_point_at_services_that_exist():
    secrets = secret_keys_example()
    namespace = find("Namespace")["metadata"]["name"]
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in resources()
                if s["kind"] == "Service"}
    for uri in (secrets["whale-mlflow"]["MLFLOW_TRACKING_URI"], secrets["whale-object-store"]["AWS_ENDPOINT_URL"]):
        host, port = urlparse(uri).hostname, urlparse(uri).port
        service, ns = host.split(".")[:2]
        assert ns == namespace and host.endswith(".svc.cluster.local"), uri
        assert port in services[service], f"{uri}: service {service} has no port {port}"
    # the MLflow server's artifact bucket is one the bucket job creates
    mlflow = find("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    destination = next(a.split("=", 1)[1] for a in mlflow["args"] if a.startswith("--artifacts-destination="))
    job = find("Job", "minio-buckets")["spec"]["template"]["spec"]["containers"][0]
    assert f"whale/{urlparse(destination).netloc}" in " ".join(job["args"])


def test_mlflow_accepts_the_hosts_ray_pods_and_port_forwards_use_and_nothing_else():
    from mlflow.server.security_utils import is_allowed_host_header

    mlflow = find("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    allowed = next(a.split("=", 1)[1] for a in mlflow["args"] if a.startswith("--allowed-hosts=")).split(",")
    tracking = urlparse(secret_keys_example()["whale-mlflow"]["MLFLOW_TRACKING_URI"])
    port = tracking.port
    for host in (tracking.netloc, f"mlflow:{port}", f"mlflow.whale:{port}", f"mlflow.whale.svc:{port}",
                 f"localhost:{port}", f"127.0.0.1:{port}"):
        assert is_allowed_host_header(allowed, host), f"MLflow would reject Host: {host}"
    for host in ("evil.example.com", f"mlflow.evil.example:{port}", f"10.0.0.7:{port}"):
        assert not is_allowed_host_header(allowed, host), f"MLflow would accept Host: {host}"


def test_mlflow_server_uses_postgres_and_s3_and_serves_artifacts():
    secrets = secret_keys_example()
    pod = find("Deployment", "mlflow")["spec"]["template"]["spec"]
    server = pod["containers"][0]
    env = resolve_env(server, secrets)
    backend = env["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql+psycopg2://")  # SQLAlchemy 2.1's bare postgresql:// wants psycopg 3
    pg = secrets["whale-postgres"]
    assert backend == (f"postgresql+psycopg2://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}"
                       f"@postgres:5432/{pg['POSTGRES_DB']}")
    assert "--serve-artifacts" in server["args"]
    assert any(a.startswith("--artifacts-destination=s3://") for a in server["args"])
    assert env["MLFLOW_S3_ENDPOINT_URL"] == secrets["whale-object-store"]["AWS_ENDPOINT_URL"]
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    assert not any("POSTGRES_PASSWORD" in a or "postgresql" in a for a in server["args"]), \
        "the backend URI (with its password) belongs in the environment, not argv"
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["mlflow", "db", "upgrade"]
    assert resolve_env(init, secrets)["MLFLOW_BACKEND_STORE_URI"] == backend
    postgres = find("StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    assert {s["secretRef"]["name"] for s in postgres["envFrom"]} == {"whale-postgres"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) not installed")
def test_kustomize_builds_namespaced_objects_and_secrets(tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    made = subprocess.run([str(copy / "make-secrets.sh"), str(copy / "secrets")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    built = subprocess.run(["kubectl", "kustomize", str(copy)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert all(o["metadata"]["namespace"] == "whale" for o in namespaced)
    secrets = {o["metadata"]["name"]: set(o["data"]) for o in objects if o["kind"] == "Secret"}
    assert secrets == {name: set(keys) for name, keys in secret_keys_example().items()}


def test_make_secrets_fills_every_placeholder_and_keeps_existing_files(tmp_path):
    secrets_dir = tmp_path / "secrets"
    shutil.copytree(K8S / "secrets", secrets_dir)
    script = K8S / "make-secrets.sh"
    first = subprocess.run([str(script), str(secrets_dir)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    made = sorted(secrets_dir.glob("*.env"))
    assert [p.name for p in made] == ["mlflow.env", "object-store.env", "postgres.env", "serve.env"]
    for env_file in made:
        text = env_file.read_text()
        assert "CHANGE_ME" not in text
        assert env_file.stat().st_mode & 0o077 == 0, f"{env_file.name} is readable by others"
        template = (secrets_dir / f"{env_file.name}.example").read_text()
        assert [line.split("=")[0] for line in text.splitlines()] == \
               [line.split("=")[0] for line in template.splitlines()]
    password = (secrets_dir / "postgres.env").read_text()
    again = subprocess.run([str(script), str(secrets_dir)], capture_output=True, text=True)
    assert again.returncode == 0 and "kept" in again.stdout
    assert (secrets_dir / "postgres.env").read_text() == password
