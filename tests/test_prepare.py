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


def test_each_run_seed_gets_its_own_subset_and_order_of_the_training_images(synthetic_data, tmp_path):
    """A candidate that pins its own seed (and sorts the data) still sees run-to-run variation: which 98% of
    the training images a run gets, and their order, follow the run's seed."""

    def saved(name, **kwargs):
        return torch.load(prepare.write_train_split(tmp_path / name, **kwargs), weights_only=True)

    a, a_again, b = saved("a.pt", order_seed=1), saved("a2.pt", order_seed=1), saved("b.pt", order_seed=2)
    assert torch.equal(a["images"], a_again["images"]) and not torch.equal(a["images"], b["images"])
    images, _ = prepare.load_split_uint8("train")
    assert len(a["labels"]) == len(b["labels"]) == round(0.98 * len(images)) == 490
    rows = {bytes(img.numpy()) for img in images}
    assert all(bytes(img.numpy()) in rows for img in a["images"])  # a subset of the training split, nothing else
    assert {bytes(i.numpy()) for i in a["images"]} != {bytes(i.numpy()) for i in b["images"]}  # not just reordered
    assert len(saved("c.pt", order_seed=3, limit=50)["labels"]) == 50
    assert len(saved("d.pt")["labels"]) == 500  # no seed: the whole split


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
    monkeypatch.setattr(prepare.time, "monotonic", clock)
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


def test_the_next_epoch_must_fit_with_a_margin(monkeypatch):
    """After the deadline a run has only the export allowance: an epoch predicted to end just before the deadline
    could overrun it, so it runs only if it would fit EPOCH_MARGIN times over."""
    clock = FakeClock()
    monkeypatch.setattr(prepare.time, "monotonic", clock)
    tight = prepare.TrainingBudget(10)
    clock.now += 4.5
    tight.epoch_done()
    assert not tight.another_epoch_fits()  # 4.5 s would fit in the 5.5 s left; 1.25 x 4.5 s does not
    roomy = prepare.TrainingBudget(10)
    clock.now += 4.0
    roomy.epoch_done()
    assert roomy.another_epoch_fits()  # 1.25 x 4 s = 5 s <= 6 s


def test_budget_reads_environment_and_rejects_non_positive(monkeypatch):
    monkeypatch.setenv(prepare.BUDGET_ENV, "7.5")
    assert prepare.TrainingBudget().seconds == 7.5
    monkeypatch.setenv(prepare.BUDGET_ENV, "0")
    with pytest.raises(ValueError):
        prepare.TrainingBudget()


def test_budget_stops_before_the_sandbox_deadline_not_its_own_clock(monkeypatch, capsys):
    """The deadline is the sandbox's (launch + start-up allowance + budget): a slow start-up leaves less time."""
    clock = FakeClock()
    clock.now = 100.0
    monkeypatch.setattr(prepare.time, "monotonic", clock)
    monkeypatch.setenv(prepare.BUDGET_ENV, "10")
    monkeypatch.setenv(prepare.DEADLINE_ENV, "106.0")  # only 6 s left when training starts
    budget = prepare.TrainingBudget()
    assert "seconds left until the deadline: 6.0" in capsys.readouterr().out
    clock.now += 2.5
    budget.epoch_done()
    assert budget.another_epoch_fits()  # 3.5 s left, 2.5 s predicted
    clock.now += 2.5
    budget.epoch_done()
    assert not budget.another_epoch_fits()  # 1 s left, 2.5 s predicted, though 5 s of "budget" were used
    monkeypatch.setenv(prepare.DEADLINE_ENV, "1000.0")  # a far deadline: the budget itself binds
    clock.now = 200.0
    assert prepare.TrainingBudget().deadline == 210.0


def test_save_model_round_trips_through_the_aten_graph(tmp_path):
    from benchmarks.cnn3 import three_block_cnn

    for model in (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), three_block_cnn()):
        path = prepare.save_model(model, tmp_path)
        assert path.name == prepare.MODEL_ARTIFACT
        images = torch.randint(0, 256, (1001, 28, 28), dtype=torch.uint8)  # odd size: the last batch is padded
        expected = model.eval()(prepare.to_model_input(images)).detach()
        got = prepare.predict(prepare.load_artifact(path), images)
        assert got.shape == (1001, 10)
        assert torch.allclose(got, expected, atol=1e-4)


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.export refuses it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if out.sum() > 1e9:
            out = out * 0
        return out


