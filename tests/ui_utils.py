"""A headless Chromium driven over the DevTools protocol on a pipe (stdlib only, no browser download).

    with Browser(tmp_path / "profile") as page:       # /usr/bin/chromium (Debian package `chromium`)
        page.goto("http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning")
        page.wait_for("document.body.innerText.includes('Model training')")
        page.type_into("input[placeholder='Search metric charts']", "trajectory/")
        page.screenshot(tmp_path / "charts.png")

Chromium runs with a fresh profile and no network besides what the page asks of 127.0.0.1 (--disable-quic,
no background networking, component updates or sync). --remote-debugging-pipe makes it read DevTools commands
from fd 3 and write answers to fd 4, each a JSON object ended by a NUL byte.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe")


class BrowserError(RuntimeError):
    pass


class Browser:
    """One page of a headless Chromium; a context manager that always ends the browser."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        self.width, self.height = width, height
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire():  # in the child: its fd 3 reads the commands, its fd 4 carries its answers
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)  # above 4, so dup2 below always copies (and the
            os.dup2(r, 3)                                       # copies are inheritable, unlike os.pipe's fds)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._next = b"", 0
        self.session = None
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        """Send one DevTools command (to the page once attached) and return its result."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise BrowserError("Chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium exited (status {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 60.0, settle: float = 0.0):
        """Poll a JavaScript condition until it is truthy (then wait `settle` seconds more); returns its value."""
        deadline, error = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(condition)
            except BrowserError as exc:  # e.g. no document.body yet while the page loads
                value, error = None, exc
            if value:
                time.sleep(settle)
                return value
            time.sleep(0.25)
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for: {condition}" + (f" ({error})" if error
                                                                                          else ""))

    def type_into(self, selector: str, text: str) -> None:
        """Focus the element and type `text` as keyboard input (what a user's typing sends)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", {"text": text})

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)
