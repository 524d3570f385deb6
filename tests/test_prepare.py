"""prepare.py on small synthetic IDX files made by the tests."""

from __future__ import annotations

import gzip
import os

import pytest
import torch
from torch import nn

import prepare
from tests.conftest import make_idx_files


def test_finds_files_in_data_dir_and_installs_verified_copies(synthetic_data):
    raw = prepare.ensure_data()
    assert raw == prepare.cache_dir() / "FashionMNIST" / "raw"
    for name in prepare.FILES:
        assert (raw / name).is_file()


def test_finds_debian_style_dir_when_no_data_dir(synthetic_data, tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    synthetic_data.rename(debian)
    monkeypatch.delenv("AUTORESEARCH_DATA_DIR")
    monkeypatch.setattr(prepare, "DEBIAN_DIR", debian)
    assert prepare.ensure_data().is_dir()


def test_accepts_decompressed_files(synthetic_data):
    for gz in synthetic_data.glob("*.gz"):
        with gzip.open(gz) as f:
            gz.with_suffix("").write_bytes(f.read())
        gz.unlink()
    assert prepare.ensure_data().is_dir()


def test_corrupt_file_is_rejected_with_message_naming_three_ways(synthetic_data):
    make_idx_files(synthetic_data, seed=99)  # same names, different content: checksums fail
    with pytest.raises(prepare.DataUnavailable) as info:
        prepare.ensure_data()
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "AUTORESEARCH_DATA_DIR" in message
    assert "download" in message and "network disabled in tests" in message


def test_download_is_the_last_resort(synthetic_data, tmp_path, monkeypatch):
    source = synthetic_data.rename(tmp_path / "mirror")
    monkeypatch.delenv("AUTORESEARCH_DATA_DIR")
    calls = []

    def fake_download():  # stands in for the mirror: puts the files where torchvision would
        calls.append(1)
        raw = prepare.cache_dir() / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in source.glob("*.gz"):
            with gzip.open(gz) as f:
                (raw / gz.stem).write_bytes(f.read())

    monkeypatch.setattr(prepare, "_download", fake_download)
    assert prepare.ensure_data().is_dir()
    assert calls == [1]
    prepare.ensure_data()
    assert calls == [1], "verified cache must be reused, not downloaded again"


def test_summary_exit_code(synthetic_data, monkeypatch, capsys):
    assert prepare._summary_main() == 0
    printed = capsys.readouterr().out
    assert "train: 500 images" in printed and "val: 100 images" in printed and "test: 100 images" in printed
    monkeypatch.delenv("AUTORESEARCH_DATA_DIR")
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(synthetic_data / "empty"))
    assert prepare._summary_main() == 1
    assert "Get it one of three ways" in capsys.readouterr().err


def test_split_is_fixed_disjoint_and_complete(synthetic_data):
    train_idx, val_idx = prepare.split_indices(600, 100)
    again_train, again_val = prepare.split_indices(600, 100)
    assert torch.equal(train_idx, again_train) and torch.equal(val_idx, again_val)
    assert len(set(train_idx.tolist()) & set(val_idx.tolist())) == 0
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(600))
    x_train, _ = prepare.load_split_uint8("train")
    x_val, _ = prepare.load_split_uint8("val")
    assert len(x_train) == 500 and len(x_val) == 100


def test_tensors_are_unnormalised_floats_in_unit_range(synthetic_data):
    x, y = prepare.load_split("train", "cpu")
    assert x.dtype == torch.float32 and x.shape == (500, 1, 28, 28)
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.8
    assert y.dtype == torch.int64 and set(y.unique().tolist()) <= set(range(10))


def test_inside_sandbox_only_the_training_split_exists(synthetic_data, tmp_path, monkeypatch):
    path = prepare.write_train_split(tmp_path / "split.pt")
    monkeypatch.setenv(prepare.TRAIN_SPLIT_ENV, str(path))
    monkeypatch.setenv("AUTORESEARCH_DATA_DIR", str(tmp_path / "nothing"))
    x, _ = prepare.load_split("train", "cpu")
    assert len(x) == 500
    for split in ("val", "test"):
        with pytest.raises(PermissionError, match="not available inside the training sandbox"):
            prepare.load_split(split)


def test_device_override_and_unknown_device(monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    assert prepare.get_device() == torch.device("cpu")
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "tpu")
    with pytest.raises(ValueError, match="unknown device"):
        prepare.get_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("AUTORESEARCH_DEVICE", "cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            prepare.get_device()


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_budget_predicts_whether_next_epoch_fits(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(prepare.time, "perf_counter", clock)
    budget = prepare.TrainingBudget(10)
    assert "budget_start: 10.0" in capsys.readouterr().out
    assert budget.another_epoch_fits()  # the first epoch always runs
    for _ in range(3):
        clock.now += 3.0
        budget.epoch_done()
    assert budget.epochs == 3 and not budget.another_epoch_fits()  # 9 s + 3 s > 10 s
    budget2 = prepare.TrainingBudget(10)
    clock.now += 2.0
    budget2.epoch_done()
    assert budget2.another_epoch_fits()  # 2 s + 2 s <= 10 s
    budget2.report()
    assert "epochs: 1" in capsys.readouterr().out


def test_budget_reads_environment_and_rejects_non_positive(monkeypatch):
    monkeypatch.setenv(prepare.BUDGET_ENV, "7.5")
    assert prepare.TrainingBudget().seconds == 7.5
    monkeypatch.setenv(prepare.BUDGET_ENV, "0")
    with pytest.raises(ValueError):
        prepare.TrainingBudget()


def test_save_model_round_trips_through_torch_export(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    path = prepare.save_model(model, tmp_path)
    assert path.name == "model.pt2"
    images = torch.randint(0, 256, (1001, 28, 28), dtype=torch.uint8)  # odd size: last batch of 1
    expected = model(prepare.to_model_input(images)).detach()
    got = prepare.predict(prepare.load_artifact(path), images)
    assert got.shape == (1001, 10)
    assert torch.allclose(got, expected, atol=1e-5)


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.export refuses it, tracing does not."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if out.sum() > 1e9:
            out = out * 0
        return out


def test_save_model_falls_back_to_torchscript(tmp_path):
    path = prepare.save_model(DataDependent(), tmp_path)
    assert path.name == "model.ts"
    assert prepare.find_artifact(tmp_path) == path
    logits = prepare.predict(prepare.load_artifact(path), torch.zeros(3, 28, 28, dtype=torch.uint8))
    assert logits.shape == (3, 10)


def test_predict_main_reports_malformed_artifact(tmp_path, capsys):
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"not a model")
    import numpy as np

    np.save(tmp_path / "images.npy", np.zeros((4, 28, 28), dtype=np.uint8))
    code = prepare._predict_main(str(bad), str(tmp_path / "images.npy"), str(tmp_path / "out.npy"))
    assert code == 3
    assert "eval_error: could not load model artifact" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "out.npy")
