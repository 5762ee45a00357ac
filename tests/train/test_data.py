"""Datasets, augmentation and continual-learning splits of the training harness."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyfast.data import (
    Augmentation,
    DatasetFormatError,
    DatasetNotFoundError,
    class_incremental_tasks,
    class_order,
    few_shot_indices,
    indices_of_classes,
    load_cifar,
    load_digits,
)
from pyfast.registry import DATASETS


def test_digits_8x8_split_is_stratified_disjoint_and_seeded():
    s = load_digits(test_fraction=0.2, seed=0)
    assert s.x_train.shape == (1437, 1, 8, 8) and s.x_test.shape == (360, 1, 8, 8)
    assert s.x_train.min() == 0 and s.x_train.max() == 1
    counts = torch.bincount(s.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    train_rows = {tuple(r.tolist()) for r in s.x_train.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in s.x_test.flatten(1))
    again, other = load_digits(seed=0), load_digits(seed=4)
    assert all(torch.equal(u, v) for u, v in zip(s, again)) and not torch.equal(s.y_test, other.y_test)


def test_digits_without_sklearn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


def test_embedded_digits_are_32x32_rgb_uint8_with_their_statistics():
    d = DATASETS.get("digits").builder()
    assert d.x_train.shape == (1437, 3, 32, 32) and d.x_test.shape == (360, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.num_classes == 10 and not d.hflip and d.crop_padding == 4
    assert torch.equal(d.x_train[:, 0], d.x_train[:, 2])  # grey repeated over channels
    z = d.normalize(d.x_train)
    assert abs(z.mean().item()) < 1e-3 and abs(z.std().item() - 1) < 1e-2  # mean/std are the train set's
    # the upsampled image keeps the digit: downsampling it back is close to the original 8x8 image
    small = torch.nn.functional.avg_pool2d(d.x_train[:, :1].float() / 255, 4).flatten()
    original = load_digits(seed=0).x_train.flatten()
    assert torch.corrcoef(torch.stack([small, original]))[0, 1] > 0.95


def test_augmentation_is_per_image_and_independent_of_batching():
    g = torch.Generator().manual_seed(0)
    aug = Augmentation.draw(50, padding=4, hflip=True, generator=g)
    assert aug.offsets.min() >= 0 and aug.offsets.max() <= 8 and 0 < aug.flips.sum() < 50
    x = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    index = torch.arange(50)
    whole = aug.apply(x, index)
    halves = torch.cat([aug.apply(x[:20], index[:20]), aug.apply(x[20:], index[20:])])
    assert torch.equal(whole, halves) and whole.dtype == torch.uint8


def test_augmentation_crop_and_flip_are_what_they_say():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    centred = Augmentation(torch.tensor([[1, 1], [1, 1]]), torch.tensor([False, True]), padding=1)
    out = centred.apply(x, torch.arange(2))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    shifted = Augmentation(torch.tensor([[0, 2], [2, 0]]), torch.tensor([False, False]), padding=1)
    out = shifted.apply(x, torch.arange(2))
    # offset (0, 2): one zero row on top, columns shifted left by one, a zero column on the right
    assert torch.equal(out[0, 0, 0], torch.zeros(4)) and torch.equal(out[0, 0, 1:, :3], x[0, 0, :3, 1:])
    assert torch.equal(out[0, 0, :, 3], torch.zeros(4))
    assert torch.equal(out[1, 0, :3, 1:], x[1, 0, 1:, :3])


def test_class_incremental_tasks_are_disjoint_cover_and_fixed_by_seed():
    tasks = class_incremental_tasks(100, 10, seed=1993, first_task_classes=50)
    assert [len(t) for t in tasks] == [50] + [10] * 5
    flat = [c for t in tasks for c in t]
    assert sorted(flat) == list(range(100))  # disjoint and complete
    assert tasks == class_incremental_tasks(100, 10, seed=1993, first_task_classes=50)
    assert flat == class_order(100, 1993) and flat != class_order(100, 0)
    assert class_order(5, -1) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="do not split"):
        class_incremental_tasks(100, 7)


def test_task_and_few_shot_indices():
    labels = torch.arange(10).repeat_interleave(6)  # 6 samples of each of 10 classes
    idx = indices_of_classes(labels, [2, 7])
    assert sorted(labels[idx].tolist()) == [2] * 6 + [7] * 6
    shots = few_shot_indices(labels, [1, 3, 5], shots=5, seed=0)
    assert labels[shots].tolist() == [1] * 5 + [3] * 5 + [5] * 5 and len(set(shots.tolist())) == 15
    assert torch.equal(shots, few_shot_indices(labels, [1, 3, 5], shots=5, seed=0))
    assert not torch.equal(shots, few_shot_indices(labels, [1, 3, 5], shots=5, seed=1))
    with pytest.raises(ValueError, match="fewer than shots=7"):
        few_shot_indices(labels, [1], shots=7, seed=0)


def _write_fake_cifar10(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder


def test_cifar_loads_the_python_pickles(tmp_path):
    folder = _write_fake_cifar10(tmp_path)
    for where in (tmp_path, folder):  # the parent directory or the folder itself
        d = load_cifar("cifar10", str(where))
        assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
        assert d.class_names[3] == "c3" and d.num_classes == 10 and d.hflip
    first = pickle.loads((folder / "data_batch_1").read_bytes())
    assert torch.equal(d.x_train[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))  # CHW row order
    assert d.y_train[:4].tolist() == first[b"labels"]


def test_missing_cifar_says_which_file_and_where_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-100-python.*cifar-100-python\.tar\.gz"):
        load_cifar("cifar100", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="needs --data-dir"):
        load_cifar("cifar100", None)
    folder = _write_fake_cifar10(tmp_path / "c10")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_cifar("cifar10", str(tmp_path / "c10"))
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="not a readable CIFAR pickle"):
        load_cifar("cifar10", str(tmp_path / "c10"))


def _rewrite(folder, name, change):
    batch = pickle.loads((folder / name).read_bytes())
    (folder / name).write_bytes(pickle.dumps(change(batch)))


@pytest.mark.parametrize("change, message", [
    (lambda b: {**b, b"data": b[b"data"].astype(np.float32) / 255}, "data must be a uint8 array"),  # was cast to 0
    (lambda b: {**b, b"labels": [float(v) + 0.7 for v in b[b"labels"]]}, "must be a list of integer class indices"),
    (lambda b: {**b, b"labels": [10] + b[b"labels"][1:]}, r"labels must be in 0\.\.9, found"),
    (lambda b: {**b, b"labels": [-1] + b[b"labels"][1:]}, r"labels must be in 0\.\.9, found -1"),
    (lambda b: {**b, b"labels": b[b"labels"][:-1]}, "3 labels for 4 images"),
    (lambda b: {b"data": b[b"data"]}, "lacks the key"),
    (lambda b: {**b, b"data": b[b"data"][:, :1000]}, "rows of 3 x 32 x 32 = 3072 values"),
    (lambda b: [b[b"data"], b[b"labels"]], "holds a list, not the mapping"),
])
def test_a_malformed_cifar_file_is_refused_at_load_naming_the_file(tmp_path, change, message):
    folder = _write_fake_cifar10(tmp_path)
    _rewrite(folder, "data_batch_2", change)
    with pytest.raises(DatasetFormatError, match=message) as err:
        load_cifar("cifar10", str(tmp_path))
    assert "data_batch_2" in str(err.value)


def test_cli_exits_2_on_a_malformed_cifar_file(tmp_path):
    folder = _write_fake_cifar10(tmp_path / "data")
    _rewrite(folder, "test_batch", lambda b: {**b, b"labels": b[b"labels"][:2]})
    proc = subprocess.run([sys.executable, "-m", "pyfast", "train", "--data", "cifar10", "--data-dir",
                           str(tmp_path / "data"), "--model", "snn-small", "--out", str(tmp_path / "run"),
                           "--no-progress"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "test_batch: 2 labels for 4 images" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "config.json").exists()
