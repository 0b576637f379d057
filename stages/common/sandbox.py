"""Run untrusted Python in a subprocess with time, memory, process, file and network limits.

    result = run_python("print(sum(range(10)))", limits=SandboxLimits(wall_s=5))
    result.passed, result.reason, result.stdout      # True, "ok", "45\\n"

Used to execute model-written code against unit tests (distill's code verifier, eval's
HumanEval suite). This module imports only the standard library: the same file is the
*boot* program of every sandboxed child (``python -I -B sandbox.py --boot SPEC``), so it has
to start in milliseconds.

Layers, strongest first. Which ones applied is reported in ``SandboxResult.isolation``; the
strength depends on what the kernel lets us do, so read it rather than assume it.

Kernel layers (need root with CAP_SYS_ADMIN, or unprivileged user namespaces):
  ``pidns``   a new PID namespace: the code runs as PID 1 of its own tree and cannot see or
              signal host processes; when it exits, or the host kills it on a timeout, the
              kernel kills every process it started (fork bombs and daemons included).
  ``netns``   a new network namespace with no interfaces up: no TCP/UDP to anything, no
              abstract Unix sockets of the host.
  ``mountns`` a private mount namespace in which the whole tree is remounted read-only
              (mount_setattr, recursive) except the fresh work directory (also noexec);
              /tmp, /var/tmp, /dev/shm, /run and home directories are replaced by empty
              tmpfs, and /proc is the new PID namespace's own.
  ``uid``     (root only) the code runs as a random unprivileged uid/gid with no groups and no
              capabilities, so RLIMIT_NPROC binds (the kernel does not enforce it for root),
              file permissions apply and root-owned processes cannot be signalled.
  ``nocaps``  (user-namespace path) all capabilities and the bounding set dropped.
  ``nonewprivs`` PR_SET_NO_NEW_PRIVS: setuid binaries cannot raise privileges.
Always:
  ``rlimits`` CPU seconds, address space (RLIMIT_AS), processes, file size, open files, no core.
  ``env``     a scrubbed environment (PATH, HOME and TMPDIR = the work dir, a UTF-8 locale).
  ``guards``  (optional, on by default) a Python audit hook that refuses sockets, process
              creation, ctypes, signals to other processes and writes outside the work dir.
              Defence in depth only: native code (a C extension) is not bound by it.

Without the kernel layers (``isolation="basic"``, or ``"auto"`` on a machine that allows
neither) only rlimits, env scrubbing and the audit hook remain: good against accidents
(an infinite loop, a runaway allocation, a stray write), not against deliberate escape.
``isolation="strict"`` refuses to run unless pidns, netns and mountns all apply.

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
    isolation: str = "auto"         # auto | strict | basic (see module docstring)
    python_guards: bool = True      # the audit-hook layer

    def __post_init__(self):
        if self.isolation not in ("auto", "strict", "basic"):
            raise ValueError(f"isolation must be auto, strict or basic, not {self.isolation!r}")
        for name in ("wall_s", "cpu_s", "memory_mb", "max_processes", "max_output_bytes",
                     "max_file_mb", "max_open_files"):
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
               args: Sequence[str] = ()) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh work directory and return what happened.

    ``files`` are extra files written next to it (relative paths inside the work dir).
    Thread-safe (no preexec_fn), and usable inside Ray tasks: every call is its own process.
    """
    root = Path(tempfile.mkdtemp(prefix="whale-sbx-"))
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
        spec = {"work": str(work), "args": list(args), "limits": asdict(limits),
                "hide": sorted({"/tmp", "/var/tmp", "/dev/shm", "/run", "/root",
                                os.path.expanduser("~")} | {tempfile.gettempdir()})}
        spec_path = root / "spec.json"
        spec_path.write_text(json.dumps(spec))
        return _supervise(spec_path, stdin_path, work, limits)
    finally:
        shutil.rmtree(root, ignore_errors=True)


_LAYER_CACHE: dict[tuple[str, bool], tuple[str, ...]] = {}


def isolation_layers(isolation: str = "auto", python_guards: bool = True) -> tuple[str, ...]:
    """The layers a sandbox run gets on this machine (probed once per process, then cached)."""
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
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 24, 38


