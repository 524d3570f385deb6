"""Headless Chromium (Debian's `chromium`) from the command line: a page's DOM after its scripts ran, a screenshot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

# root in a container: Chromium's own sandbox cannot start; there is no GPU
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--hide-scrollbars"]


def dump_dom(url: str, virtual_time_ms: int = 15000) -> str:
    """The DOM once the page's scripts had virtual_time_ms of (virtual) time: what a JS app rendered."""
    done = subprocess.run(["chromium", *FLAGS, f"--virtual-time-budget={virtual_time_ms}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, path: Path, virtual_time_ms: int = 15000) -> np.ndarray:
    """Save a PNG of the page and return its pixels (height x width x channels, floats in 0..1)."""
    import matplotlib.image

    done = subprocess.run(["chromium", *FLAGS, f"--virtual-time-budget={virtual_time_ms}", f"--screenshot={path}", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and path.exists(), done.stderr[-2000:]
    return matplotlib.image.imread(path)


def distinct_colours(pixels: np.ndarray) -> int:
    """How many different colours the image has: 1 for a blank page."""
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))
