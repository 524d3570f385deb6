"""
Benchmark: where does the training budget go?

1. The baseline model (linear, SGD, batch 32) fed by prepare.py's in-memory tensor
   pipeline vs a torchvision DataLoader with per-sample transforms, same run.
2. Evaluation of 10,000 images with the seed's 3-block CNN: prediction alone
   (in process) and the whole sandboxed evaluation process.

Usage: python benchmarks/data_pipeline.py [--seconds 10]
Prints grep-friendly `key: value` lines.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnn3 import three_block_cnn  # noqa: E402

import prepare  # noqa: E402
from infra.sandbox.evaluation import evaluate_artifact  # noqa: E402
from infra.settings import Limits  # noqa: E402

BATCH_SIZE = 32


def linear_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def tensor_pipeline(seconds: float) -> float:
    """Images/s through prepare.load_split + random-permutation indexing."""
    x, y = prepare.load_split("train", "cpu")
    model, opt = linear_model()
    seen, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        perm = torch.randperm(len(y))
        for i in range(0, len(y), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            step(model, opt, x[idx], y[idx])
            seen += len(idx)
            if seen % (BATCH_SIZE * 200) == 0 and time.perf_counter() - start >= seconds:
                break
    return seen / (time.perf_counter() - start)


def dataloader_pipeline(seconds: float) -> float:
    """Images/s through torchvision's FashionMNIST dataset with the usual per-sample transforms, a DataLoader."""
    prepare.ensure_data()
    per_sample = transforms.Compose([transforms.ToTensor(), transforms.Normalize((prepare.MEAN,), (prepare.STD,))])
    ds = datasets.FashionMNIST(str(prepare.cache_dir()), train=True, download=False, transform=per_sample)
    loader = DataLoader(ds, batch_size=BATCH_SIZE, shuffle=True, num_workers=0)
    model, opt = linear_model()
    seen, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x, y in loader:
            step(model, opt, x, y)
            seen += len(y)
            if time.perf_counter() - start >= seconds:
                break
    return seen / (time.perf_counter() - start)


def evaluation_timings() -> tuple[float, float]:
    images, labels = prepare.load_split_uint8("val")
    with tempfile.TemporaryDirectory() as tmp:
        artifact = prepare.save_model(three_block_cnn(), tmp)
        model = prepare.load_artifact(artifact)
        prepare.predict(model, images[:1000])  # warm-up
        start = time.perf_counter()
        prepare.predict(model, images)
        predict_s = time.perf_counter() - start
        start = time.perf_counter()
        evaluation = evaluate_artifact(artifact, images, labels, Path(tmp) / "eval", Limits(budget_s=1))
        process_s = time.perf_counter() - start
        assert evaluation.ok, evaluation.reason
    return predict_s, process_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per pipeline")
    args = parser.parse_args()
    print(f"torch: {torch.__version__} threads: {torch.get_num_threads()}")
    fast = tensor_pipeline(args.seconds)
    slow = dataloader_pipeline(args.seconds)
    print(f"tensor_pipeline_images_per_s: {fast:.0f}")
    print(f"dataloader_images_per_s: {slow:.0f}")
    print(f"speedup: {fast / slow:.1f}x (target >= 10x)")
    predict_s, process_s = evaluation_timings()
    print(f"eval_predict_10k_cnn3_s: {predict_s:.2f} (target < 5 s)")
    print(f"eval_sandboxed_process_10k_cnn3_s: {process_s:.2f} (includes interpreter, torch import, artifact load)")


if __name__ == "__main__":
    main()
