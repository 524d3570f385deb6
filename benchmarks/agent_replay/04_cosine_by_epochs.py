# cosine annealing over the epochs the budget allows (estimated after the first)
"""
train.py: a replay of the seed's agent, step by step (benchmarks/research_outcome.py).
"""

# ---------------------------------------------------------------------------
# Hyperparameters: edit these
# ---------------------------------------------------------------------------
LEARNING_RATE = 2e-3
BATCH_SIZE = 128
DROPOUT = 0.3
LABEL_SMOOTHING = 0.1
EPOCH_IMAGES = 10_000  # an "epoch" is a pass over this many random images: the budget stops on it

# ---------------------------------------------------------------------------
# Training: edit freely
# ---------------------------------------------------------------------------
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from prepare import MEAN, NUM_CLASSES, SEED, STD, TrainingBudget, get_device, load_split, save_model

torch.manual_seed(SEED)
device = get_device()
x_train, y_train = load_split("train", device)
x_train = (x_train - MEAN) / STD
n_train = len(y_train)


class Normalise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - MEAN) / STD


def block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]


body = nn.Sequential(*block(1, 16), *block(16, 32), nn.Flatten(), nn.Dropout(DROPOUT), nn.Linear(32 * 7 * 7, NUM_CLASSES))
body = body.to(device)
optimizer = torch.optim.Adam(body.parameters(), lr=LEARNING_RATE)

budget = TrainingBudget()
while budget.another_epoch_fits():
    body.train()
    perm = torch.randperm(n_train, device=device)[:EPOCH_IMAGES]
    total_loss = torch.zeros((), device=device)
    for start in range(0, len(perm), BATCH_SIZE):
        idx = perm[start:start + BATCH_SIZE]
        loss = F.cross_entropy(body(x_train[idx]), y_train[idx], label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(idx)
    budget.epoch_done()
    # the epochs this budget allows, from the first epoch's time: the schedule ends when training does
    planned = max(1, int(budget.seconds / budget.epoch_seconds[0]))
    for group in optimizer.param_groups:
        group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * min(budget.epochs, planned) / planned))
    epoch_loss = total_loss.item() / len(perm)
    print(f"epoch {budget.epochs} train_loss {epoch_loss:.4f} elapsed {budget.elapsed:.1f}s", flush=True)
    if not math.isfinite(epoch_loss):
        print("FAIL: training loss is not finite", flush=True)
        sys.exit(1)

budget.report()
save_model(nn.Sequential(Normalise(), body).eval())
