"""The seed's 3-block CNN (conv-BN-ReLU-pool x3, 32/64/128 channels): the reference model for timings."""

from torch import nn


def three_block_cnn() -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, 32), *block(32, 64), *block(64, 128), nn.Flatten(), nn.Linear(128 * 3 * 3, 10))
