"""Process and port bookkeeping for the local Ray cluster scripts (start-cluster.sh, stop-cluster.sh).

The shell scripts do the orchestration a reader wants to see; this file does the parts that are
awkward in bash: finding free ports, waiting until every node has joined, and finding exactly the
processes of *this* cluster so that stopping it never touches anyone else's Ray (``ray stop``
kills every Ray process on the machine, which on a shared host is not an option).

A process belongs to the cluster when any of these holds, because no single test catches all:
  * its initial environment carries ``WHALE_RAY_CLUSTER=<dir>`` (set only for the ``ray start``
    commands, so gcs_server, raylet, dashboard and job drivers inherit it);
  * its command line names the cluster's directory (Ray passes its temp/log dirs to its daemons);
  * it runs in a session recorded in ``<dir>/<node>.sid`` (each node is started under ``setsid``)
    and looks like Ray: Ray's workers overwrite their environ block with their process title,
    so for them the session is the evidence;
  * it descends from a process that belongs (job drivers run in a session of their own).
The caller and its ancestors are never included, and nothing else on the machine is touched
(``ray stop`` would kill every Ray process on the host, other people's included).

Usage (the scripts call these):
  cluster_ctl.py free-ports N
  cluster_ctl.py wait-ready --api URL --nodes N [--timeout S]
  cluster_ctl.py alive --dir DIR --gcs-port PORT
  cluster_ctl.py members --dir DIR
  cluster_ctl.py stop --dir DIR [--grace S]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import psutil

MARKER = "WHALE_RAY_CLUSTER"
# Ray's default worker port range; a port we hand out must not collide with it.
RAY_WORKER_PORTS = range(10002, 20000)


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports that are free on every interface (Ray binds 0.0.0.0)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in RAY_WORKER_PORTS:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


# -- membership --------------------------------------------------------------------------------

def _recorded_sessions(cluster_dir: Path) -> set[int]:
    sids = set()
    for f in cluster_dir.glob("*.sid"):
        try:
            sids.add(int(f.read_text().strip()))
        except ValueError:
            continue
    return sids


def _belongs(proc: psutil.Process, cluster_dir: str, sids: set[int]) -> bool:
    try:
        if proc.environ().get(MARKER) == cluster_dir:
            return True
    except (psutil.Error, OSError):
        pass
    try:
        cmdline = " ".join(proc.cmdline())
        if cluster_dir + "/" in cmdline:
            return True
        return os.getsid(proc.pid) in sids and "ray" in f"{proc.name()} {cmdline}".lower()
    except (psutil.Error, OSError):
        return False


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def members(cluster_dir: Path) -> list[psutil.Process]:
    """Every live process that belongs to the cluster whose state lives in ``cluster_dir``."""
    cluster_dir = Path(cluster_dir).resolve()
    sids = _recorded_sessions(cluster_dir)
    protected = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = {p.pid: p for p in psutil.process_iter()
             if p.pid not in protected and _belongs(p, str(cluster_dir), sids)}
    for proc in list(found.values()):
        try:
            children = proc.children(recursive=True)
        except psutil.Error:
            continue
        for child in children:
            if child.pid not in protected:
                found.setdefault(child.pid, child)
    return [p for p in found.values() if _live(p)]


def describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:120] or proc.name()}"
    except psutil.Error:
        return f"{proc.pid} (gone)"


def stop(cluster_dir: Path, grace_s: float) -> list[psutil.Process]:
    """SIGTERM every member, SIGKILL what is left after ``grace_s``; returns the survivors."""
    procs = members(cluster_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    alive = [p for p in alive if _live(p)]
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    # A second scan catches processes forked while the first wave was going down.
    late = members(cluster_dir)
    for p in late:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(late, timeout=5)
    return members(cluster_dir)


def listening_ports(procs: list[psutil.Process]) -> set[int]:
    ports = set()
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN)
    return ports


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- readiness ---------------------------------------------------------------------------------

def wait_ready(api: str, nodes: int, timeout_s: float) -> list[dict]:
    """Block until the job API answers and ``nodes`` nodes are alive; returns those nodes."""
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        try:
            alive = list_nodes(address=api, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
            if len(alive) >= nodes:
                return [n if isinstance(n, dict) else n.__dict__ for n in alive]
            last_error = f"{len(alive)} of {nodes} nodes alive"
        except Exception as e:  # the dashboard comes up a few seconds after `ray start` returns
            last_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        time.sleep(1.0)
    raise TimeoutError(f"cluster not ready after {timeout_s:.0f}s ({last_error})")


# -- CLI ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("free-ports")
    p.add_argument("n", type=int)
    p = sub.add_parser("wait-ready")
    p.add_argument("--api", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=90.0)
    for name in ("alive", "members", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--dir", type=Path, required=True)
        if name == "alive":
            p.add_argument("--gcs-port", type=int, required=True)
        if name == "stop":
            p.add_argument("--grace", type=float, default=3.0)
    args = ap.parse_args(argv)

    if args.cmd == "free-ports":
        print(*free_ports(args.n))
        return 0
    if args.cmd == "wait-ready":
        try:
            alive = wait_ready(args.api, args.nodes, args.timeout)
        except TimeoutError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for n in sorted(alive, key=lambda n: not n.get("is_head_node")):
            cpus = (n.get("resources_total") or {}).get("CPU", 0)
            role = "head" if n.get("is_head_node") else "worker"
            print(f"  {role:6s} {n.get('node_name') or n.get('node_ip')}  {cpus:g} CPU  id={n['node_id'][:12]}")
        return 0
    if args.cmd == "alive":
        # Alive = some member process is running and the GCS answers on its port.
        return 0 if members(args.dir) and port_open("127.0.0.1", args.gcs_port) else 1
    if args.cmd == "members":
        for proc in members(args.dir):
            print(describe(proc))
        return 0
    if args.cmd == "stop":
        procs = members(args.dir)
        survivors = stop(args.dir, args.grace)
        if survivors:
            print("error: these processes survived SIGKILL:", file=sys.stderr)
            for proc in survivors:
                print(f"  {describe(proc)}", file=sys.stderr)
            return 1
        print(f"stopped {len(procs)} process(es)")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
