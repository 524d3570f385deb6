# Baseline: one linear layer on raw pixels, SGD lr=0.1, batch 32 (deliberately weak, about 82-84% validation).
"""
train.py: the file the research agent edits.

Contract (see prepare.py): load data with load_split("train"), train until
TrainingBudget says another epoch will not fit, then save_model(model).
Whatever this script prints is informational; the orchestrator scores the
saved model on validation images this script never sees.
"""

# ---------------------------------------------------------------------------
# Hyperparameters: edit these
# ---------------------------------------------------------------------------
LEARNING_RATE = 0.1
BATCH_SIZE = 32
MOMENTUM = 0.0
WEIGHT_DECAY = 0.0

# ---------------------------------------------------------------------------
# Training: edit freely
# ---------------------------------------------------------------------------
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from prepare import IMAGE_SHAPE, NUM_CLASSES, SEED, TrainingBudget, get_device, load_split, save_model

torch.manual_seed(SEED)
device = get_device()
x_train, y_train = load_split("train", device)
n_train = len(y_train)
print(f"device: {device}")
print(f"train_images: {n_train}")

model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(IMAGE_SHAPE), NUM_CLASSES)).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

budget = TrainingBudget()
while budget.another_epoch_fits():
    model.train()
    perm = torch.randperm(n_train, device=device)
    total_loss = torch.zeros((), device=device)
    for start in range(0, n_train, BATCH_SIZE):
        idx = perm[start:start + BATCH_SIZE]
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(idx)
    budget.epoch_done()
    epoch_loss = total_loss.item() / n_train
    print(f"epoch {budget.epochs} train_loss {epoch_loss:.4f} elapsed {budget.elapsed:.1f}s", flush=True)
    if not math.isfinite(epoch_loss):
        print("FAIL: training loss is not finite", flush=True)
        sys.exit(1)

budget.report()
save_model(model)
