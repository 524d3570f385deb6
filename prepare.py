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
    load_split("train", device)                  (images float32 in [0, 1], N x 1 x 28 x 28; labels int64;
                                                 in the sandbox: this run's 98% of the 50,000, in its own order)
    TrainingBudget()                             says whether another epoch fits the time budget
    budget_clock()                               the clock the budget runs on (CPU time on a CPU device)
    save_model(model)                            writes the artifact that gets scored (weights + core ATen graph)

Command line:
    python prepare.py                            find or download the data, verify it, print a summary
    python prepare.py predict MODEL IMAGES OUT   (used by the orchestrator) logits for unlabelled images
"""

from __future__ import annotations

import gzip
import hashlib
import json
import operator
import os
import sys
import tempfile
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
RUN_SUBSET = 0.98  # each measured run trains on this share of the training split, chosen by its seed
SEED_ENV = "AUTORESEARCH_SEED"
SEED = int(os.environ.get(SEED_ENV, "0"))  # per-run seed, injected by the sandbox

# file name -> (md5 of the official .gz, md5 of the decompressed IDX content)
# Mirrors repackage the .gz (Debian's headers differ), so we verify the decompressed bytes.
FILES = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MODEL_ARTIFACT = "model.safetensors"  # weights and a core ATen graph; no pickle, no code (see below)
# The exported graph's fixed batch; evaluation pads the last batch. Inference is budgeted (the orchestrator's
# inference allowance), and at 1000 a CNN's activations outgrow the caches: on one core the seed's 3-block CNN
# took 7.3 CPU s per 10,000 images, a kNN over the training images 10.9, and no allowance could tell them apart;
# at 100, 3.7 and 12.5. (save_model's check runs one batch: 10x cheaper too.)
EVAL_BATCH_SIZE = 100
BUDGET_MARKER = "budget_start:"  # printed by TrainingBudget: the orchestrator measures training from here
PREDICT_MARKER = "predict_start:"  # printed by `predict` once loaded: the orchestrator times inference from here

# Set by the sandbox: the only data a candidate can reach, and where its artifact goes.
TRAIN_SPLIT_ENV = "AUTORESEARCH_TRAIN_SPLIT"
ARTIFACT_DIR_ENV = "AUTORESEARCH_ARTIFACT_DIR"
BUDGET_ENV = "TRAINING_BUDGET_SECS"
DEADLINE_ENV = "AUTORESEARCH_DEADLINE"  # budget_clock() reading by which training must be over
CPU_THREADS_ENV = "AUTORESEARCH_CPU_THREADS"  # set on a CPU: the budget is CPU time of this many cores
DEVICE_ENV = "AUTORESEARCH_DEVICE"  # the device to train on (a GPU slot's one GPU is cuda:0)
# Set by the operator: a folder holding the four original files, and where verified copies are kept.
DATA_DIR_ENV = "AUTORESEARCH_DATA_DIR"
CACHE_DIR_ENV = "AUTORESEARCH_CACHE_DIR"


class DataUnavailable(RuntimeError):
    """The Fashion-MNIST files could not be found, downloaded or verified."""


# ---------------------------------------------------------------------------
# Data: locate, download, verify (fixed)
# ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where verified, decompressed files live: torchvision's layout under it (FashionMNIST/raw)."""
    default = Path.home() / ".cache" / "autoresearch"
    return Path(os.environ.get(CACHE_DIR_ENV, default))


def source_dirs() -> list[Path]:
    """Places searched for the four files, in order, before downloading."""
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
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
        # a temporary name of this writer's own: two processes installing at once (two `make setup`s, a CI clone and
        # a checkout) each rename a whole file into place, never one the other is still writing
        with tempfile.NamedTemporaryFile(dir=raw, prefix=f".{name}.", suffix=".tmp", delete=False) as tmp:
            tmp.write(content)
        Path(tmp.name).replace(raw / name)


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


def write_train_split(path: Path, limit: int | None = None, order_seed: int | None = None) -> Path:
    """Save the training split alone: the file a sandbox mounts read-only. With order_seed (each measured
    run has its own), a seed-chosen RUN_SUBSET of the images in a seed-chosen order: runs with different
    seeds differ even for a candidate that pins its own seed and sorts the data. With limit, only the
    first `limit` of them."""
    path = Path(path)
    if path.exists():
        return path
    images, labels = load_split_uint8("train")
    if order_seed is not None:
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(order_seed))
        order = order[: round(RUN_SUBSET * len(labels))]
        images, labels = images[order], labels[order]
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
    wanted = os.environ.get(DEVICE_ENV, "").strip()
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


