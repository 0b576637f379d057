"""The sandbox against hostile code: each test runs a real snippet in a real subprocess.

Kernel-level properties (PID/network/mount namespaces, the unprivileged uid) are tested with
the audit-hook guards OFF, so the kernel is what stops the snippet; tests that need a layer
this machine cannot provide are skipped with the reason, never passed vacuously.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from textwrap import dedent

import psutil
import pytest

from stages.common.sandbox import SandboxLimits, isolation_layers, run_python

FAST = SandboxLimits(wall_s=5, cpu_s=2, memory_mb=512)
KERNEL_ONLY = SandboxLimits(wall_s=5, cpu_s=2, memory_mb=512, python_guards=False)
REPO = Path(__file__).resolve().parents[2]


def layers() -> tuple[str, ...]:
    return isolation_layers("strict", python_guards=False)


def needs(*wanted: str):
    have = layers()
    missing = [w for w in wanted if w not in have]
    if missing:
        pytest.skip(f"this machine gives the sandbox {have}; the test needs {missing}")


def no_processes_of(uid: int | None, within_s: float = 5.0) -> bool:
    """True once no process of the sandbox's uid is left (the kernel may take a moment)."""
    if uid is None:
        return True
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
        if not alive:
            return True
        time.sleep(0.1)
    return False


# -- ordinary behaviour -------------------------------------------------------------------

def test_runs_code_and_reports_ok():
    res = run_python("import sys\nprint(sum(range(10)))\nprint('err', file=sys.stderr)", limits=FAST)
    assert res.passed and res.reason == "ok" and res.returncode == 0
    assert res.stdout == "45\n" and res.stderr == "err\n"
    assert res.duration_s < 5


def test_failure_is_fail_with_a_traceback_naming_the_code():
    res = run_python("def f():\n    return 1 / 0\nf()\n", limits=FAST)
    assert res.reason == "fail" and res.returncode == 1
    assert "ZeroDivisionError" in res.stderr and "main.py" in res.stderr and "runpy" not in res.stderr


def test_exit_codes_are_relayed():
    assert run_python("raise SystemExit(3)", limits=FAST).returncode == 3
    assert run_python("import sys; sys.exit(0)", limits=FAST).reason == "ok"


def test_stdin_and_extra_files_reach_the_code():
    res = run_python("import helper, sys\nprint(helper.VALUE + sys.stdin.read())", limits=FAST,
                     stdin="!", files={"helper.py": "VALUE = 'from helper'"})
    assert res.stdout == "from helper!\n"


def test_extra_files_cannot_escape_the_work_dir():
    with pytest.raises(ValueError, match="outside the work dir"):
        run_python("pass", files={"../escape.py": "x"})


def test_environment_is_scrubbed(monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("WHALE_TEST_SECRET", secret)
    code = dedent(f"""
        import os
        print(sorted(os.environ))
        print(os.environ.get('WHALE_TEST_SECRET'))
        try:
            print(open('/proc/{os.getpid()}/environ', 'rb').read())
        except OSError as e:
            print('no access', e.errno)
        """)
    res = run_python(code, limits=KERNEL_ONLY)
    assert res.passed, res.stderr
    assert secret not in res.stdout
    assert "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR']" in res.stdout


def test_output_is_capped_to_its_tail():
    res = run_python("for i in range(200000): print(i)", limits=SandboxLimits(wall_s=10, max_output_bytes=1000))
    assert res.passed and res.stdout_truncated
    assert len(res.stdout.encode()) <= 1000 and res.stdout.rstrip().endswith("199999")


def test_parallel_runs_from_threads_do_not_interfere():
    results = {}

    def one(i):
        results[i] = run_python(f"print({i} * {i})", limits=FAST)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i].passed and results[i].stdout == f"{i * i}\n" for i in range(6))


# -- time and memory ----------------------------------------------------------------------

def test_infinite_loop_hits_the_cpu_limit():
    res = run_python("while True:\n    pass", limits=SandboxLimits(wall_s=20, cpu_s=1))
    assert res.reason == "timeout" and res.detail == "cpu"
    assert res.duration_s < 10


