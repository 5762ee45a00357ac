"""In-memory image datasets for the training harness, and their augmentation.

Images stay ``uint8 [N, C, H, W]`` in memory (CIFAR-100's 50k training images are 150 MB) and are turned into
normalised float batches on the training device, where the augmentation runs too: no DataLoader workers, and the
random choices of an epoch are drawn up front from a generator seeded by ``(seed, epoch)``, one per *image index*,
so they do not depend on batch size, rank or world size (a 2-process run sees the same crops as a 1-process run).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass
class ImageData:
    """A train/test split of labelled images.

    ``x_train`` / ``x_test``: ``uint8 [N, C, H, W]``; ``y_train`` / ``y_test``: ``int64 [N]`` in ``[0, num_classes)``.
    ``mean`` / ``std``: per-channel statistics on the 0..1 scale, used by :meth:`normalize`. ``crop_padding``: random
    crops of the padded image (0: none); ``hflip``: random horizontal flips (off for digits, whose mirror images are
    not digits).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 4
    hflip: bool = True
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"{self.name}: x_{split} must be uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (len(x),):
                raise ValueError(f"{self.name}: y_{split} must be int64 [{len(x)}], got {y.dtype} {tuple(y.shape)}")
        if len(self.mean) != self.x_train.shape[1] or len(self.std) != self.x_train.shape[1]:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.x_train.shape[1]})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def to(self, device) -> ImageData:
        """The same data with its tensors on ``device``."""
        moved = {f: getattr(self, f).to(device) for f in ("x_train", "y_train", "x_test", "y_test")}
        return dataclasses.replace(self, **moved)

    def subset(self, train_index: torch.Tensor | None = None, test_index: torch.Tensor | None = None) -> ImageData:
        """The data restricted to the given train / test image indices (``None`` keeps a split whole)."""
        ch = {}
        if train_index is not None:
            ch.update(x_train=self.x_train[train_index], y_train=self.y_train[train_index])
        if test_index is not None:
            ch.update(x_test=self.x_test[test_index], y_test=self.y_test[test_index])
        return dataclasses.replace(self, **ch)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, C, H, W]`` -> float32 ``(x / 255 - mean) / std`` on ``x``'s device."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std


@dataclasses.dataclass
class Augmentation:
    """Per-image random choices of one epoch: crop offsets ``[N, 2]`` in ``0..2p`` and flips ``[N]`` (bool)."""

    offsets: torch.Tensor
    flips: torch.Tensor
    padding: int

    @classmethod
    def draw(cls, num_images: int, padding: int, hflip: bool, generator: torch.Generator) -> Augmentation:
        offsets = torch.randint(0, 2 * padding + 1, (num_images, 2), generator=generator)
        flips = torch.rand(num_images, generator=generator) < 0.5
        return cls(offsets, flips & hflip, padding)

    def to(self, device) -> Augmentation:
        return Augmentation(self.offsets.to(device), self.flips.to(device), self.padding)

    def apply(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Augment the batch ``x [B, C, H, W]`` of images ``index [B]``: zero-pad by ``padding``, crop at the
        image's offsets, flip where drawn. Works on any dtype and device (indices on ``x``'s device)."""
        if self.padding:
            B, C, H, W = x.shape
            padded = torch.nn.functional.pad(x, (self.padding,) * 4)
            off = self.offsets[index]
            rows = (off[:, 0:1] + torch.arange(H, device=x.device)).view(B, 1, H, 1)
            cols = (off[:, 1:2] + torch.arange(W, device=x.device)).view(B, 1, 1, W)
            x = padded[torch.arange(B, device=x.device).view(B, 1, 1, 1), torch.arange(C, device=x.device).view(
                1, C, 1, 1), rows, cols]
        flips = self.flips[index].view(-1, 1, 1, 1)
        return torch.where(flips, x.flip(3), x)


def to_uint8(images: np.ndarray) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 tensor (rounded)."""
    return torch.from_numpy(np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8))