def test_save_model_refuses_what_export_cannot_capture_with_a_clear_error(tmp_path):
    with pytest.raises(prepare.ArtifactError, match="forward\\(\\) must not branch on tensor values"):
        prepare.save_model(DataDependent(), tmp_path)
    assert not (tmp_path / prepare.MODEL_ARTIFACT).exists()


def write_artifact(path, graph, tensors=None, fmt=prepare.ARTIFACT_FORMAT):
    import json

    from safetensors.torch import save_file

    save_file(tensors or {}, str(path), metadata={"format": fmt, "graph": json.dumps(graph)})


IDENTITY_INPUT = {"name": "x", "op": "placeholder", "tensor": None}


@pytest.mark.parametrize(
    "graph, message",
    [
        (
            [
                IDENTITY_INPUT,
                {"name": "y", "op": "call", "target": "aten.from_file.default", "args": ["/etc/passwd"], "kwargs": {}},
                {"name": "o", "op": "output", "value": {"node": "y"}},
            ],
            "is not a core ATen operator",
        ),
        (
            [
                IDENTITY_INPUT,
                {"name": "y", "op": "call", "target": "os.system", "args": ["true"], "kwargs": {}},
                {"name": "o", "op": "output", "value": {"node": "y"}},
            ],
            "only core ATen operators",
        ),
        (
            [
                IDENTITY_INPUT,
                {"name": "y", "op": "call", "target": "aten.relu.default", "args": [{"node": "later"}], "kwargs": {}},
                {"name": "o", "op": "output", "value": {"node": "y"}},
            ],
            "before defining it",
        ),
        (
            [
                IDENTITY_INPUT,
                {
                    "name": "y",
                    "op": "call",
                    "target": "aten.relu.default",
                    "args": [{"py": "__import__('os')"}],
                    "kwargs": {},
                },
                {"name": "o", "op": "output", "value": {"node": "y"}},
            ],
            "unsupported graph constant",
        ),
        (
            [
                IDENTITY_INPUT,
                {
                    "name": "y",
                    "op": "call",
                    "target": "aten._to_copy.default",
                    "args": [{"node": "x"}],
                    "kwargs": {"dtype": {"dtype": "__class__"}},
                },
                {"name": "o", "op": "output", "value": {"node": "y"}},
            ],
            "unsupported graph constant",
        ),
        (
            [
                IDENTITY_INPUT,
                {
                    "name": "y",
                    "op": "call",
                    "target": "aten.to.dtype",
                    "args": [{"node": "x"}, {"dtype": "float16"}],
                    "kwargs": {},
                },
                {"name": "o", "op": "output", "value": {"node": "y"}},
            ],
            "is not a core ATen operator",
        ),
        ([IDENTITY_INPUT, {"name": "p", "op": "placeholder", "tensor": "missing"}], "missing tensor"),
        ([IDENTITY_INPUT], "exactly one output"),
    ],
)
def test_load_artifact_accepts_only_core_aten_and_plain_constants(tmp_path, graph, message):
    path = tmp_path / "model.safetensors"
    write_artifact(path, graph)
    with pytest.raises(prepare.ArtifactError, match=message):
        model = prepare.load_artifact(path)
        model(torch.zeros(prepare.EVAL_BATCH_SIZE, *prepare.IMAGE_SHAPE))


def test_load_artifact_never_unpickles(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    for name in ("pickled.safetensors", "exported.pt2"):
        path = tmp_path / name
        if name.endswith(".pt2"):
            program = torch.export.export(nn.Linear(784, 10), (torch.zeros(2, 784),))
            torch.export.save(program, str(path))
        else:
            torch.save({"w": Payload()}, path)
        with pytest.raises(prepare.ArtifactError, match="not a safetensors model artifact"):
            prepare.load_artifact(path)
    path = tmp_path / "wrong-format.safetensors"
    write_artifact(path, [], fmt="pickle")
    with pytest.raises(prepare.ArtifactError, match=f"not an {prepare.ARTIFACT_FORMAT} artifact"):
        prepare.load_artifact(path)
    assert not (tmp_path / "pwned").exists()


def test_predict_main_reports_malformed_artifact(tmp_path, capsys):
    bad = tmp_path / prepare.MODEL_ARTIFACT
    bad.write_bytes(b"not a model")
    import numpy as np

    np.save(tmp_path / "images.npy", np.zeros((4, 28, 28), dtype=np.uint8))
    code = prepare._predict_main(str(bad), str(tmp_path / "images.npy"), str(tmp_path / "out.npy"))
    assert code == 3
    assert "eval_error: could not load model artifact" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "out.npy")
