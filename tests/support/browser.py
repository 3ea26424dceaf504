"""A headless Chromium (Debian's ``chromium``) driven through the DevTools protocol, to read
and photograph pages of the Prefect UI as a person sees them.

The Prefect UI is a single-page app: the HTML the server sends is an empty shell, and what a
person reads appears only after its JavaScript has fetched the run from the API. So a page is
read by polling the rendered text until it says what we wait for, not after a fixed delay.
The protocol runs over ``--remote-debugging-pipe`` (file descriptors 3 and 4 of the child,
NUL-separated JSON), so no port is opened and no websocket client is needed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The Chromium executable on PATH, or None where none is installed."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _above_4(fds: tuple[int, int]) -> tuple[int, int]:
    """The two descriptors duplicated to numbers of 10 and up (the originals closed)."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved[0], moved[1]


class BrowserError(RuntimeError):
    """Chromium died, answered with an error, or a page never showed what was awaited."""


class Browser:
    """One headless Chromium with one tab; use as a context manager."""

    def __init__(self, width: int = 1400, height: int = 1000, executable: str | None = None):
        self.width, self.height = width, height
        self.executable = executable or chromium_path()
        if self.executable is None:
            raise BrowserError("Chromium is not installed (Debian: apt-get install chromium)")
        self._profile = tempfile.mkdtemp(prefix="transfer-pipe-chromium-")
        self._next_id = 0
        self._buffer = b""
        self._session = ""

    # --- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        # The pipe ends, moved above the descriptors the shell redirects (3, 4), so that
        # moving one onto 3 or 4 can never overwrite the other.
        to_child_r, self._to_child = _above_4(os.pipe())
        self._from_child, from_child_w = _above_4(os.pipe())
        assert self.executable is not None
        chromium = [
            self.executable,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        # --remote-debugging-pipe reads commands on descriptor 3 and answers on 4 (bash:
        # dash cannot redirect from descriptors above 9).
        redirect = f'exec "$@" 3<&{to_child_r} 4>&{from_child_w}'
        self._process = subprocess.Popen(
            ["bash", "-c", redirect, "bash", *chromium],
            pass_fds=(to_child_r, from_child_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # GL and dbus chatter of a machine without a display
        )
        os.close(to_child_r)
        os.close(from_child_w)
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]
        metrics = {"width": self.width, "height": self.height}
        self._call(
            "Emulation.setDeviceMetricsOverride",
            metrics | {"deviceScaleFactor": 1, "mobile": False},
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._session = ""
            self._call("Browser.close", {}, timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self._process.wait(20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    # --- the protocol -------------------------------------------------------------------

    def _call(self, method: str, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """Send one command (to the tab once attached) and return its result; events that
        arrive meanwhile are dropped (nothing here listens to events)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session:
            message["sessionId"] = self._session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read_message()
            if reply.get("id") != self._next_id:
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply["result"]
            return result
        raise BrowserError(f"{method}: no answer from Chromium in {timeout} s")

    def _read_message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium exited (status {self._process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        reply = self._call("Runtime.evaluate", params)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    # --- what a person does ----------------------------------------------------------------

    def open(self, url: str) -> None:
        """Go to ``url`` (returns once navigation started; wait_for_text waits for content)."""
        self._call("Page.navigate", {"url": url})

    def text(self) -> str:
        """The page's rendered text, as a person reads it (``innerText``: hidden text is not)."""
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def wait_for_text(self, *needles: str, timeout: float = 60) -> str:
        """Poll until the rendered text contains every needle; return that text."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(needle in text for needle in needles):
                return text
            time.sleep(0.5)
        missing = [needle for needle in needles if needle not in text]
        raise BrowserError(f"the page never showed {missing} in {timeout} s; it showed:\n{text}")

    def click_text(self, label: str) -> None:
        """Click the innermost visible element whose own text is exactly ``label`` (a tab,
        a button, a link), as a person would."""
        script = f"""(() => {{
            const label = {json.dumps(label)};
            const hits = [...document.querySelectorAll('body *')].filter(e =>
                e.offsetParent !== null && e.innerText && e.innerText.trim() === label);
            const innermost = hits.filter(e => !hits.some(o => o !== e && e.contains(o)));
            if (!innermost.length) return false;
            innermost[0].click();
            return true;
        }})()"""
        if not self.evaluate(script):
            raise BrowserError(f"nothing on the page reads {label!r}:\n{self.text()}")

    def screenshot(self, path: Path) -> Path:
        """Save what the window shows as a PNG."""
        data = self._call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