_EARLY_IMPORTS = ("builtins", "linecache", "resource", "tokenize", "traceback")
_PRELOAD = ("json", "re", "math", "cmath", "collections", "itertools", "functools", "operator", "string",
            "fractions", "decimal", "heapq", "bisect", "random", "statistics", "typing", "dataclasses",
            "copy", "time", "datetime", "textwrap", "unicodedata", "array", "hashlib", "enum", "abc")


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
        self.hide: list[str] = spec["hide"]
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
        for name in _EARLY_IMPORTS:  # before a privilege drop can hide the stdlib (basic mode as root)
            __import__(name)
        if self.limits.isolation != "basic":
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
            if self.limits.isolation == "strict":
                raise SandboxUnavailable("cannot create PID/network/mount namespaces "
                                         "(need root or unprivileged user namespaces)")
        if os.getuid() == 0:
            self._pick_uid()
            if any(_first_closed_ancestor(p) for p in (sys.base_prefix, sys.prefix)):
                # no mount namespace to re-expose an interpreter the new uid cannot reach
                # (e.g. under /root): import the usual modules while we still can
                for name in _PRELOAD:
                    try:
                        __import__(name)
                    except ImportError:
                        pass
        return self._run_code(userns=False, nproc_base=0 if self.uid else _count_own_processes())

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
            self.layers.append("mountns")
        except OSError as e:
            if self.limits.isolation == "strict":
                raise SandboxUnavailable(f"read-only mount namespace failed: {e}") from e
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
        if self.limits.python_guards:
            _install_guards(self.work)
        return _run_main(self.work, self.args)

    def _isolate_filesystem(self):
        """Private mount tree: everything read-only, hidden dirs emptied, the work dir writable."""
        self._mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we do propagates to the host
        self._mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        # Paths the code needs that a hidden directory would cover, or that an unprivileged
        # uid cannot reach (e.g. a Python under /root, mode 0700): kept by re-binding them
        # inside the tmpfs that replaces the hidden directory.
        needed = {os.path.realpath(p) for p in
                  (sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                   *[p for p in sys.path if os.path.isdir(p)])}
        hide = {os.path.realpath(h) for h in self.hide if os.path.isdir(h)}
        hide |= {a for p in needed if (a := _first_closed_ancestor(p))}
        hide = {h for h in hide if h != "/" and not any(_under(h, o) for o in hide if o != h)}
        keep = sorted(needed | {os.path.realpath(self.work)})
        fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in keep if os.path.isdir(p)}
        rebound = set()
        for h in sorted(hide):
            self._mount("tmpfs", h, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
            for p, fd in fds.items():
                if _under(p, h) and not any(_under(p, r) for r in rebound):
                    os.makedirs(p, mode=0o755, exist_ok=True)
                    self._mount(f"/proc/self/fd/{fd}", p, None, _MS_BIND | _MS_REC)
                    rebound.add(p)
        work = os.path.realpath(self.work)
        if work not in rebound:  # make the work dir its own mount so it can stay writable
            self._mount(work, work, None, _MS_BIND | _MS_REC)
        for fd in fds.values():
            os.close(fd)
        self._mount_setattr("/", _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, recursive=True)
        self._mount_setattr(work, _MOUNT_ATTR_NOEXEC | _MOUNT_ATTR_NODEV, _MOUNT_ATTR_RDONLY, recursive=False)

    def _set_rlimits(self, nproc_base: int):
        import resource

        lim = self.limits
        cpu = _cpu_soft_limit(lim.cpu_s)
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later if the code ignores it
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        for res_, value in ((resource.RLIMIT_AS, lim.memory_mb * 1024 * 1024),
                            (resource.RLIMIT_FSIZE, lim.max_file_mb * 1024 * 1024),
                            (resource.RLIMIT_NOFILE, lim.max_open_files),
                            (resource.RLIMIT_CORE, 0),
                            (resource.RLIMIT_NPROC, nproc_base + lim.max_processes)):
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


def _first_closed_ancestor(path: str) -> str | None:
    """The highest directory above ``path`` that others may not traverse (no o+x), if any."""
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        d = str(Path(*parts[:i]))
        try:
            if not os.stat(d).st_mode & 0o001:
                return d
        except OSError:
            return None
    return None


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
    """Audit hook: the Python-level layer. Cannot be removed once installed (PEP 578)."""
    work_real = os.path.realpath(work)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    allowed_devices = {"/dev/null", "/dev/stdout", "/dev/stderr"}
    always_blocked = {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
                      "socket.getaddrinfo", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec",
                      "os.system", "os.spawn", "subprocess.Popen", "pty.spawn", "ctypes.dlopen",
                      "ctypes.dlsym", "ctypes.call_function", "os.killpg"}
    path_events = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
                   "os.chown": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,),
                   "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
                   "shutil.copyfile": (1,), "shutil.move": (1,)}
    realpath, fspath, getpid = os.path.realpath, os.fspath, os.getpid

    def inside(p) -> bool:
        if isinstance(p, int):
            return True  # an already-open descriptor
        p = realpath(fspath(p) if not isinstance(p, bytes) else p.decode(errors="replace"))
        return p == work_real or p.startswith(work_real + "/") or p in allowed_devices

    def hook(event: str, args: tuple):
        if event in always_blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
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


def _run_main(work: str, args: list[str]) -> int:
    import builtins
    import traceback

    main = os.path.join(work, "main.py")
    sys.argv = [main, *args]
    sys.path.insert(0, work)
    code = 0
    try:
        with open(main, encoding="utf-8") as f:
            source = f.read()
        # a fresh __main__ namespace, as `python main.py` would give (runpy would need more imports)
        exec(compile(source, main, "exec"), {"__name__": "__main__", "__file__": main,  # noqa: S102
                                             "__builtins__": builtins})
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException as e:  # noqa: BLE001 - the code's own failure: report it like python would
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != main:  # hide the boot's frames
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb or e.__traceback__)
        code = 1
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
