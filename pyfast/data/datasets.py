"""The datasets of ``pyfast train --data NAME``: the embedded digits, and CIFAR-10/100 from local files.

Nothing is downloaded at run time. CIFAR comes from the standard "python version" archives, unpacked into a
directory given with ``--data-dir`` (the directory holding ``cifar-100-python/`` or that folder itself).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from pyfast.data.digits import load_digits
from pyfast.data.images import ImageData, to_uint8
from pyfast.registry import DATASETS

CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
# (folder inside the archive, training files, test file, label key, meta file, label-names key)
_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels",
                "batches.meta", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels", "meta", b"fine_label_names"),
}
_CIFAR_STATS = {  # per-channel mean / std of the training images, 0..1 scale
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file that is not where it should be; the message says what to download and where to put it."""


class DatasetFormatError(ValueError):
    """A dataset file that is there but does not hold what it should (keys, dtypes, shapes, labels)."""


@DATASETS.register("digits", "scikit-learn's 8x8 digits (embedded, 1437 train / 360 test) as 32x32 RGB, 10 classes")
def digits(data_dir: str | None = None) -> ImageData:
    """The embedded default: digits upsampled (bilinear) to 32x32 and repeated to 3 channels, crop augmentation only
    (a mirrored digit is not a digit). The split is fixed (stratified, seed 0) whatever the training seed."""
    del data_dir
    split = load_digits(seed=0)
    up = [torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
          .expand(-1, 3, -1, -1) for x in (split.x_train, split.x_test)]
    x_train, x_test = (to_uint8(x.numpy()) for x in up)
    mean = x_train[:, 0].float().mean().item() / 255.0
    std = x_train[:, 0].float().std().item() / 255.0
    return ImageData("digits", x_train, split.y_train, x_test, split.y_test, 10, (mean,) * 3, (std,) * 3,
                     crop_padding=4, hflip=False, class_names=tuple(str(d) for d in range(10)))


def _cifar_folder(name: str, data_dir: str | None) -> Path:
    folder_name = _CIFAR_LAYOUT[name][0]
    howto = (f"download {CIFAR_URLS[name]} and unpack it (tar xzf) into a directory D, then pass --data-dir D "
             f"(D then holds {folder_name}/)")
    if data_dir is None:
        raise DatasetNotFoundError(f"--data {name} needs --data-dir: {howto}")
    root = Path(data_dir).expanduser()
    for candidate in (root / folder_name, root):
        if candidate.is_dir() and (candidate / _CIFAR_LAYOUT[name][2]).is_file():
            return candidate
    folder = root / folder_name if (root / folder_name).is_dir() or root.name != folder_name else root
    missing = [f for f in (*_CIFAR_LAYOUT[name][1], _CIFAR_LAYOUT[name][2]) if not (folder / f).is_file()]
    raise DatasetNotFoundError(f"{name}: missing {', '.join(str(folder / f) for f in missing)}; {howto}")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetNotFoundError(f"missing {path}")
    with path.open("rb") as f:
        try:
            return pickle.load(f, encoding="bytes")
        except Exception as err:  # a truncated or foreign file: say which one
            raise DatasetNotFoundError(f"{path} is not a readable CIFAR pickle ({err}); re-download it") from err


def _cifar_part(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The images ``[N, 3, 32, 32]`` (uint8) and labels ``[N]`` (int64) of one CIFAR pickle, checked: a mapping with
    ``data`` (uint8 rows of 3 * 32 * 32 values, as the archives hold them: float or other data would be cast
    silently) and ``label_key`` (integers in ``0..num_classes-1``, one per row); else a :class:`DatasetFormatError`
    naming the file and what is wrong."""
    part = _unpickle(path)
    redownload = "; re-download the archive"
    if not isinstance(part, dict):
        raise DatasetFormatError(f"{path} holds a {type(part).__name__}, not the mapping of a CIFAR batch{redownload}")
    missing = [k.decode() for k in (b"data", label_key) if k not in part]
    if missing:
        raise DatasetFormatError(f"{path} lacks the key(s) {', '.join(missing)} of a CIFAR batch (it has "
                                 f"{', '.join(repr(k) for k in part)}){redownload}")
    data, labels = part[b"data"], part[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: data must be a uint8 array (pixel values 0..255), got {kind}{redownload}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{path}: data must have rows of 3 x 32 x 32 = 3072 values, got shape "
                                 f"{data.shape}{redownload}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetFormatError(f"{path}: {label_key.decode()} must be a list of integer class indices, got "
                                 f"{labels.dtype} of shape {labels.shape}{redownload}")
    if len(labels) != len(data):
        raise DatasetFormatError(f"{path}: {len(labels)} labels for {len(data)} images{redownload}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(f"{path}: labels must be in 0..{num_classes - 1}, found {labels.min()}.."
                                 f"{labels.max()}{redownload}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar(name: str, data_dir: str | None) -> ImageData:
    """CIFAR-10 or CIFAR-100 (fine labels) from the python-pickle files under ``data_dir``, checked as they load."""
    folder = _cifar_folder(name, data_dir)
    _, train_files, test_file, label_key, meta_file, names_key = _CIFAR_LAYOUT[name]
    num_classes = 10 if name == "cifar10" else 100

    def read(files):
        parts = [_cifar_part(folder / f, label_key, num_classes) for f in files]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    x_train, y_train = read(train_files)
    x_test, y_test = read([test_file])
    meta_path = folder / meta_file
    names = tuple(n.decode() for n in _unpickle(meta_path)[names_key]) if meta_path.is_file() else ()
    mean, std = _CIFAR_STATS[name]
    return ImageData(name, x_train, y_train, x_test, y_test, num_classes, mean, std, class_names=names)


@DATASETS.register("cifar10", "CIFAR-10 from the python-pickle files in --data-dir (50k train / 10k test, 10 classes)")
def cifar10(data_dir: str | None = None) -> ImageData:
    return load_cifar("cifar10", data_dir)


@DATASETS.register("cifar100", "CIFAR-100 from the python-pickle files in --data-dir (50k / 10k, 100 classes)")
def cifar100(data_dir: str | None = None) -> ImageData:
    return load_cifar("cifar100", data_dir)
