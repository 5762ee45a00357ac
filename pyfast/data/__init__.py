"""Datasets of the training harness (in-memory tensors), their augmentation and continual-learning splits."""

from pyfast.data.datasets import DatasetFormatError, DatasetNotFoundError, load_cifar
from pyfast.data.digits import Split, load_digits
from pyfast.data.images import Augmentation, ImageData
from pyfast.data.splits import class_incremental_tasks, class_order, few_shot_indices, indices_of_classes

__all__ = [
    "Augmentation", "DatasetFormatError", "DatasetNotFoundError", "ImageData", "Split", "class_incremental_tasks", "class_order",
    "few_shot_indices", "indices_of_classes", "load_cifar", "load_digits",
]
