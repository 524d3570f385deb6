"""Shared fixtures: small synthetic Fashion-MNIST-shaped IDX files, made by the tests themselves."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import prepare
from infra.records import ChangeType, IterationRecord, Status, Verdict
from infra.sandbox.identity import DEFAULT_SANDBOX_UID, UID_ENV

# --- two lanes under xdist (`make test`: -n 2 --dist loadgroup) ---------------------------------------
# The process-driven tests (marked process_driven: SIGKILLed runs, deployments, servers) mostly wait on other
# processes, so they run in a worker of their own beside all the other tests, which keep the other worker,
# one at a time, as without xdist. Each worker's candidates run as their own sandbox user: the hostile tests
# count and kill the sandbox user's processes, and must not see the other lane's.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"; empty without xdist
if WORKER:
    os.environ[UID_ENV] = str(int(os.environ.get(UID_ENV, DEFAULT_SANDBOX_UID)) + int(WORKER.removeprefix("gw")))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        lane = "process-driven" if item.get_closest_marker("process_driven") else "in-process"
        item.add_marker(pytest.mark.xdist_group(lane))


REAL_DATA_AVAILABLE = any(
    (d / "train-images-idx3-ubyte.gz").exists() or (d / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
    for d in (prepare.DEBIAN_DIR, Path.home() / ".cache" / "autoresearch")
)
requires_real_data = pytest.mark.skipif(not REAL_DATA_AVAILABLE, reason="real Fashion-MNIST not installed (make setup)")
requires_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
requires_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed (make setup installs Debian's chromium)"
)


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def learnable_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each class lights up its own band of rows, plus noise: a linear model can learn it."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        images[i, label * 2 : label * 2 + 3, :] = 230
    return images.astype(np.uint8)


def make_idx_files(directory: Path, n_train: int = 600, n_test: int = 100, seed: int = 0) -> dict[str, bytes]:
    """Write the four files as .gz into directory; return their decompressed contents."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    contents = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n)
        contents[f"{prefix}-images-idx3-ubyte"] = idx_images(learnable_images(labels, rng))
        contents[f"{prefix}-labels-idx1-ubyte"] = idx_labels(labels)
    for name, content in contents.items():
        with gzip.open(directory / f"{name}.gz", "wb") as f:
            f.write(content)
    return contents


@pytest.fixture
def synthetic_data(tmp_path, monkeypatch):
    """prepare.py pointed at small synthetic files: a source dir, an empty cache, no Debian dir, no download."""
    return use_synthetic_data(tmp_path, monkeypatch)


def use_synthetic_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The synthetic_data fixture's work, for fixtures of a wider scope (with a MonkeyPatch of their own)."""
    source = tmp_path / "source"
    contents = make_idx_files(source)
    files = {name: ("0" * 32, hashlib.md5(content).hexdigest()) for name, content in contents.items()}
    monkeypatch.setattr(prepare, "FILES", files)
    monkeypatch.setattr(prepare, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(prepare, "VAL_SIZE", 100)
    monkeypatch.setattr(prepare, "_download", _no_network)
    monkeypatch.setenv("AUTORESEARCH_DATA_DIR", str(source))
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    return source


def _no_network() -> None:
    raise OSError("network disabled in tests")


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for every in-process flow test (about 10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    import infra  # noqa: F401  (Prefect's offline settings first)

    with prefect_test_harness(server_startup_timeout=90):
        yield


def record(iteration: int, **fields) -> IterationRecord:
    """A finished iteration record for proposer tests (status, verdict and change type may be given as strings)."""
    values = {
        "status": Status.OK,
        "verdict": Verdict.DISCARD,
        "change_type": ChangeType.PARAMETRIC,
        "finished": True,
        **fields,
    }
    values.update(
        status=Status(values["status"]),
        verdict=Verdict(values["verdict"]),
        change_type=ChangeType(values["change_type"]),
    )
    return IterationRecord(iteration=iteration, **values)
