"""Small convolutional spiking network, built on :class:`pyfast.nn.LIF` (registered as ``snn-small``)."""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_int, check_int_sequence, check_number
from pyfast.nn import LIF
from pyfast.registry import MODELS


class MultiStep(nn.Module):
    """Run stateless per-step modules on a sequence by merging time into the batch: ``[T, B, *] -> [T, B, *']``.

    A BatchNorm inside normalises over all T*B samples (SpikingJelly's ``SeqToANNContainer`` does the same).
    """

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])


class ConvSNN(nn.Module):
    """Convolutional SNN for ``[B, C, S, S]`` images with direct (analog) input encoding over ``T`` time steps.

    Shapes, with ``c1, c2 = channels``, ``B`` the batch, ``C = in_channels``, ``S = image_size`` (a multiple of 4)::

        x [B, C, S, S] --repeat T--> [T, B, C, S, S]
        Conv3x3(C->c1) + BN + LIF, MaxPool2                  -> [T, B, c1, S/2, S/2]
        Conv3x3(c1->c2) + BN + LIF, MaxPool2                 -> [T, B, c2, S/4, S/4]
        flatten, Linear(c2 S^2/16 -> hidden) + BN + LIF      -> [T, B, hidden]
        Linear(hidden -> num_classes)              -> [T, B, num_classes] --mean over T--> logits [B, num_classes]

    Every synaptic layer is followed by BatchNorm (it keeps the neurons firing at initialisation). Convolutions,
    BatchNorm and pooling run on the merged ``[T*B, ...]`` batch; LIF layers see ``[T, B, ...]``.
    The readout is a non-spiking linear layer whose outputs are averaged over time (the usual surrogate-gradient
    choice: the loss sees a real-valued firing-rate code instead of integer spike counts).

    Args:
        T: time steps (>= 1).
        num_classes: outputs of the readout.
        in_channels, image_size: input geometry (8x8 grey digits: 1, 8).
        channels: ``(c1, c2)`` of the two conv layers.
        hidden: width of the spiking fully-connected layer.
        bn_momentum: BatchNorm running-statistics momentum in (0, 1], or None for a cumulative average. 0.3 rather
            than PyTorch's 0.1: digits gives ~23 steps an epoch, and the running variance starts at 1 while the first
            conv's true variance is ~0.02, so with 0.1 the eval-mode network is still silent (chance accuracy) after
            the first epoch.
        **neuron: keyword arguments of every :class:`pyfast.nn.LIF` layer (``tau``, ``surrogate``, ``alpha``,
            ``learnable_tau``, ``detach_reset``, ``v_reset``, ``backend``, ...).
    """

    def __init__(
        self,
        T: int = 4,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 8,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 128,
        bn_momentum: float = 0.3,
        **neuron,
    ):
        super().__init__()
        for name, value in (("T", T), ("num_classes", num_classes), ("in_channels", in_channels),
                            ("image_size", image_size), ("hidden", hidden)):
            check_int("ConvSNN", name, value)
        if image_size % 4:
            raise ValueError(f"ConvSNN: image_size must be a multiple of 4, got {image_size}")
        c1, c2 = check_int_sequence("ConvSNN", "channels", channels, length=2)
        if bn_momentum is not None:
            check_number("ConvSNN", "bn_momentum", bn_momentum, low=0, high=1, low_open=True)
        self.T, self.in_shape = T, (in_channels, image_size, image_size)
        self.features = nn.Sequential(
            MultiStep(nn.Conv2d(in_channels, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1, momentum=bn_momentum)),
            LIF(**neuron),
            MultiStep(nn.MaxPool2d(2)),
            MultiStep(nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2, momentum=bn_momentum)),
            LIF(**neuron),
            MultiStep(nn.MaxPool2d(2), nn.Flatten()),
            MultiStep(nn.Linear(c2 * (image_size // 4) ** 2, hidden, bias=False), nn.BatchNorm1d(hidden, momentum=bn_momentum)),
            LIF(**neuron),
        )
        self.readout = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, S, S]`` (or an already time-expanded ``[T, B, C, S, S]``) -> logits ``[B, num_classes]``."""
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        if x.dim() != 5 or x.shape[2:] != self.in_shape:
            shape = ", ".join(map(str, self.in_shape))
            raise ValueError(f"ConvSNN: x must have shape [B, {shape}] or [T, B, {shape}], got {tuple(x.shape)}")
        return self.readout(self.features(x)).mean(0)


@MODELS.register("snn-small", "small conv SNN (2 conv + 1 linear LIF layers, T=4): seconds an epoch on digits")
def snn_small(num_classes: int, in_channels: int = 3, image_size: int = 32, **kw) -> ConvSNN:
    return ConvSNN(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw)