def _tree_cpu_ticks(root: int) -> int | None:
    """utime + stime + cutime + cstime of root and every process below it, from /proc (None: no /proc)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = sum(int(x) for x in fields[11:15])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_cpu_seconds() -> float:
    """CPU time of this process and every process it started: what the sandbox's CPU clock counts."""
    ticks = _tree_cpu_ticks(os.getpid())
    if ticks is None:
        return time.process_time()
    return ticks / os.sysconf("SC_CLK_TCK")


def allotted_cpu_threads() -> int:
    """The cores the budget counts on a CPU (AUTORESEARCH_CPU_THREADS), 0 when the clock is the wall's."""
    return int(os.environ.get(CPU_THREADS_ENV, "0") or 0)


def budget_clock() -> float:
    """Now, on the budget's clock, in seconds. On a CPU (AUTORESEARCH_CPU_THREADS=N) that is CPU time of
    this run per allotted core, so a busy machine does not shorten anyone's training; else the wall clock."""
    threads = allotted_cpu_threads()
    return run_cpu_seconds() / threads if threads > 0 else time.monotonic()


# The next epoch must fit before the deadline with this factor to spare: after the deadline a run has only the
# export allowance (the time save_model needs, 3-5 CPU s here), and an epoch's CPU time rose by up to 23% when
# the machine turned busy (busy/quiet epochs 0.81-0.92 with every core busy, docs/benchmarks.md).
EPOCH_MARGIN = 1.25


class TrainingBudget:
    """
    The sandbox gives every candidate the same deadline on the budget's clock (AUTORESEARCH_DEADLINE:
    start-up allowance + TRAINING_BUDGET_SECS; on a CPU the clock is CPU time of the run, on a GPU the
    wall clock) and SIGKILLs it once the export allowance after it is spent, whatever train.py does or
    prints. This helper stops training at an epoch boundary before the earlier of that deadline and
    `seconds` from its creation (with EPOCH_MARGIN to spare): an honest candidate trains for the budget,
    never past the deadline, and has the export allowance to save its model.
    """

    def __init__(self, seconds: float | None = None):
        self.seconds = float(seconds if seconds is not None else os.environ.get(BUDGET_ENV, "120"))
        if self.seconds <= 0:
            raise ValueError(f"{BUDGET_ENV} must be positive, got {self.seconds}")
        self.epoch_seconds: list[float] = []
        self.threads = allotted_cpu_threads()
        self.wall_start = time.monotonic()
        self.start = budget_clock()
        self._epoch_start = self.start
        deadline = os.environ.get(DEADLINE_ENV) if seconds is None else None
        self.deadline = min(self.start + self.seconds, float(deadline)) if deadline else self.start + self.seconds
        clock = f"CPU time of {self.threads} cores" if self.threads else "wall clock"
        print(
            f"{BUDGET_MARKER} {self.seconds:.1f} (clock: {clock}; seconds left until the deadline: "
            f"{self.remaining:.1f})",
            flush=True,
        )

    @property
    def elapsed(self) -> float:
        return budget_clock() - self.start

    @property
    def remaining(self) -> float:
        return self.deadline - budget_clock()

    @property
    def epochs(self) -> int:
        return len(self.epoch_seconds)

    def another_epoch_fits(self) -> bool:
        """True if the next epoch, EPOCH_MARGIN times as long as predicted, ends before the deadline (the first
        always runs)."""
        if not self.epoch_seconds:
            return True
        recent = self.epoch_seconds[-3:]
        predicted = max(recent[-1], sum(recent) / len(recent))
        return predicted * EPOCH_MARGIN <= self.remaining

    def epoch_done(self) -> None:
        now = budget_clock()
        self.epoch_seconds.append(now - self._epoch_start)
        self._epoch_start = now

    def report(self) -> None:
        """Grep-friendly summary lines (informational: the sandbox measures time itself)."""
        print(f"epochs: {self.epochs}", flush=True)
        print(f"training_seconds: {self.elapsed:.2f}", flush=True)
        print(f"training_wall_seconds: {time.monotonic() - self.wall_start:.2f}", flush=True)


