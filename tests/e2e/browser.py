"""Headless Chromium driven over the Chrome DevTools Protocol, standard library only.

The browser speaks CDP over a pair of pipes (``--remote-debugging-pipe``: it reads commands on
fd 3 and writes replies on fd 4, each message one JSON object ended by a NUL byte), so no
websocket client and no downloaded browser build is needed; Debian's ``chromium`` suffices.

    with HeadlessChromium() as browser:
        browser.open("http://127.0.0.1:5000/#/models")
        browser.wait_for_text(["Registered Models"], timeout=30)
        browser.screenshot(tmp_path / "models.png")

A page of a single-page app is "ready" when the text we expect is on it, so tests wait for
text (``wait_for_text``) rather than for load events, which fire before React has rendered.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 30


_TRAMPOLINE = (
    "import os, sys\n"
    "cmd, evt = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.dup2(cmd, 3); os.dup2(evt, 4); os.close(cmd); os.close(evt)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


class BrowserError(RuntimeError):
    """Chromium failed to start, died, or a page never showed what was expected."""


def find_chromium() -> str | None:
    """``$WHALE_CHROMIUM`` if set, else the first Chromium/Chrome on PATH, else None."""
    explicit = os.environ.get("WHALE_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def skip_reason() -> str | None:
    """Why a browser test cannot run here, or None when Chromium is available."""
    explicit = os.environ.get("WHALE_CHROMIUM")
    if explicit and find_chromium() is None:
        return f"$WHALE_CHROMIUM={explicit} is not an executable file"
    if find_chromium() is None:
        return ("headless Chromium not found (looked for $WHALE_CHROMIUM, then "
                f"{', '.join(CANDIDATES)} on PATH); install it with `apt-get install chromium`")
    return None


class HeadlessChromium:
    """One headless Chromium process with one page (tab); a context manager.

    The browser runs in its own process group with a throwaway profile; ``close()`` (and
    leaving the ``with`` block) kills the whole group, renderer and GPU helpers included.
    """

    def __init__(self, binary: str | None = None, window: tuple[int, int] = (1600, 1000),
                 log_path: str | Path | None = None):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise BrowserError(skip_reason())
        self.window = window
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen | None = None
        self._profile: str | None = None
        self._to_browser: int | None = None
        self._from_browser: int | None = None
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None
        self.url: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> "HeadlessChromium":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self._profile = tempfile.mkdtemp(prefix="whale-chromium-")
        cmd_r, cmd_w = os.pipe()  # we write commands, the browser reads them on fd 3
        evt_r, evt_w = os.pipe()  # the browser writes replies on fd 4, we read them
        cmd_r, evt_w = _above(cmd_r, 10), _above(evt_w, 10)
        width, height = self.window
        args = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--no-first-run", "--no-default-browser-check",
            "--mute-audio", "--hide-scrollbars", f"--window-size={width},{height}",
            f"--user-data-dir={self._profile}", "--remote-debugging-pipe", "about:blank",
        ]
        # Put the pipe ends on fds 3 and 4 in the child with a tiny exec trampoline: no
        # preexec_fn (unsafe in threaded processes such as a Ray driver), and no /bin/sh
        # redirect (dash only knows single-digit fds).
        launcher = [sys.executable, "-c", _TRAMPOLINE, str(cmd_r), str(evt_w), self.binary, *args]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(launcher, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          pass_fds=(cmd_r, evt_w), start_new_session=True)
        except OSError as e:
            raise BrowserError(f"could not start {self.binary}: {e}") from e
        finally:
            os.close(cmd_r)
            os.close(evt_w)
            if log is not subprocess.DEVNULL:
                log.close()
        self._to_browser, self._from_browser = cmd_w, evt_r
        try:
            self._call("Browser.getVersion", timeout=START_TIMEOUT_S, session=False)
            target = self._call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                       session=False)["sessionId"]
            self._call("Page.enable")
            self._call("Emulation.setDeviceMetricsOverride",
                       {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self._to_browser, self._from_browser):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to_browser = self._from_browser = None
        if self._proc is not None:
            _kill_group(self._proc)
            self._proc = None
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    # -- the page -----------------------------------------------------------------------------
    def open(self, url: str, timeout: float = COMMAND_TIMEOUT_S, fresh: bool = True) -> None:
        """Navigate the page. Returns once the navigation is committed, not once rendered.

        ``fresh``: load the document anew even if only the ``#fragment`` differs, so a
        single-page app starts from the URL alone (as a user's opened link does) instead of
        routing inside the old page, where stale client state can linger.
        """
        if fresh and self.url is not None:
            self._call("Page.navigate", {"url": "about:blank"}, timeout=timeout)
        reply = self._call("Page.navigate", {"url": url}, timeout=timeout)
        if reply.get("errorText"):
            raise BrowserError(f"could not open {url}: {reply['errorText']}")
        self.url = url

    def evaluate(self, expression: str, timeout: float = COMMAND_TIMEOUT_S) -> Any:
        """Run JavaScript in the page and return its (JSON-serialisable) value."""
        reply = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            message = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {message}")
        return reply.get("result", {}).get("value")

    def text(self) -> str:
        """The page's visible text (``document.body.innerText``)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, texts: str | re.Pattern | Iterable[str | re.Pattern], timeout: float = 30,
                      poll_s: float = 0.25) -> str:
        """Poll the visible text until it holds every one of ``texts`` (substrings, or compiled
        regular expressions to search for); returns that text.

        Raises BrowserError naming what is missing and the end of what the page did show.
        """
        wanted = [texts] if isinstance(texts, (str, re.Pattern)) else list(texts)
        deadline = time.monotonic() + timeout
        while True:
            shown = self.text()
            missing = [t for t in wanted if not _found(t, shown)]
            if not missing:
                return shown
            if time.monotonic() > deadline:
                tail = " ".join(shown.split())[-1500:]
                named = [t.pattern if isinstance(t, re.Pattern) else t for t in missing]
                raise BrowserError(f"{self.url}: after {timeout:.0f}s the page does not show "
                                   f"{named}; it shows: {tail!r}")
            time.sleep(poll_s)

    def wait_for(self, expression: str, timeout: float = 30, poll_s: float = 0.25,
                 what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{self.url}: after {timeout:.0f}s still not true: {what or expression}")
            time.sleep(poll_s)

    def screenshot(self, path: str | Path, full_page: bool = False) -> Path:
        """Save a PNG of the viewport (or of the whole page) and return its path."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self._call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        data = base64.b64decode(self._call("Page.captureScreenshot", params)["data"])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    # -- the protocol -------------------------------------------------------------------------
    def _call(self, method: str, params: dict | None = None, timeout: float = COMMAND_TIMEOUT_S,
              session: bool = True) -> dict:
        if self._to_browser is None:
            raise BrowserError("the browser is not running")
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        try:
            os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserError(f"Chromium died before {method}{self._exit_note()}") from None
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline, method)
            if reply.get("id") != msg["id"]:
                continue  # an event, or a reply to an earlier call that timed out
            if "error" in reply:
                raise BrowserError(f"{method} failed: {reply['error'].get('message')}")
            return reply.get("result", {})

    def _read_message(self, deadline: float, method: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer {method} in time{self._exit_note()}")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium closed the DevTools pipe during {method}{self._exit_note()}")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def _exit_note(self) -> str:
        code = self._proc.poll() if self._proc else None
        note = f" (exit code {code})" if code is not None else ""
        return note + (f"; see {self.log_path}" if self.log_path else "")


def _found(wanted: str | re.Pattern, text: str) -> bool:
    return bool(wanted.search(text)) if isinstance(wanted, re.Pattern) else wanted in text


def _above(fd: int, lowest: int) -> int:
    """``fd`` moved to a number >= ``lowest``, so the child's ``3<&N 4>&M`` cannot clash."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the browser's process group, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    # helpers (zygote, renderers) share the group and may outlive the main process
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
