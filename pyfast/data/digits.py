"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), as torch tensors.

The data ships inside scikit-learn (no download), which makes it the smallest real image-classification task for
smoke-testing training: a small CNN or SNN reaches > 90 % test accuracy in seconds on a CPU.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

NUM_CLASSES = 10


class Split(NamedTuple):
    """A train/test split. Images ``[N, 1, 8, 8]`` float32 in [0, 1]; labels ``[N]`` int64 in [0, 10)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Load the digits, scale pixels from 0..16 to [0, 1] and split them, stratified by class.

    The split depends only on ``seed`` (and the scikit-learn data), never on global RNG state: the same seed gives
    the same split in every process. ``test_fraction`` in (0, 1) of each class goes to the test set
    (0.2 -> 1437 train / 360 test images).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits: test_fraction must lie in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits  # optional dependency: imported on use
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError(
            f"pyfast.data.load_digits needs scikit-learn ({err}): pip install scikit-learn "
            "(or pip install 'pyfast[train]')"
        ) from err
    digits = sk_load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8]
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return Split(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)))
