"""
Benchmark: the numbers behind the allowances (infra/sandbox/allowances.py, infra/settings.py).

1. --allowances: the start-up and export allowances as an experiment measures them (the reference run in
   the real sandbox, one allotted core unless --cpu-threads), --repeats times.
2. --inference: the inference table behind DEFAULT_INFERENCE_ALLOWANCE_S. Each model is exported with
   prepare.save_model and scored through the real evaluation sandbox (one core, CPU clock) on the 10,000
   validation images, --repeats times; its training cost is one core's CPU time for a few batches of 128
   in this process, scaled to an epoch of the 49,000 training images, so "epochs in 120 s" says whether a
   120 s CPU budget can train it. The models are trained only by those few batches (their accuracy means
   little): inference costs the same. The kNNs need no training: they hold the training images as a weight
   and compute distances with a matmul (fp32, and bf16 with half the bytes).

Usage: python benchmarks/allowances.py [--allowances] [--inference] [--repeats 3] [--cpu-threads 1]
(neither flag: both)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import prepare  # noqa: E402
from benchmarks.cnn3 import three_block_cnn  # noqa: E402
from infra.sandbox.allowances import measure_allowances  # noqa: E402
from infra.sandbox.evaluation import evaluate_artifact  # noqa: E402
from infra.settings import Limits  # noqa: E402

TRAIN_IMAGES = 49_000  # a measured run's training split (prepare.RUN_SUBSET of 50,000)
TRAIN_BATCH = 128
TRAIN_STEPS = 20


def cnn(widths: tuple[int, int, int]) -> nn.Module:
    """The seed's 3-block CNN (benchmarks/cnn3.py) at other widths."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, widths[0]),
        *block(widths[0], widths[1]),
        *block(widths[1], widths[2]),
        nn.Flatten(),
        nn.Linear(widths[2] * 9, 10),
    )


class NearestNeighbours(nn.Module):
    """k nearest neighbours over stored images: squared distances by one matmul, votes from one-hot labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, k: int = 5, dtype: torch.dtype = torch.float32):
        super().__init__()
        flat = images.reshape(len(images), -1)
        self.register_buffer("stored", flat.to(dtype))
        self.register_buffer("norms", (flat * flat).sum(1))
        self.register_buffer("votes", F.one_hot(labels, prepare.NUM_CLASSES).float())
        self.k, self.dtype = k, dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.reshape(images.shape[0], -1)
        if self.dtype == torch.float32:
            products = flat @ self.stored.T
        else:  # Tensor.to() exports with an assertion, which is not a core ATen operator: the operator itself
            to_copy = torch.ops.aten._to_copy.default
            products = to_copy(to_copy(flat, dtype=self.dtype) @ self.stored.T, dtype=torch.float32)
        distances = self.norms[None, :] - 2 * products
        nearest = distances.topk(self.k, dim=1, largest=False).indices
        return self.votes[nearest].sum(1)


def models(train: tuple[torch.Tensor, torch.Tensor]) -> dict[str, nn.Module]:
    images, labels = train
    return {
        "linear (the baseline)": nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
        "3-block CNN 32/64/128 (the seed's)": three_block_cnn(),
        "3-block CNN 40/80/160": cnn((40, 80, 160)),
        "3-block CNN 48/96/192": cnn((48, 96, 192)),
        "kNN, 49,000 images, fp32": NearestNeighbours(images, labels),
        "kNN, 49,000 images, bf16": NearestNeighbours(images, labels, dtype=torch.bfloat16),
    }


def epoch_cpu_seconds(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor]) -> float | None:
    """One core's CPU time for an epoch of TRAIN_IMAGES at batch TRAIN_BATCH (None: nothing to train)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    images, labels = train
    start = time.process_time()
    for step in range(TRAIN_STEPS):
        batch = slice(step * TRAIN_BATCH, (step + 1) * TRAIN_BATCH)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.process_time() - start) / (TRAIN_STEPS * TRAIN_BATCH) * TRAIN_IMAGES


def allowances(repeats: int, cpu_threads: int) -> None:
    print(f"## allowances (cpu, {cpu_threads} allotted core(s)): measured -> allowance, on the run's clock")
    with tempfile.TemporaryDirectory(prefix="allowances-") as tmp:
        for n in range(repeats):
            got = measure_allowances(Path(tmp) / f"probe-{n}", "cpu", cpu_threads=cpu_threads)
            print(
                f"start-up {got.measured_startup_s:.2f} -> {got.startup_s:g} {got.clock} s, "
                f"export {got.measured_export_s:.2f} -> {got.export_s:g} {got.clock} s "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )


def inference(repeats: int) -> None:
    torch.set_num_threads(1)  # the training column: one core, as a candidate's default
    images, labels = prepare.load_split("train", "cpu")
    train = (images[:TRAIN_IMAGES], labels[:TRAIN_IMAGES])
    val = prepare.load_split_uint8("val")
    limits = Limits(budget_s=1.0, inference_allowance_s=1000.0)  # measure, never stop
    print(f"## inference of {len(val[1]):,} images, one core, batches of {prepare.EVAL_BATCH_SIZE} (CPU s)")
    print("| model | training CPU s per epoch (epochs in 120 s) | inference CPU s per 10,000 images | accuracy |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="inference-") as tmp:
        for name, model in models(train).items():
            per_epoch = epoch_cpu_seconds(model, train)
            run_dir = Path(tmp) / "run"
            prepare.save_model(model, run_dir)
            seconds, accuracy = [], None
            for _ in range(repeats):
                evaluation = evaluate_artifact(run_dir / prepare.MODEL_ARTIFACT, *val, run_dir / "eval", limits)
                if not evaluation.ok:
                    raise RuntimeError(f"{name}: {evaluation.reason}")
                seconds.append(evaluation.inference_seconds)
                accuracy = evaluation.accuracy
            training = "none" if per_epoch is None else f"{per_epoch:.1f} ({120 / per_epoch:.1f})"
            spread = f"{min(seconds):.2f}-{max(seconds):.2f}" if len(seconds) > 1 else f"{seconds[0]:.2f}"
            print(f"| {name} | {training} | {spread} | {accuracy:.3f} |", flush=True)
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--allowances", action="store_true")
    parser.add_argument("--inference", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-threads", type=int, default=1)
    args = parser.parse_args()
    both = not (args.allowances or args.inference)
    if args.allowances or both:
        allowances(args.repeats, args.cpu_threads)
    if args.inference or both:
        inference(args.repeats)


if __name__ == "__main__":
    main()
