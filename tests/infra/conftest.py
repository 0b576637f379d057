"""Real servers for the infra tests, each on a free loopback port and torn down afterwards.

``s3_server`` / ``s3_bucket``
    moto's S3 server in a subprocess; a fresh bucket per test. ``.env`` is the AWS_* environment
    a subprocess (a Ray job, an mlflow server) needs to reach it; s3fs/boto3 read it as is.
``postgres_server`` / ``postgres_db``
    a throwaway PostgreSQL cluster from the OS packages (initdb + pg_ctl) in a temp dir, password
    authentication over TCP; a fresh database per test. Skips only when the binaries are absent.
``local_ray_cluster``
    ``infra/local/start-cluster.sh`` (head + 1 worker node) for a test module; stopped with
    ``stop-cluster.sh`` at the end, and the teardown fails if any of its processes or ports
    survive.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s")


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- S3 (moto) ---------------------------------------------------------------------------------

@dataclass
class S3Server:
    endpoint_url: str
    access_key: str = "whale-test"
    secret_key: str = "whale-test-secret"
    region: str = "us-east-1"

    @property
    def env(self) -> dict[str, str]:
        """The environment a client process needs (s3fs, boto3 and mlflow read these)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs keyword arguments, for code that does not read the environment."""
        return {"key": self.access_key, "secret": self.secret_key,
                "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region}}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)


@dataclass
class S3Bucket:
    server: S3Server
    name: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server (``python -m moto.server``) on a free loopback port, for the session."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60, proc, "moto server")
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def s3_bucket(s3_server) -> S3Bucket:
    """A new, empty bucket on the session's S3 server."""
    name = f"whale-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return S3Bucket(s3_server, name)


# -- PostgreSQL ------------------------------------------------------------------------------

def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (Debian layout first, then PATH)."""
    def version(path: str) -> tuple:
        return tuple(int(p) for p in re.findall(r"\d+", Path(path).parent.name))

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(Path(bindir) / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(bindir)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    bindir: Path
    datadir: Path
    _run_as: dict = field(default_factory=dict, repr=False)

    def uri(self, database: str, driver: str = "psycopg2") -> str:
        """SQLAlchemy URI. The driver is explicit: SQLAlchemy 2.1 maps a bare postgresql:// to
        psycopg 3, while the project installs psycopg2."""
        return f"postgresql+{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=database, connect_timeout=10)

    def create_database(self, name: str) -> str:
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name


def _unprivileged() -> dict:
    """initdb and postgres refuse to run as root: run them as `nobody` then."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, password auth over TCP."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
                    "or on PATH; install the OS package: apt-get install postgresql")
    run_as = _unprivileged()
    # /tmp, not pytest's tmp_path: the unprivileged user must be able to reach the directory.
    root = Path(tempfile.mkdtemp(prefix="whale-pg-", dir="/tmp" if run_as else None))
    password = secrets.token_hex(16)
    if run_as:
        os.chown(root, run_as["user"], run_as["group"])
    pwfile = root / "pwfile"
    pwfile.write_text(password)
    if run_as:
        os.chown(pwfile, run_as["user"], run_as["group"])
    pwfile.chmod(0o600)

    def pg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(bindir / args[0]), *args[1:]], cwd=root, capture_output=True, text=True,
                              timeout=timeout, **run_as)

    datadir, port = root / "data", free_port()
    init = pg("initdb", "-D", str(datadir), "-U", "whale", f"--pwfile={pwfile}", "-E", "UTF8",
              "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync")
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    # fsync off: a test database needs no durability, and it keeps the tests fast
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    start = pg("pg_ctl", "-D", str(datadir), "-l", str(root / "server.log"), "-w", "-t", "60", "-o", options, "start")
    try:
        if start.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            pytest.fail(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{log[-2000:]}")
        yield PostgresServer("127.0.0.1", port, "whale", password, bindir, datadir, run_as)
    finally:
        stop = pg("pg_ctl", "-D", str(datadir), "-m", "fast", "-w", "-t", "60", "stop")
        if stop.returncode != 0 and (datadir / "postmaster.pid").exists():
            pid = int((datadir / "postmaster.pid").read_text().split()[0])
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server) -> str:
    """A new, empty database on the session's PostgreSQL server; returns its SQLAlchemy URI."""
    name = postgres_server.create_database(f"whale_{uuid.uuid4().hex[:12]}")
    return postgres_server.uri(name)


# -- local Ray cluster ---------------------------------------------------------------------------

def read_env_file(path: Path) -> dict[str, str]:
    """`export KEY=VALUE` lines (as start-cluster.sh writes them) -> dict."""
    env = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^export ([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            env[m.group(1)] = m.group(2)
    return env


@dataclass
class LocalRayCluster:
    dir: Path
    env: dict[str, str]

    @property
    def dashboard_url(self) -> str:
        return self.env["RAY_API_SERVER_ADDRESS"]

    def client_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """This process's environment plus the cluster's (what `source cluster.env` gives)."""
        env = {**os.environ, **self.env, **(extra or {})}
        env.pop("RAY_AUTH_TOKEN", None)  # cluster.env unsets it: it would win over the token file
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def submit(self, *entrypoint: str, working_dir: Path | str, runtime_env_json: str | None = None,
               extra_env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir ... -- entrypoint`, waiting for the job to finish."""
        cmd = [str(VENV_BIN / "ray"), "job", "submit", "--working-dir", str(working_dir)]
        if runtime_env_json:
            cmd += ["--runtime-env-json", runtime_env_json]
        cmd += ["--", *entrypoint]
        return subprocess.run(cmd, env=self.client_env(extra_env), capture_output=True, text=True,
                              timeout=timeout)

    def members(self) -> list:
        sys.path.insert(0, str(INFRA / "local"))
        try:
            import cluster_ctl
        finally:
            sys.path.pop(0)
        return cluster_ctl.members(self.dir)


def start_local_cluster(cluster_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(INFRA / "local" / "start-cluster.sh"), "--dir", str(cluster_dir), *args],
                          capture_output=True, text=True, timeout=timeout)


def stop_local_cluster(cluster_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(INFRA / "local" / "stop-cluster.sh"), "--dir", str(cluster_dir), *args],
                          capture_output=True, text=True, timeout=timeout)


def short_tmp_dir(prefix: str) -> Path:
    """A fresh path under /tmp, short enough for Ray's Unix socket paths (not created)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.rmdir()
    return path


@pytest.fixture(scope="module")
def local_ray_cluster():
    """Head + 1 worker node started by infra/local/start-cluster.sh; stopped after the module."""
    cluster_dir = short_tmp_dir("wr-")
    started = start_local_cluster(cluster_dir, "--workers", "1", "--head-cpus", "2", "--worker-cpus", "2",
                                  "--object-store-mb", "256")
    try:
        assert started.returncode == 0, f"start-cluster.sh failed:\n{started.stdout}\n{started.stderr}"
        yield LocalRayCluster(cluster_dir, read_env_file(cluster_dir / "cluster.env"))
    finally:
        leftover_check = LocalRayCluster(cluster_dir, {})
        stopped = stop_local_cluster(cluster_dir)
        survivors = leftover_check.members()
        assert stopped.returncode == 0, f"stop-cluster.sh failed:\n{stopped.stdout}\n{stopped.stderr}"
        assert not survivors, f"processes of the local cluster survived: {[p.pid for p in survivors]}"