# ---------------------------------------------------------------------------
# Model artifact (fixed): a format without code.
#
# save_model exports the model with torch.export, decomposes it to core ATen
# operators, and writes one safetensors file: the weights as raw tensors and,
# in its metadata, the graph as JSON (operator names, constants, references).
# load_artifact never unpickles, evaluates or imports anything named in the
# file: it accepts core ATen operators only and runs them with a plain loop.
# (torch.export.load and torch.jit.load unpickle, and parse expressions with
# eval, so a crafted file could run code; this format cannot.)
# ---------------------------------------------------------------------------

ARTIFACT_FORMAT = "autoresearch-aten-graph/2"  # /2: batches of EVAL_BATCH_SIZE = 100 (/1 had 1000)
MAX_GRAPH_NODES = 20_000


class ArtifactError(ValueError):
    """The artifact is not a model this evaluator can run."""


def _encode_arg(value):
    """A graph argument as JSON: node references, scalars, lists, and a few tagged torch constants."""
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if isinstance(value, (list, tuple)):
        return [_encode_arg(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else {"float": repr(value)}
    for kind in (torch.dtype, torch.layout, torch.memory_format):
        if isinstance(value, kind):
            return {kind.__name__: str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": "cpu"}
    raise ArtifactError(f"the exported graph holds a {type(value).__name__} argument, which the evaluator cannot load")


def _graph_json(program: "torch.export.ExportedProgram") -> tuple[list[dict], dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    inputs = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            inputs[spec.arg.name] = None
            continue
        value = program.state_dict.get(spec.target, program.constants.get(spec.target))
        if not isinstance(value, torch.Tensor):
            raise ArtifactError(f"model input {spec.target!r} is not a tensor ({spec.kind.name})")
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        inputs[spec.arg.name] = key
    user_outputs = [i for i, spec in enumerate(program.graph_signature.output_specs) if spec.kind.name == "USER_OUTPUT"]
    if len(user_outputs) != 1 or list(inputs.values()).count(None) != 1:
        raise ArtifactError("the model must take one tensor of images and return one tensor of logits")
    nodes = []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            nodes.append({"name": node.name, "op": "placeholder", "tensor": inputs[node.name]})
        elif node.op == "call_function":
            target = "getitem" if node.target is operator.getitem else str(node.target)
            nodes.append(
                {
                    "name": node.name,
                    "op": "call",
                    "target": target,
                    "args": _encode_arg(node.args),
                    "kwargs": {k: _encode_arg(v) for k, v in node.kwargs.items()},
                }
            )
        elif node.op == "output":
            nodes.append({"name": node.name, "op": "output", "value": _encode_arg(node.args[0][user_outputs[0]])})
        else:
            raise ArtifactError(f"the exported graph has a {node.op!r} node, which the evaluator cannot run")
    return nodes, tensors


def save_model(model: torch.nn.Module, directory: str | Path | None = None) -> Path:
    """Export model (eval mode, CPU, batches of EVAL_BATCH_SIZE) to the artifact that gets scored."""
    from safetensors.torch import save_file

    directory = Path(directory or os.environ.get(ARTIFACT_DIR_ENV, "."))
    directory.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu")
    example = torch.zeros(EVAL_BATCH_SIZE, *IMAGE_SHAPE)
    try:
        program = torch.export.export(model, (example,)).run_decompositions()
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ArtifactError(
            f"torch.export could not capture the model ({type(exc).__name__}: {first_line}); "
            "forward() must not branch on tensor values"
        ) from None
    nodes, tensors = _graph_json(program)
    path = directory / MODEL_ARTIFACT
    save_file(tensors, str(path), metadata={"format": ARTIFACT_FORMAT, "graph": json.dumps(nodes)})
    with torch.no_grad():  # the evaluator must be able to run it: fail here, not at scoring time
        load_artifact(path)(example)
    print(f"model_saved: {path.name}", flush=True)
    return path


def _decode_arg(value, env: dict[str, object]):
    if isinstance(value, list):
        return [_decode_arg(v, env) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        raise ArtifactError(f"malformed graph argument {str(value)[:80]}")
    ((tag, name),) = value.items()
    if tag == "node":
        if name not in env:
            raise ArtifactError(f"graph refers to {str(name)[:40]!r} before defining it")
        return env[name]
    if tag == "float" and name in ("inf", "-inf", "nan"):
        return float(name)
    if tag == "device" and name == "cpu":
        return torch.device("cpu")
    kinds = {"dtype": torch.dtype, "layout": torch.layout, "memory_format": torch.memory_format}
    if (
        tag in kinds
        and isinstance(name, str)
        and name.isidentifier()
        and isinstance(getattr(torch, name, None), kinds[tag])
    ):
        return getattr(torch, name)
    raise ArtifactError(f"unsupported graph constant {str(value)[:80]}")


def _core_aten_op(target: object):
    """operator.getitem, or a core ATen operator overload named 'aten.<op>.<overload>'; nothing else."""
    if target == "getitem":
        return operator.getitem
    parts = target.split(".") if isinstance(target, str) else []
    if len(parts) != 3 or parts[0] != "aten" or not all(p.isidentifier() and not p.startswith("__") for p in parts[1:]):
        raise ArtifactError(f"unsupported operator {str(target)[:80]!r}: only core ATen operators are accepted")
    try:
        op = getattr(getattr(torch.ops.aten, parts[1]), parts[2])
    except (AttributeError, RuntimeError):
        raise ArtifactError(f"unknown operator {target!r}") from None
    if not isinstance(op, torch._ops.OpOverload) or torch.Tag.core not in op.tags:
        raise ArtifactError(f"operator {target!r} is not a core ATen operator")
    return op


class GraphModel:
    """A loaded artifact: runs its core ATen graph on a batch of EVAL_BATCH_SIZE images."""

    def __init__(self, nodes: list[dict], tensors: dict[str, torch.Tensor]):
        if not isinstance(nodes, list) or not 0 < len(nodes) <= MAX_GRAPH_NODES:
            raise ArtifactError("the graph must be a list of at most {MAX_GRAPH_NODES} nodes")
        self.steps = []
        for node in nodes:
            if not isinstance(node, dict) or not isinstance(node.get("name"), str):
                raise ArtifactError("malformed graph node")
            op = node.get("op")
            if op == "placeholder":
                key = node.get("tensor")
                if key is not None and key not in tensors:
                    raise ArtifactError(f"graph names a missing tensor {str(key)[:40]!r}")
                self.steps.append((node["name"], "placeholder", tensors[key] if key is not None else None, None, None))
            elif op == "call":
                args, kwargs = node.get("args", []), node.get("kwargs", {})
                if not isinstance(args, list) or not isinstance(kwargs, dict):
                    raise ArtifactError("malformed graph call")
                self.steps.append((node["name"], "call", _core_aten_op(node.get("target")), args, kwargs))
            elif op == "output":
                self.steps.append((node["name"], "output", None, node.get("value"), None))
            else:
                raise ArtifactError(f"unknown graph node kind {str(op)[:40]!r}")
        if [s[1] for s in self.steps].count("output") != 1 or self.steps[-1][1] != "output":
            raise ArtifactError("the graph must end in exactly one output")
        if sum(1 for s in self.steps if s[1] == "placeholder" and s[2] is None) != 1:
            raise ArtifactError("the graph must take exactly one input (the images)")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        env: dict[str, object] = {}
        for name, kind, target, args, kwargs in self.steps:
            if kind == "placeholder":
                env[name] = images if target is None else target
            elif kind == "call":
                env[name] = target(*_decode_arg(args, env), **{str(k): _decode_arg(v, env) for k, v in kwargs.items()})
            else:
                out = _decode_arg(args, env)
                if not isinstance(out, torch.Tensor):
                    raise ArtifactError(f"the model returned {type(out).__name__}, expected a tensor of logits")
                return out
        raise ArtifactError("the graph has no output")


def load_artifact(path: str | Path) -> GraphModel:
    """The model in a saved artifact, loaded without pickle or code (see the section comment)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"not a safetensors model artifact ({exc})") from None
    if metadata.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"not an {ARTIFACT_FORMAT} artifact: save the model with prepare.save_model(model)")
    try:
        nodes = json.loads(metadata.get("graph", ""))
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"unreadable graph ({type(exc).__name__})") from None
    return GraphModel(nodes, tensors)


# ---------------------------------------------------------------------------
# Evaluation (fixed): predictions only. Labels never reach this code; the
# orchestrator holds them and computes accuracy and loss from these logits.
# ---------------------------------------------------------------------------


@torch.inference_mode()
def predict(model, images: torch.Tensor) -> torch.Tensor:
    """Logits (N x NUM_CLASSES) for uint8 images (N x 28 x 28), in batches of EVAL_BATCH_SIZE on the CPU."""
    outputs = []
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        batch = to_model_input(images[start : start + EVAL_BATCH_SIZE])
        n = len(batch)
        if n < EVAL_BATCH_SIZE:  # the graph's batch is fixed: pad, then drop the padding's outputs
            batch = torch.cat([batch, batch.new_zeros(EVAL_BATCH_SIZE - n, *IMAGE_SHAPE)])
        out = model(batch)
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or len(out) != EVAL_BATCH_SIZE:
            # no shape quoted: a graph's output shape can depend on the pixels (aten.nonzero), and this
            # message reaches the proposer
            raise ArtifactError(f"model output is not one row of logits per image for a batch of {EVAL_BATCH_SIZE}")
        outputs.append(out[:n].float())
    return torch.cat(outputs)


def _predict_main(model_path: str, images_path: str, out_path: str) -> int:
    try:
        model = load_artifact(model_path)
    except Exception as exc:
        print(f"eval_error: could not load model artifact: {type(exc).__name__}: {exc}", flush=True)
        return 3
    images = torch.from_numpy(np.load(images_path, allow_pickle=False))
    print(f"{PREDICT_MARKER} {len(images)} images", flush=True)  # inference is budgeted from this line
    try:
        logits = predict(model, images)
    except Exception as exc:
        # the type only: a message can quote values computed from the pixels (red team: 56 bits a run through
        # an index); prepare.py's own ArtifactError messages quote none
        detail = f": {exc}" if type(exc) is ArtifactError else ""
        print(f"eval_error: model failed on the images: {type(exc).__name__}{detail}", flush=True)
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
        status = _predict_main(*sys.argv[2:])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # the logits file is written and closed: skip torch's half-second interpreter teardown
    if len(sys.argv) > 1:
        print("usage: python prepare.py | python prepare.py predict MODEL IMAGES OUT", file=sys.stderr)
        sys.exit(2)
    sys.exit(_summary_main())
