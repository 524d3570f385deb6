"""
prepare.py: the fixed infrastructure of autoresearch for Fashion-MNIST.

=== FIXED: do not modify during a run. ===
The research agent edits train.py only. This file is copied read-only into
every sandbox, and the orchestrator runs the evaluation section from its own
copy, so a candidate can neither change the data it is scored on nor the code
that scores it.

What train.py may use:
    SEED, MEAN, STD, NUM_CLASSES, IMAGE_SHAPE   constants
    get_device()                                 cpu / cuda / mps (AUTORESEARCH_DEVICE overrides)
    load_split("train", device)                  (images float32 in [0, 1], N x 1 x 28 x 28; labels int64)
    TrainingBudget()                             says whether another epoch fits the time budget
    save_model(model)                            writes the self-contained artifact that gets scored

Command line:
    python prepare.py                            find or download the data, verify it, print a summary
    python prepare.py predict MODEL IMAGES OUT   (used by the orchestrator) logits for unlabelled images
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

# ---------------------------------------------------------------------------
# Constants (fixed)
# ---------------------------------------------------------------------------

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
# Training-set pixel statistics, for a train.py that chooses to normalise.
# The tensors load_split returns are NOT normalised.
MEAN = 0.2860
STD = 0.3530

SPLIT_SEED = 20240611  # the 50k/10k train/validation split never changes
VAL_SIZE = 10_000
SEED = int(os.environ.get("AUTORESEARCH_SEED", "0"))  # per-run seed, injected by the sandbox

# file name -> (md5 of the official .gz, md5 of the decompressed IDX content)
# Mirrors repackage the .gz (Debian's headers differ), so we verify the decompressed bytes.
FILES = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MODEL_ARTIFACTS = ("model.pt2", "model.ts")  # torch.export first, TorchScript as the fallback
EVAL_BATCH_SIZE = 1000

# Set by the sandbox: the only data a candidate can reach, and where its artifact goes.
TRAIN_SPLIT_ENV = "AUTORESEARCH_TRAIN_SPLIT"
ARTIFACT_DIR_ENV = "AUTORESEARCH_ARTIFACT_DIR"
BUDGET_ENV = "TRAINING_BUDGET_SECS"


class DataUnavailable(RuntimeError):
    """The Fashion-MNIST files could not be found, downloaded or verified."""


# ---------------------------------------------------------------------------
# Data: locate, download, verify (fixed)
# ---------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where verified, decompressed files live: torchvision's layout under it (FashionMNIST/raw)."""
    default = Path.home() / ".cache" / "autoresearch"
    return Path(os.environ.get("AUTORESEARCH_CACHE_DIR", default))


def source_dirs() -> list[Path]:
    """Places searched for the four files, in order, before downloading."""
    dirs = []
    if os.environ.get("AUTORESEARCH_DATA_DIR"):
        dirs.append(Path(os.environ["AUTORESEARCH_DATA_DIR"]))
    dirs += [cache_dir(), DEBIAN_DIR]
    return dirs


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _read_content(directory: Path, name: str) -> bytes | None:
    """The decompressed content of `name` (or `name.gz`) in directory, or None if absent."""
    raw, gz = directory / name, directory / f"{name}.gz"
    if raw.is_file():
        return raw.read_bytes()
    if gz.is_file():
        with gzip.open(gz, "rb") as f:
            return f.read()
    return None


def _raw_folder() -> Path:
    return cache_dir() / "FashionMNIST" / "raw"


def _verified_in(directory: Path) -> dict[str, bytes] | None:
    """All four files' content if every one is present and matches its checksum."""
    found = {}
    for name, (_, content_md5) in FILES.items():
        content = _read_content(directory, name)
        if content is None or _md5(content) != content_md5:
            return None
        found[name] = content
    return found


def _install(contents: dict[str, bytes]) -> None:
    raw = _raw_folder()
    raw.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        tmp = raw / f".{name}.tmp"
        tmp.write_bytes(content)
        tmp.replace(raw / name)


def _download() -> None:
    """The official mirror, through torchvision (which checks the .gz md5s itself)."""
    from torchvision.datasets import FashionMNIST

    FashionMNIST(root=str(cache_dir()), train=True, download=True)
    FashionMNIST(root=str(cache_dir()), train=False, download=True)