def test_ignoring_sigxcpu_does_not_help():
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
    res = run_python(code, limits=SandboxLimits(wall_s=20, cpu_s=1, python_guards=False))
    assert res.reason == "timeout" and res.detail == "cpu"


def test_sleeping_forever_hits_the_wall_limit():
    res = run_python("import time\ntime.sleep(1000)", limits=SandboxLimits(wall_s=1))
    assert res.reason == "timeout" and res.detail == "wall"
    assert res.duration_s < 5


def test_huge_allocation_is_a_memory_failure():
    res = run_python("x = bytearray(8 << 30)\nprint('allocated')", limits=SandboxLimits(memory_mb=256))
    assert res.reason == "memory" and "allocated" not in res.stdout


def test_big_file_hits_the_file_size_limit():
    res = run_python("open('big.bin', 'wb').write(b'x' * (8 << 20))", limits=SandboxLimits(max_file_mb=1))
    assert res.reason == "output_limit"


# -- processes ----------------------------------------------------------------------------

def test_process_limit_binds():
    needs("pidns")
    code = dedent("""
        import os, time
        n = 0
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
        print(n)
        """)
    res = run_python(code, limits=SandboxLimits(wall_s=10, max_processes=8, python_guards=False))
    assert res.passed, res.stderr
    assert int(res.stdout) < 8  # the limit, not the loop, stopped the forks
    assert no_processes_of(res.sandbox_uid), "sleeping children outlived the sandbox"


def test_fork_bomb_is_contained_and_cleaned_up():
    needs("pidns")
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    before = len(psutil.pids())
    res = run_python(bomb, limits=SandboxLimits(wall_s=2, cpu_s=2, max_processes=16, python_guards=False))
    assert res.reason == "timeout"
    assert no_processes_of(res.sandbox_uid), "fork bomb processes survived the sandbox"
    assert len(psutil.pids()) < before + 16


