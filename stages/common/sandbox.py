"""Run untrusted Python in a subprocess with time, memory, process, file and network limits.

    result = run_python("print(sum(range(10)))", limits=SandboxLimits(wall_s=5))
    result.passed, result.reason, result.stdout      # True, "ok", "45\\n"

Used to execute model-written code against unit tests (distill's code verifier, eval's
HumanEval suite). This module imports only the standard library: the same file is the
*boot* program of every sandboxed child (``python -I -B sandbox.py --boot SPEC``), so it has
to start in milliseconds.

Layers, strongest first. Which ones applied is reported in ``SandboxResult.isolation``.
There is one isolation level, strong: PID, network and mount namespaces are required, and a
machine that cannot create them gets ``SandboxUnavailable`` (a clear refusal), never a weaker
sandbox. (An earlier ``"basic"`` mode, rlimits plus audit hooks, was removed: the hooks can be
disabled from pure Python and it could read any file, so it was no security boundary.)

Kernel layers (need root with CAP_SYS_ADMIN, or unprivileged user namespaces):
  ``pidns``   a new PID namespace: the code runs as PID 1 of its own tree and cannot see or
              signal host processes; when it exits, or the host kills it on a timeout, the
              kernel kills every process it started (fork bombs and daemons included).
  ``netns``   a new network namespace with no interfaces up: no TCP/UDP to anything, no
              abstract Unix sockets of the host.
  ``mountns`` a private mount namespace whose root is a fresh, read-only tree holding only
              /usr, /etc, the lib/bin links, the interpreter's standard library (no
              site-packages: no third-party code, no benchmark data such as HumanEval's
              solutions), a minimal /dev, the namespace's own /proc and the work directory
              (writable, noexec). The host's /tmp, /work, home directories and pipeline
              outputs are simply not there.
  ``memcap``  a total memory cap for the whole sandbox: a memory cgroup (v2 memory.max, or
              v1 memory.limit_in_bytes) when one can be made (``memcap:cgroup``), else a
              budget (``memcap:budget``): processes x address space <= ``total_memory_mb``.
  ``uid``     (root only) the code runs as a random unprivileged uid/gid with no groups and no
              capabilities, so RLIMIT_NPROC binds (the kernel does not enforce it for root),
              file permissions apply and root-owned processes cannot be signalled.
  ``nocaps``  (user-namespace path) all capabilities and the bounding set dropped.
  ``nonewprivs`` PR_SET_NO_NEW_PRIVS: setuid binaries cannot raise privileges.
Always:
  ``rlimits`` CPU seconds, address space (RLIMIT_AS), processes, file size, open files, no core.
  ``env``     a scrubbed environment (PATH, HOME and TMPDIR = the work dir, a UTF-8 locale).
  ``guards``  (optional, on by default) a Python audit hook that refuses sockets, process
              creation, ctypes, signals to other processes, writes outside the work dir and
              the introspection that could reach the harness (gc walks, other threads'
              frames, /proc/self/mem). Defence in depth: the kernel layers are the boundary.

Verdicts (``tests=``): the tests are never written into the sandbox; the harness runs the
candidate, then the tests, each in a worker thread, and only then the main thread prints a
per-run token that lives nowhere but in its own frame (no file holds it). ``tests_completed``
is True only if the tests ran to their end. Residual risk: code that the tests call can walk
``frame.f_back`` (not audited by CPython) to the tests' own frame; comparing results in the
parent would close that too.

Root and RLIMIT_NPROC: Linux skips the process-count check for root (and any process with
CAP_SYS_ADMIN/CAP_SYS_RESOURCE), so a fork bomb run as root is bounded only by the wall
timeout. That is why the root path drops to a fresh unprivileged uid before running code.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["SandboxLimits", "SandboxResult", "SandboxUnavailable", "run_python", "isolation_layers"]

KERNEL_LAYERS = ("pidns", "netns", "mountns")
REASONS = ("ok", "fail", "timeout", "memory", "output_limit", "crash", "error")
_BOOT_ERROR_EXIT = 120


class SandboxUnavailable(RuntimeError):
    """``isolation="strict"`` was asked for and the kernel layers could not be set up."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0            # host-side deadline; everything in the sandbox is killed at it
    cpu_s: float = 5.0              # RLIMIT_CPU per process
    memory_mb: int = 1024           # RLIMIT_AS (virtual address space) per process
    max_processes: int = 32         # RLIMIT_NPROC (threads count too)
    max_output_bytes: int = 64_000  # stdout/stderr: the last this-many bytes of each are kept
    max_file_mb: int = 16           # RLIMIT_FSIZE: largest file the code may write
    max_open_files: int = 128       # RLIMIT_NOFILE
    total_memory_mb: int = 2048     # the whole sandbox (every process together): cgroup or budget
    isolation: str = "strict"       # strict (namespaces) only; "auto" is an old name for it
    python_guards: bool = True      # the audit-hook layer

    def __post_init__(self):
        if self.isolation == "basic":
            raise ValueError('isolation="basic" was removed: it was no security boundary (see the '
                             'sandbox docstring); the sandbox runs under kernel isolation or refuses')
        if self.isolation not in ("auto", "strict"):
            raise ValueError(f"isolation must be strict, not {self.isolation!r}")
        for name in ("wall_s", "cpu_s", "memory_mb", "max_processes", "max_output_bytes",
                     "max_file_mb", "max_open_files", "total_memory_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class SandboxResult:
    reason: str                      # one of REASONS
    returncode: int | None           # exit code, or -signal when killed by a signal
    stdout: str = ""                 # tail, at most max_output_bytes
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_s: float = 0.0          # wall clock, host side
    cpu_s: float | None = None       # user+sys of the sandboxed tree (None if it was killed)
    max_rss_mb: float | None = None
    detail: str = ""                 # e.g. "wall" / "cpu" for timeouts, the boot error message
    isolation: tuple[str, ...] = ()  # layers that applied
    sandbox_uid: int | None = None   # the unprivileged uid the code ran as (root path)
    memory_peak_mb: float | None = None  # the whole sandbox's peak (cgroup); None under the budget cap
    tests_completed: bool | None = None  # with tests=: did the tests run to their end

    @property
    def passed(self) -> bool:
        return self.reason == "ok"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["isolation"] = list(self.isolation)
        d["passed"] = self.passed
        return d


# ----------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------

def run_python(code: str, *, limits: SandboxLimits = SandboxLimits(),
               stdin: str | bytes | None = None, files: Mapping[str, str | bytes] | None = None,
               args: Sequence[str] = (), tests: str | None = None) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh work directory and return what happened.

    ``files`` are extra files written next to it (relative paths inside the work dir).
    ``tests``: source run after ``code`` in its namespace (never written into the sandbox);
    ``tests_completed`` then says whether they ran to their end (see the module docstring).
    Thread-safe (no preexec_fn), and usable inside Ray tasks: every call is its own process.
    """
    root = Path(tempfile.mkdtemp(prefix="whale-sbx-"))
    cgroup = None
    try:
        root.chmod(0o711)  # the unprivileged sandbox uid must traverse it to reach work/
        work = root / "work"
        work.mkdir()
        (work / "main.py").write_text(code, encoding="utf-8")
        for rel, content in (files or {}).items():
            target = (work / rel).resolve()
            if work.resolve() not in target.parents:
                raise ValueError(f"sandbox file {rel!r} would land outside the work dir")
            target.parent.mkdir(parents=True, exist_ok=True)
            data = content.encode() if isinstance(content, str) else content
            target.write_bytes(data)
        stdin_path = root / "stdin"
        stdin_path.write_bytes(stdin.encode() if isinstance(stdin, str) else (stdin or b""))
        (root / "newroot").mkdir()
        cgroup = _make_cgroup(limits.total_memory_mb)
        token = secrets.token_hex(16) if tests is not None else None
        spec = {"work": str(work), "args": list(args), "limits": asdict(limits), "newroot": str(root / "newroot"),
                "cgroup": cgroup.procs if cgroup else None, "tests": tests, "token": token}
        spec_path = root / "spec.json"
        spec_path.touch(mode=0o600)
        spec_path.write_text(json.dumps(spec))
        res = _supervise(spec_path, stdin_path, work, limits)
        if cgroup is not None and "memcap:cgroup" in res.isolation:
            res.memory_peak_mb, oom = cgroup.usage()
            if oom and res.reason in ("crash", "fail"):
                res.reason, res.detail = "memory", "total memory cap (cgroup)"
        if token is not None:
            res.tests_completed = token in res.stdout
            res.stdout = res.stdout.replace(f"\n{token}\n", "").replace(token, "")
        if res.reason == "error" and "SandboxUnavailable" in res.detail:
            raise SandboxUnavailable(res.detail)
        return res
    finally:
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(root, ignore_errors=True)


class _Cgroup:
    """A memory cgroup made for one run (v2 memory.max, or the v1 memory controller)."""

    def __init__(self, path: str, version: int):
        self.path, self.version = path, version
        self.procs = os.path.join(path, "cgroup.procs")

    def usage(self) -> tuple[float | None, bool]:
        """(peak MB of the whole sandbox, whether the kernel OOM-killed something in it)."""
        peak_file = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            peak = round(int(Path(self.path, peak_file).read_text()) / 2**20, 1)
        except (OSError, ValueError):
            peak = None
        try:
            if self.version == 2:
                text = Path(self.path, "memory.events").read_text()
            else:
                failcnt = Path(self.path, "memory.failcnt").read_text()
                text = Path(self.path, "memory.oom_control").read_text() + f"\nfailcnt {failcnt}"
            counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
            oom = int(counts.get("oom_kill", 0)) > 0 or int(counts.get("oom", 0)) > 0
        except (OSError, ValueError):
            oom = False
        return peak, oom

    def remove(self):
        for _ in range(50):  # the last sandbox process may take a moment to leave
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


def _make_cgroup(total_mb: int) -> _Cgroup | None:
    """A fresh memory cgroup below ours, limited to ``total_mb`` (swap included), or None."""
    limit = str(total_mb * 2**20)
    name = f"whale-sbx-{secrets.token_hex(6)}"
    try:
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            own[controllers] = rel
        mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        return None
    for fields in mounts:  # mountinfo: ... mount point (4), ... " - " fstype source options
        sep = fields.index("-")
        fstype, point, super_opts = fields[sep + 1], fields[4], fields[-1]
        if fstype == "cgroup2" and "" in own:
            base = os.path.join(point, own[""].lstrip("/"))
            try:  # a child gets the memory controller only if our cgroup hands it down
                if "memory" not in Path(base, "cgroup.subtree_control").read_text().split():
                    continue
            except OSError:
                continue
            path, version, files = os.path.join(base, name), 2, {"memory.max": limit, "memory.swap.max": "0"}
        elif fstype == "cgroup" and "memory" in super_opts.split(","):
            rel = next((r for c, r in own.items() if "memory" in c.split(",")), None)
            if rel is None:
                continue
            path, version = os.path.join(point, rel.lstrip("/"), name), 1
            files = {"memory.limit_in_bytes": limit, "memory.memsw.limit_in_bytes": limit}
        else:
            continue
        try:
            os.mkdir(path)
        except OSError:
            continue
        try:
            for fname, value in files.items():
                if os.path.exists(os.path.join(path, fname)):
                    Path(path, fname).write_text(value)
            return _Cgroup(path, version)
        except OSError:
            os.rmdir(path)
    return None


_LAYER_CACHE: dict[tuple[str, bool], tuple[str, ...]] = {}


def isolation_layers(isolation: str = "strict", python_guards: bool = True) -> tuple[str, ...]:
    """The layers a sandbox run gets on this machine (probed once per process, then cached).

    Raises SandboxUnavailable where the kernel layers cannot be set up."""
    key = (isolation, python_guards)
    if key not in _LAYER_CACHE:
        res = run_python("pass", limits=SandboxLimits(isolation=isolation, python_guards=python_guards))
        if res.reason != "ok":
            raise SandboxUnavailable(f"sandbox probe failed: {res.reason} {res.detail} {res.stderr[-500:]}")
        _LAYER_CACHE[key] = res.isolation
    return _LAYER_CACHE[key]


def _scrubbed_env(work: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work),
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


class _Tail:
    """Keeps the last ``cap`` bytes of a stream, remembering whether anything was dropped."""

    def __init__(self, cap: int):
        self.cap, self.buf, self.truncated = cap, bytearray(), False

    def feed(self, data: bytes):
        self.buf += data
        if len(self.buf) > self.cap:
            del self.buf[: len(self.buf) - self.cap]
            self.truncated = True

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


def _supervise(spec_path: Path, stdin_path: Path, work: Path, limits: SandboxLimits) -> SandboxResult:
    status_r, status_w = os.pipe()
    start = time.monotonic()
    try:
        with open(stdin_path, "rb") as stdin_f:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", str(Path(__file__).resolve()), "--boot", str(spec_path),
                 str(status_w)],
                stdin=stdin_f, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work,
                env=_scrubbed_env(work), pass_fds=(status_w,), start_new_session=True)
    except OSError as e:
        os.close(status_r)
        os.close(status_w)
        return SandboxResult("error", None, detail=f"could not start the sandbox: {e}")
    os.close(status_w)

    out, err, status_buf = _Tail(limits.max_output_bytes), _Tail(limits.max_output_bytes), bytearray()
    events: list[dict] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    status_file = os.fdopen(status_r, "rb", buffering=0)
    sel.register(status_file, selectors.EVENT_READ, None)
    deadline = start + limits.wall_s
    timed_out = False
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(remaining, 0.5)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                elif key.data is None:
                    status_buf += data
                    events.extend(_parse_events(status_buf))
                else:
                    key.data.feed(data)
        if timed_out:
            _kill_tree(proc, events)
            # the pipes close once the whole tree is gone; drain what is left, briefly
            drain_until = time.monotonic() + 2.0
            while sel.get_map() and time.monotonic() < drain_until:
                for key, _ in sel.select(timeout=0.2):
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                    elif key.data is None:
                        status_buf += data
                        events.extend(_parse_events(status_buf))
                    else:
                        key.data.feed(data)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 2.0)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc, events)
            proc.wait()
    finally:
        sel.close()
        for f in (proc.stdout, proc.stderr, status_file):
            f.close()
        # no-namespace fallback: stragglers that stayed in the session's process group
        _killpg_quietly(proc.pid)
    return _classify(proc.returncode, events, out, err, time.monotonic() - start, timed_out, limits)


def _cpu_soft_limit(cpu_s: float) -> int:
    return max(1, int(cpu_s + 0.999))  # RLIMIT_CPU counts whole seconds


def _parse_events(buf: bytearray) -> list[dict]:
    events = []
    while b"\n" in buf:
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def _kill_tree(proc: subprocess.Popen, events: list[dict]):
    # Kill PID 1 of the sandbox's PID namespace first (the kernel then kills the whole tree,
    # including anything that escaped the process group with setsid), while the boot process,
    # its parent, is still alive and the pid cannot have been recycled.
    for ev in events:
        if ev.get("event") == "child":
            try:
                os.kill(int(ev["pid"]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    _killpg_quietly(proc.pid)


def _killpg_quietly(pgid: int):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(returncode: int | None, events: list[dict], out: _Tail, err: _Tail, duration: float,
              timed_out: bool, limits: SandboxLimits) -> SandboxResult:
    by_kind: dict[str, dict] = {}
    for ev in events:
        by_kind[ev.get("event", "")] = ev
    layers = tuple(by_kind.get("ready", {}).get("layers", ()))
    res = SandboxResult("ok", returncode, out.text(), err.text(), out.truncated, err.truncated,
                        round(duration, 4), isolation=layers,
                        sandbox_uid=by_kind.get("ready", {}).get("uid"))
    exit_ev = by_kind.get("exit")
    if exit_ev:
        res.cpu_s = exit_ev.get("cpu_s")
        res.max_rss_mb = exit_ev.get("max_rss_mb")
        # the boot process relays the code's own status (it is not the code's exit status)
        status = exit_ev.get("status")
        if status is not None:
            res.returncode = status
    if "error" in by_kind:
        res.reason, res.detail = "error", by_kind["error"].get("message", "")
        return res
    if timed_out:
        res.reason, res.detail = "timeout", "wall"
        return res
    if returncode == _BOOT_ERROR_EXIT and not exit_ev:
        res.reason, res.detail = "error", "the sandbox boot process failed: " + err.text()[-300:]
        return res
    rc = res.returncode
    if rc == 0:
        res.reason = "ok"
    elif rc is not None and rc < 0:
        sig = -rc
        # rusage is tick-granular: a CPU kill can read a little under the limit
        cpu_killed = sig == signal.SIGKILL and (res.cpu_s or 0) >= 0.9 * _cpu_soft_limit(limits.cpu_s)
        if sig == signal.SIGXCPU or cpu_killed:
            res.reason, res.detail = "timeout", "cpu"
        elif sig == signal.SIGXFSZ:
            res.reason, res.detail = "output_limit", "file size limit (RLIMIT_FSIZE)"
        else:
            res.reason, res.detail = "crash", signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
    elif "File too large" in res.stderr:  # Python ignores SIGXFSZ: the write fails with EFBIG
        res.reason, res.detail = "output_limit", "file size limit (RLIMIT_FSIZE)"
    elif "MemoryError" in res.stderr or "Cannot allocate memory" in res.stderr:
        res.reason, res.detail = "memory", "address-space limit (RLIMIT_AS)"
    else:
        res.reason = "fail"
    return res


# ----------------------------------------------------------------------------------------
# boot side: runs as `python -I -B sandbox.py --boot SPEC STATUS_FD` (stdlib only below)
# ----------------------------------------------------------------------------------------

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_NOEXEC = 1, 2, 4, 8
_AT_FDCWD, _AT_RECURSIVE, _SYS_MOUNT_SETATTR = -100, 0x8000, 442  # 442 on every architecture
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38


_EARLY_IMPORTS = ("builtins", "linecache", "resource", "tokenize", "traceback")

class _Boot:
    def __init__(self, spec_path: str, status_fd: int):
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        self.status_fd = status_fd
        spec = json.loads(Path(spec_path).read_text())
        self.work: str = spec["work"]
        self.args: list[str] = spec["args"]
        self.newroot: str = spec["newroot"]
        self.cgroup_procs: str | None = spec["cgroup"]
        self.tests: str | None = spec["tests"]
        self.token: str | None = spec["token"]
        self.limits = SandboxLimits(**spec["limits"])
        self.layers: list[str] = []
        self.uid: int | None = None

    # -- plumbing -----------------------------------------------------------------------
    def emit(self, **event):
        os.write(self.status_fd, (json.dumps(event) + "\n").encode())

    def _check(self, ret: int, what: str):
        if ret != 0:
            errno = self.ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def _mount(self, src, target, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()  # noqa: E731
        self._check(self.libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)),
                    f"mount {target}")

    def _mount_setattr(self, path: str, set_: int, clr: int, recursive: bool):
        attr = (self.ctypes.c_uint64 * 4)(set_, clr, 0, 0)
        ret = self.libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path.encode(),
                                _AT_RECURSIVE if recursive else 0, self.ctypes.byref(attr), 32)
        self._check(0 if ret == 0 else -1, f"mount_setattr {path}")

    def _write(self, path: str, text: str):
        with open(path, "w") as f:
            f.write(text)

    # -- the sequence -------------------------------------------------------------------
    def main(self) -> int:
        for name in _EARLY_IMPORTS:
            __import__(name)
        self._join_cgroup()
        flags = _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWNS
        if self.libc.unshare(flags) == 0:
            return self._boot_namespaced(userns=False)
        # not root: an unprivileged user namespace grants the same, inside it
        outer_uid, outer_gid = os.getuid(), os.getgid()
        if self.libc.unshare(flags | _CLONE_NEWUSER) == 0:
            self._write("/proc/self/setgroups", "deny")
            self._write("/proc/self/uid_map", f"0 {outer_uid} 1")
            self._write("/proc/self/gid_map", f"0 {outer_gid} 1")
            return self._boot_namespaced(userns=True)
        raise SandboxUnavailable("cannot create PID/network/mount namespaces (need root or unprivileged user "
                                 "namespaces); the sandbox refuses to run untrusted code without them")

    def _join_cgroup(self):
        """Move this process (and so everything it starts) into the run's memory cgroup."""
        self.memcap = "budget"
        if self.cgroup_procs:
            try:
                self._write(self.cgroup_procs, str(os.getpid()))
                self.memcap = "cgroup"
            except OSError:
                pass
        self.layers.append(f"memcap:{self.memcap}")

    def _boot_namespaced(self, userns: bool) -> int:
        # RLIMIT_NPROC counts every process of the real uid; a fresh uid (root path) has none
        nproc_base = _count_own_processes() if userns else 0
        self.layers += ["pidns", "netns"]
        pid = os.fork()
        if pid == 0:
            os._exit(self._guarded(self._init, userns, nproc_base))
        self.emit(event="child", pid=pid)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code

    def _guarded(self, fn, *args) -> int:
        try:
            return fn(*args)
        except BaseException as e:  # noqa: BLE001 - report any set-up failure, never hang
            self.emit(event="error", message=f"{type(e).__name__}: {e}")
            return _BOOT_ERROR_EXIT

    def _init(self, userns: bool, nproc_base: int) -> int:
        """PID 1 of the namespace: set up the mounts, start the code as PID 2, reap, relay.

        The code is not PID 1 itself because the kernel shields a namespace's init from
        signals it has no handler for (SIGXCPU, SIGTERM, ...), which would change how the
        code behaves. When this process exits the kernel kills whatever the code left behind.
        """
        os.setsid()  # kill(0, ...) from the code reaches only the sandbox's own tree
        self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        try:
            self._isolate_filesystem()
        except OSError as e:
            raise SandboxUnavailable(f"the sandbox's mount namespace could not be set up: {e}") from e
        self.layers.append("mountns")
        self.libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # the code cannot ptrace or read our memory
        if not userns:
            self._pick_uid()
        runner = os.fork()
        if runner == 0:
            os._exit(self._guarded(self._run_code, userns, nproc_base))
        while True:  # orphans are re-parented to us: reap them until the code itself exits
            pid, status, ru = os.wait4(-1, 0)
            if pid == runner:
                break
        code = os.waitstatus_to_exitcode(status)
        self.emit(event="exit", status=code, cpu_s=round(ru.ru_utime + ru.ru_stime, 4),
                  max_rss_mb=round(ru.ru_maxrss / 1024, 2))
        return code if code >= 0 else 128 - code

    def _pick_uid(self):
        self.uid = 100_000_000 + secrets.randbelow(1_900_000_000)
        os.chown(self.work, self.uid, self.uid)

    def _run_code(self, userns: bool, nproc_base: int) -> int:
        self._set_rlimits(nproc_base)
        self._drop_privileges(userns)
        # after the uid change (which clears it): die with our parent
        self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.chdir(self.work)
        os.environ.clear()
        os.environ.update(_scrubbed_env(Path(self.work)))
        self.layers += ["rlimits", "env"]
        if self.limits.python_guards:
            self.layers.append("guards")
        self.emit(event="ready", layers=self.layers, uid=self.uid)
        os.close(self.status_fd)  # the code must not be able to forge status events
        tests, token = self.tests, self.token
        self.tests = self.token = None  # only this frame keeps them
        self.ctypes = self.libc = None  # nothing the code can reach holds ctypes
        if self.limits.python_guards:
            _install_guards(self.work)
        return _run_main(self.work, self.args, tests, token)

    def _bind(self, src: str, target: str):
        if os.path.isdir(src):
            os.makedirs(target, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            open(target, "a").close()
        self._mount(src, target, None, _MS_BIND | _MS_REC)

    def _isolate_filesystem(self):
        """A new, read-only root holding only what Python code needs; then chroot into it.

        An allowlist, not a denylist: whatever is not bound here (the host's /tmp, /work,
        /root, pipeline outputs, site-packages with benchmark data) does not exist inside.
        """
        self._mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we do propagates to the host
        new = self.newroot
        self._mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
        for d in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(d):
                os.symlink(os.readlink(d), new + d)
            elif os.path.isdir(d):
                self._bind(d, new + d)
        # the interpreter (binary, libpython, stdlib) - but none of the installed packages
        stdlib = os.path.dirname(os.__file__)
        bound: list[str] = []
        interpreter = os.path.realpath(sys.executable)
        wanted = (sys.base_prefix + "/bin", sys.base_prefix + "/lib", stdlib, interpreter,
                  *[p for p in sys.path if p.endswith("lib-dynload")])
        for src in sorted({os.path.realpath(p) for p in wanted}):
            # parents first; a path already inside a bound tree (or under /usr) is there already
            if os.path.exists(src) and not any(_under(src, b) for b in bound + ["/usr", "/etc"]):
                self._bind(src, new + src)
                bound.append(src)
        import glob

        site_dirs = {os.path.realpath(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
        site_dirs |= {os.path.join(stdlib, "site-packages"), os.path.join(stdlib, "dist-packages")}
        for pattern in ("/usr/lib/python3*/*-packages", "/usr/local/lib/python3*/*-packages",
                        "/usr/share/python*", "/usr/lib/python3/dist-packages"):
            site_dirs |= set(glob.glob(pattern))
        for d in sorted(site_dirs):
            if os.path.isdir(new + d):
                self._mount("tmpfs", new + d, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0555,size=4k")
        # /dev: a few harmless character devices
        os.makedirs(new + "/dev", mode=0o755)
        self._mount("tmpfs", new + "/dev", "tmpfs", _MS_NOSUID, "mode=0755,size=4k")
        for dev in ("null", "zero", "full", "random", "urandom"):
            self._bind("/dev/" + dev, f"{new}/dev/{dev}")
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{new}/dev/{name}")
        os.makedirs(new + "/proc", mode=0o555)
        self._mount("proc", new + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        for d in ("/tmp", "/var/tmp"):  # empty and read-only: TMPDIR is the work dir
            os.makedirs(new + d, mode=0o755, exist_ok=True)
        work = os.path.realpath(self.work)
        self._bind(work, new + work)
        os.chroot(new)
        os.chdir("/")
        self._mount_setattr("/", _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, recursive=True)
        self._mount_setattr(work, _MOUNT_ATTR_NOEXEC | _MOUNT_ATTR_NODEV, _MOUNT_ATTR_RDONLY, recursive=False)

    def _set_rlimits(self, nproc_base: int):
        import resource

        lim = self.limits
        memory_mb, processes = min(lim.memory_mb, lim.total_memory_mb), lim.max_processes
        if self.memcap == "budget":  # no cgroup: processes x address space must fit the total
            processes = max(1, min(processes, lim.total_memory_mb // memory_mb))
        cpu = _cpu_soft_limit(lim.cpu_s)
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later if the code ignores it
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        for res_, value in ((resource.RLIMIT_AS, memory_mb * 1024 * 1024),
                            (resource.RLIMIT_FSIZE, lim.max_file_mb * 1024 * 1024),
                            (resource.RLIMIT_NOFILE, lim.max_open_files),
                            (resource.RLIMIT_CORE, 0),
                            (resource.RLIMIT_NPROC, nproc_base + processes)):
            resource.setrlimit(res_, (value, value))  # soft = hard: the code cannot raise them

    def _drop_privileges(self, userns: bool):
        if os.getuid() != 0:
            return
        try:
            last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        except OSError:
            last_cap = 40
        for cap in range(last_cap + 1):  # bounding set: no exec can regain a capability
            self.libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
        if self.uid is not None:
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)  # clears every capability
            self.layers.append("uid")
        elif userns:
            header = (self.ctypes.c_uint32 * 2)(0x20080522, 0)
            data = (self.ctypes.c_uint32 * 6)()
            self._check(self.libc.capset(header, data), "capset")
            self.layers.append("nocaps")
        if self.libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
            self.layers.append("nonewprivs")


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _count_own_processes() -> int:
    """Processes of our real uid: RLIMIT_NPROC counts them all, not just the sandbox's."""
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n


def _install_guards(work: str):
    """Audit hook: the Python-level layer. Cannot be removed once installed (PEP 578).

    Its state is immutable (frozensets, a mapping proxy) and its function and frames are out of
    reach (gc walks and harness frames are refused), so the snippet cannot edit it away.
    """
    import types

    for name in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[name]  # the boot used ctypes; the code must import it anew, which is refused
    work_real = os.path.realpath(work)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    allowed_devices = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})
    always_blocked = frozenset({"socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
                      "socket.getaddrinfo", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec",
                      "os.system", "os.spawn", "subprocess.Popen", "pty.spawn", "os.killpg",
                      # introspection that reaches the harness (and this hook's own closure)
                      "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
                      "sys.settrace", "sys.setprofile", "sys.addaudithook"})
    frame_attrs = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
    boot_file = os.path.realpath(__file__)
    path_events = types.MappingProxyType({"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
                   "os.chown": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,),
                   "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
                   "shutil.copyfile": (1,), "shutil.move": (1,)})
    realpath, fspath, getpid = os.path.realpath, os.fspath, os.getpid

    def inside(p) -> bool:
        if isinstance(p, int):
            return True  # an already-open descriptor
        p = realpath(fspath(p) if not isinstance(p, bytes) else p.decode(errors="replace"))
        return p == work_real or p.startswith(work_real + "/") or p in allowed_devices

    busy: list[int] = []

    def harness_frame(frame) -> bool:
        return frame is not None and realpath(frame.f_code.co_filename) == boot_file

    def hook(event: str, args: tuple):
        if event in always_blocked or event.startswith("ctypes."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in ("ctypes", "_ctypes"):
            raise PermissionError("sandbox: ctypes is not allowed (it writes memory without audit events)")
        if event == "sys._getframe" and harness_frame(args[0]):
            raise PermissionError("sandbox: the harness's frames are not accessible")
        if event == "object.__getattr__" and args[1] in frame_attrs and not busy:
            busy.append(1)  # reading the attribute here raises this event again
            try:
                frame = getattr(args[0], args[1], None)
            finally:
                busy.pop()
            if harness_frame(frame):
                raise PermissionError("sandbox: the harness's frames are not accessible")
        if event == "object.__setattr__" and args[1] in ("__code__", "__closure__", "__globals__"):
            raise PermissionError(f"sandbox: setting {args[1]} is not allowed")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, (str, bytes)) and _reads_process_memory(path):
                raise PermissionError("sandbox: process memory is not readable")
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing outside the work dir is not allowed: {path!r}")
        elif event == "os.kill":
            if args[0] != getpid():
                raise PermissionError("sandbox: signalling other processes is not allowed")
        elif event in path_events:
            for i in path_events[event]:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the work dir is not allowed")

    sys.addaudithook(hook)


def _reads_process_memory(path: str | bytes) -> bool:
    p = path.decode(errors="replace") if isinstance(path, bytes) else path
    return p.startswith("/proc/") and p.rstrip("/").rsplit("/", 1)[-1] in ("mem", "environ", "pagemap")


def _run_main(work: str, args: list[str], tests: str | None = None, token: str | None = None) -> int:
    """Run main.py like ``python main.py`` would; then, with ``tests``, the tests in its namespace.

    With tests, both run in worker threads (their frames' f_back ends there, not at this frame),
    and only this frame holds the completion token, printed once the tests finished without an
    exception. A ``sys.exit()`` in the candidate no longer skips the tests; ``os._exit`` skips
    the token too.
    """
    import builtins
    import threading
    import traceback

    main = os.path.join(work, "main.py")
    sys.argv = [main, *args]
    sys.path.insert(0, work)
    namespace = {"__name__": "__main__", "__file__": main, "__builtins__": builtins}
    outcome: dict[str, int] = {}

    def execute(source_name: str, source: str | None):
        code = 0
        try:
            if source is None:
                with open(source_name, encoding="utf-8") as f:
                    source = f.read()
            exec(compile(source, source_name, "exec"), namespace)  # noqa: S102
        except SystemExit as e:
            if source_name == "<tests>":  # the tests did not run to their end
                print("SystemExit raised during the tests", file=sys.stderr)
                code = 1
            else:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if e.code is not None and not isinstance(e.code, int):
                    print(e.code, file=sys.stderr)
        except BaseException as e:  # noqa: BLE001 - the code's own failure: report it like python would
            # skip this frame (tb_next is not audited; tb_frame of a harness frame is refused)
            try:
                traceback.print_exception(type(e), e, e.__traceback__.tb_next or e.__traceback__)
            except BaseException:  # noqa: BLE001 - e.g. a chained traceback the guards refuse to walk
                print(f"{type(e).__name__}: {e}", file=sys.stderr)
            code = 1
        outcome[source_name] = code

    if tests is None:  # the main thread, as `python main.py` (signal handlers work); no secret here
        execute(main, None)
        return _flush(outcome[main])
    # Worker threads: the code's frames chain back to threading's bootstrap, not to this frame.
    code = 1
    for name, source in ((main, None), ("<tests>", tests)):
        worker = threading.Thread(target=execute, args=(name, source), name="sandboxed", daemon=True)
        worker.start()
        worker.join()
        code = outcome.get(name, 1)  # no outcome: the thread was ended from inside
        if code != 0:
            break
    if code == 0:
        _flush(0)
        os.write(1, f"\n{token}\n".encode())
    return _flush(code)


def _flush(code: int) -> int:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    return code


def _boot_main(argv: list[str]) -> int:
    spec_path, status_fd = argv[0], int(argv[1])
    try:
        boot = _Boot(spec_path, status_fd)
        return boot.main()
    except BaseException as e:  # noqa: BLE001 - the host must learn why, not hang
        message = f"{type(e).__name__}: {e}"
        try:
            os.write(status_fd, (json.dumps({"event": "error", "message": message}) + "\n").encode())
        except OSError:  # already closed: the code had started; say it on stderr instead
            os.write(2, f"sandbox boot: {message}\n".encode())
        return _BOOT_ERROR_EXIT


if __name__ == "__main__" and len(sys.argv) >= 4 and sys.argv[1] == "--boot":
    sys.stdout.flush()
    os._exit(_boot_main(sys.argv[2:]))