def ensure_data(allow_download: bool = True) -> Path:
    """Make sure verified, decompressed files are in the cache; return the raw folder."""
    raw = _raw_folder()
    if _verified_in(raw) is not None:
        return raw
    for directory in source_dirs():
        contents = _verified_in(directory)
        if contents is not None:
            _install(contents)
            return raw
    download_error = "download not attempted"
    if allow_download:
        try:
            _download()
            if _verified_in(raw) is not None:
                return raw
            download_error = "downloaded files failed the checksum"
        except Exception as exc:  # network errors come in many types
            download_error = f"{type(exc).__name__}: {exc}"
    raise DataUnavailable(
        "Fashion-MNIST is not available (searched "
        + ", ".join(str(d) for d in source_dirs())
        + f"; download: {download_error}).\nGet it one of three ways:\n"
        "  1. Debian/Ubuntu: apt-get install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)\n"
        "  2. put the four original files (.gz or decompressed) in a folder and set AUTORESEARCH_DATA_DIR to it\n"
        "  3. allow network access so they download from the official mirror into " + str(cache_dir())
    )


# ---------------------------------------------------------------------------
# Splits (fixed): 50k train / 10k validation from the official 60k, seeded;
# the official 10k test set is held out for reporting only.
# ---------------------------------------------------------------------------

def _official(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import FashionMNIST

    ensure_data()
    ds = FashionMNIST(root=str(cache_dir()), train=train, download=False)
    return ds.data, ds.targets


def split_indices(n: int, val_size: int, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) of a fixed permutation of range(n)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def load_split_uint8(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw images (N x 28 x 28, uint8) and labels (int64) of 'train', 'val' or 'test'."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}: expected 'train', 'val' or 'test'")
    sandboxed = os.environ.get(TRAIN_SPLIT_ENV)
    if sandboxed:
        if split != "train":
            raise PermissionError(f"the {split!r} split is not available inside the training sandbox")
        saved = torch.load(sandboxed, weights_only=True)
        return saved["images"], saved["labels"]
    if split == "test":
        return _official(train=False)
    images, labels = _official(train=True)
    train_idx, val_idx = split_indices(len(labels), VAL_SIZE)
    idx = train_idx if split == "train" else val_idx
    return images[idx], labels[idx]


def to_model_input(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28 in [0, 1]. The one place pixels are scaled."""
    return images.to(device).unsqueeze(1).float().div_(255.0)


def load_split(split: str, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 in [0, 1] (N x 1 x 28 x 28, not normalised) and int64 labels, on device."""
    device = device or get_device()
    images, labels = load_split_uint8(split)
    return to_model_input(images, device), labels.to(device)


def write_train_split(path: Path, limit: int | None = None) -> Path:
    """Save the training split alone (its first `limit` images, if given): the file a sandbox mounts read-only."""
    path = Path(path)
    if path.exists():
        return path
    images, labels = load_split_uint8("train")
    images, labels = images[:limit], labels[:limit]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"images": images.clone(), "labels": labels.clone()}, tmp)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------
# Device (fixed)
# ---------------------------------------------------------------------------

def get_device() -> torch.device:
    """AUTORESEARCH_DEVICE if set (cpu, cuda, cuda:N, mps), else the best available."""
    wanted = os.environ.get("AUTORESEARCH_DEVICE", "").strip()
    if wanted:
        try:
            device = torch.device(wanted)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {wanted!r} in AUTORESEARCH_DEVICE: use cpu, cuda, cuda:N or mps") from exc
        if device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"unsupported device {wanted!r}: use cpu, cuda, cuda:N or mps")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"AUTORESEARCH_DEVICE={wanted} but CUDA is not available here")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"AUTORESEARCH_DEVICE={wanted} but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------------------
# Time budget (fixed): train.py asks before each epoch whether another fits.
# ---------------------------------------------------------------------------