def test_daemonised_child_dies_with_the_sandbox():
    needs("pidns")
    code = dedent("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)
        print('parent done')
        """)
    res = run_python(code, limits=KERNEL_ONLY)
    assert res.passed
    assert no_processes_of(res.sandbox_uid)


def test_cannot_kill_the_parent_or_other_processes():
    needs("pidns")
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host_ns = os.readlink("/proc/self/ns/pid")
    try:
        # safety first: the snippet refuses to run kill(-1) unless it really is in another PID namespace
        code = dedent(f"""
            import os, signal
            assert os.readlink('/proc/self/ns/pid') != {host_ns!r}
            for pid in ({os.getpid()}, {victim.pid}, os.getppid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError as e:
                    print('refused', pid, e.errno)
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError as e:
                print('refused -1', e.errno)
            """)
        res = run_python(code, limits=KERNEL_ONLY)
        time.sleep(0.2)
        assert victim.poll() is None, "the sandbox killed a host process"
        assert res.reason in ("ok", "crash"), res
    finally:
        victim.kill()
        victim.wait()


def test_guards_refuse_process_creation_and_signals():
    res = run_python("import subprocess\nsubprocess.run(['true'])", limits=FAST)
    assert res.reason == "fail" and "not allowed" in res.stderr
    res = run_python("import os\nos.kill(1, 0)", limits=FAST)
    assert res.reason == "fail" and "not allowed" in res.stderr


# -- files --------------------------------------------------------------------------------

@pytest.mark.parametrize("guards", [True, False], ids=["guards", "kernel-only"])
def test_writes_outside_the_work_dir_fail(guards, tmp_path):
    if not guards:
        needs("mountns")
    targets = [Path("/tmp") / f"whale-escape-{uuid.uuid4().hex}", REPO / f"whale-escape-{uuid.uuid4().hex}",
               tmp_path / "escape"]
    code = dedent(f"""
        import os
        open('inside.txt', 'w').write('fine')
        print(os.path.exists('inside.txt'))
        for target in {[str(t) for t in targets]!r}:
            try:
                open(target, 'w').write('x')
                print('WROTE')
            except OSError as e:
                print('refused', type(e).__name__)
        """)
    res = run_python(code, limits=SandboxLimits(python_guards=guards))
    assert res.passed, res.stderr
    assert res.stdout.startswith("True\n") and "WROTE" not in res.stdout
    assert not any(t.exists() for t in targets)


def test_writes_by_a_child_process_are_blocked_by_the_kernel():
    needs("mountns")
    target = Path("/tmp") / f"whale-escape-{uuid.uuid4().hex}"
    code = f"import subprocess\nprint(subprocess.run(['sh', '-c', 'echo x > {target}']).returncode)"
    res = run_python(code, limits=KERNEL_ONLY)
    assert res.passed and res.stdout.strip() != "0"
    assert not target.exists()


def test_written_binaries_cannot_be_executed():
    needs("mountns")
    code = dedent("""
        import shutil, os, subprocess
        shutil.copy('/bin/true', 'mytrue')
        os.chmod('mytrue', 0o755)
        try:
            subprocess.run(['./mytrue'])
            print('EXECUTED')
        except PermissionError:
            print('noexec')
        """)
    res = run_python(code, limits=KERNEL_ONLY)
    assert res.stdout.strip() == "noexec", res


# -- network ------------------------------------------------------------------------------

@pytest.fixture
def listening_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.setblocking(False)
    yield srv.getsockname()[1], srv
    srv.close()


def _accepted(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
        conn.close()
        return True
    except BlockingIOError:
        return False


@pytest.mark.parametrize("guards", [True, False], ids=["guards", "kernel-only"])
def test_no_network(guards, listening_server):
    if not guards:
        needs("netns")
    port, srv = listening_server
    code = dedent(f"""
        import socket
        try:
            socket.create_connection(('127.0.0.1', {port}), timeout=2)
            print('CONNECTED')
        except OSError as e:
            print('refused', e)
        """)
    res = run_python(code, limits=SandboxLimits(python_guards=guards))
    assert "CONNECTED" not in res.stdout and ("refused" in res.stdout or "not allowed" in res.stderr)
    assert not _accepted(srv)


def test_no_network_from_a_child_interpreter(listening_server):
    needs("netns")
    port, srv = listening_server
    inner = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    python = os.path.realpath(sys.executable)  # the interpreter is inside the sandbox (its packages are not)
    code = f"import subprocess\nprint(subprocess.run([{python!r}, '-c', {inner!r}]).returncode)"
    res = run_python(code, limits=KERNEL_ONLY)
    assert res.passed and res.stdout.strip() != "0"
    assert not _accepted(srv)


# -- modes --------------------------------------------------------------------------------

def test_every_run_gets_the_kernel_layers():
    res = run_python("print('ok')", limits=SandboxLimits())
    assert res.passed and {"pidns", "netns", "mountns"} <= set(res.isolation), res


def test_no_weaker_mode_exists():
    with pytest.raises(ValueError, match="removed"):
        SandboxLimits(isolation="basic")


def test_refuses_where_namespaces_are_unavailable(tmp_path):
    """A machine without namespaces gets a clear refusal, not a weaker sandbox. Simulated for real:
    inside a user namespace that allows no further user namespaces, with every capability dropped."""
    if not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.skip("needs util-linux unshare and setpriv")
    probe = ("from stages.common.sandbox import run_python, SandboxUnavailable\n"
             "try:\n    print(run_python('print(1)'))\nexcept SandboxUnavailable as e:\n    print('REFUSED', e)\n")
    inner = (f"echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --securebits +noroot,+noroot_locked "
             f"--bounding-set -all --inh-caps -all {sys.executable} -c {shlex.quote(probe)}")
    out = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", inner], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)})
    if "Permission denied" in out.stderr or "Operation not permitted" in out.stderr and "REFUSED" not in out.stdout:
        pytest.skip(f"cannot simulate a namespace-less machine here: {out.stderr[-300:]}")
    assert "REFUSED" in out.stdout and "namespaces" in out.stdout, (out.stdout, out.stderr)


def test_invalid_limits_are_rejected_early():
    with pytest.raises(ValueError, match="isolation"):
        SandboxLimits(isolation="docker")
    with pytest.raises(ValueError, match="total_memory_mb"):
        SandboxLimits(total_memory_mb=0)
    with pytest.raises(ValueError, match="wall_s"):
        SandboxLimits(wall_s=0)
