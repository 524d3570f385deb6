"""Headless Chromium (Debian's `chromium`) from the command line: a page's DOM after its scripts ran, a screenshot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

# root in a container: Chromium's own sandbox cannot start; there is no GPU
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--hide-scrollbars"]


def dump_dom(url: str, virtual_time_ms: int = 15000) -> str:
    """The DOM once the page's scripts had virtual_time_ms of (virtual) time: what a JS app rendered."""
    done = subprocess.run(
        ["chromium", *FLAGS, f"--virtual-time-budget={virtual_time_ms}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, path: Path, virtual_time_ms: int = 15000) -> np.ndarray:
    """Save a PNG of the page and return its pixels (height x width x channels, floats in 0..1)."""
    import matplotlib.image

    done = subprocess.run(
        ["chromium", *FLAGS, f"--virtual-time-budget={virtual_time_ms}", f"--screenshot={path}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and path.exists(), done.stderr[-2000:]
    return matplotlib.image.imread(path)


def distinct_colours(pixels: np.ndarray) -> int:
    """How many different colours the image has: 1 for a blank page."""
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


class DevTools:
    """Headless Chromium driven over its DevTools protocol (for a page that needs state before it loads: the Prefect
    UI keeps its password in localStorage, `prefect-password`, and shows a login form without it)."""

    def __init__(self, profile: Path):
        import json
        import time
        import urllib.request

        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [
                "chromium",
                *FLAGS,
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--no-first-run",
                "--disable-background-networking",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not start its DevTools"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        page = next(t for t in targets if t["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        import json

        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, wait_for: str | None = None, timeout: float = 60) -> str:
        """Load url; wait until its DOM holds wait_for (if given); return the DOM."""
        import time

        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while True:
            dom = self.evaluate("document.documentElement ? document.documentElement.outerHTML : ''") or ""
            if (wait_for is None and self.evaluate("document.readyState") == "complete") or (
                wait_for and wait_for in dom
            ):
                return dom
            if time.monotonic() > deadline:
                return dom
            time.sleep(0.5)

    def screenshot(self, path: Path) -> np.ndarray:
        import base64

        import matplotlib.image

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return matplotlib.image.imread(path)

    def close(self) -> None:
        self.socket.close()
        self.proc.kill()
        self.proc.wait()