class TrainingBudget:
    """
    Reads TRAINING_BUDGET_SECS. Creating it starts the clock and prints the marker
    the sandbox uses to start its own clock; the sandbox kills the process (SIGKILL)
    a grace period after the budget, whatever train.py does.
    """

    def __init__(self, seconds: float | None = None):
        self.seconds = float(seconds if seconds is not None else os.environ.get(BUDGET_ENV, "120"))
        if self.seconds <= 0:
            raise ValueError(f"{BUDGET_ENV} must be positive, got {self.seconds}")
        self.epoch_seconds: list[float] = []
        self.start = time.perf_counter()
        self._epoch_start = self.start
        print(f"budget_start: {self.seconds:.1f}", flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def epochs(self) -> int:
        return len(self.epoch_seconds)

    def another_epoch_fits(self) -> bool:
        """True if the next epoch is predicted to end within the budget (the first always runs)."""
        if not self.epoch_seconds:
            return True
        recent = self.epoch_seconds[-3:]
        predicted = max(recent[-1], sum(recent) / len(recent))
        return self.elapsed + predicted <= self.seconds

    def epoch_done(self) -> None:
        now = time.perf_counter()
        self.epoch_seconds.append(now - self._epoch_start)
        self._epoch_start = now

    def report(self) -> None:
        """Grep-friendly summary lines (informational: the sandbox measures time itself)."""
        print(f"epochs: {self.epochs}", flush=True)
        print(f"training_seconds: {self.elapsed:.2f}", flush=True)


# ---------------------------------------------------------------------------
# Model artifact (fixed): self-contained, loadable without train.py.
# ---------------------------------------------------------------------------

def save_model(model: torch.nn.Module, directory: str | Path | None = None) -> Path:
    """Export model (eval mode, CPU, dynamic batch) with torch.export, or TorchScript if export fails."""
    directory = Path(directory or os.environ.get(ARTIFACT_DIR_ENV, "."))
    directory.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu")
    example = torch.zeros(2, *IMAGE_SHAPE)
    try:
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        path = directory / MODEL_ARTIFACTS[0]
        torch.export.save(program, str(path))
    except Exception as exc:
        print(f"save_model: torch.export failed ({type(exc).__name__}), using TorchScript", flush=True)
        path = directory / MODEL_ARTIFACTS[1]
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(path))
    print(f"model_saved: {path.name}", flush=True)
    return path


def find_artifact(directory: str | Path) -> Path | None:
    for name in MODEL_ARTIFACTS:
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def load_artifact(path: str | Path) -> torch.nn.Module:
    path = Path(path)
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path), map_location="cpu").eval()


# ---------------------------------------------------------------------------
# Evaluation (fixed): predictions only. Labels never reach this code; the
# orchestrator holds them and computes accuracy and loss from these logits.
# ---------------------------------------------------------------------------

@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """Logits (N x NUM_CLASSES) for uint8 images (N x 28 x 28), computed in batches on the CPU."""
    outputs = []
    for start in range(0, len(images), batch_size):
        out = model(to_model_input(images[start:start + batch_size]))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model returned {type(out).__name__}, expected a tensor of logits")
        outputs.append(out.float())
    return torch.cat(outputs)


def _predict_main(model_path: str, images_path: str, out_path: str) -> int:
    try:
        model = load_artifact(model_path)
    except Exception as exc:
        print(f"eval_error: could not load model artifact: {type(exc).__name__}: {exc}", flush=True)
        return 3
    images = torch.from_numpy(np.load(images_path, allow_pickle=False))
    try:
        logits = predict(model, images)
    except Exception as exc:
        print(f"eval_error: model failed on validation images: {type(exc).__name__}: {exc}", flush=True)
        return 4
    np.save(out_path, logits.numpy(), allow_pickle=False)
    return 0


def _summary_main() -> int:
    try:
        raw = ensure_data()
    except DataUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"data: {raw}")
    print("checksums: ok (decompressed content of all four files)")
    for split in ("train", "val", "test"):
        images, labels = load_split_uint8(split)
        counts = torch.bincount(labels, minlength=NUM_CLASSES).tolist()
        print(f"{split}: {len(labels)} images, per class {counts}")
    print(f"device: {get_device()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "predict":
        sys.exit(_predict_main(*sys.argv[2:]))
    if len(sys.argv) > 1:
        print("usage: python prepare.py | python prepare.py predict MODEL IMAGES OUT", file=sys.stderr)
        sys.exit(2)
    sys.exit(_summary_main())
