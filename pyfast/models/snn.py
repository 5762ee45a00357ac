"""Small convolutional spiking network for 8x8 digits, built on :class:`pyfast.nn.LIF`."""

from __future__ import annotations

import torch
from torch import nn

from pyfast.nn import LIF


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


class DigitsSNN(nn.Module):
    """Convolutional SNN for ``[B, 1, 8, 8]`` images with direct (analog) input encoding over ``T`` time steps.

    Shapes, with ``c1, c2 = channels`` and ``B`` the batch::

        x [B, 1, 8, 8] --repeat T--> [T, B, 1, 8, 8]
        Conv3x3(1->c1) + BN + LIF, MaxPool2        -> [T, B, c1, 4, 4]
        Conv3x3(c1->c2) + BN + LIF, MaxPool2       -> [T, B, c2, 2, 2]
        flatten, Linear(4*c2 -> hidden) + BN + LIF -> [T, B, hidden]
        Linear(hidden -> num_classes)              -> [T, B, num_classes] --mean over T--> logits [B, num_classes]

    Every synaptic layer is followed by BatchNorm (it keeps the neurons firing at initialisation). Convolutions,
    BatchNorm and pooling run on the merged ``[T*B, ...]`` batch; LIF layers see ``[T, B, ...]``.
    The readout is a non-spiking linear layer whose outputs are averaged over time (the usual surrogate-gradient
    choice: the loss sees a real-valued firing-rate code instead of integer spike counts).

    Args:
        T: time steps (>= 1).
        num_classes: outputs of the readout.
        channels: ``(c1, c2)`` of the two conv layers.
        hidden: width of the spiking fully-connected layer.
        bn_momentum: BatchNorm running-statistics momentum. 0.3 rather than PyTorch's 0.1: digits gives ~23 steps an
            epoch, and the running variance starts at 1 while the first conv's true variance is ~0.02, so with 0.1
            the eval-mode network is still silent (chance accuracy) after the first epoch.
        **neuron: keyword arguments of every :class:`pyfast.nn.LIF` layer (``tau``, ``surrogate``, ``alpha``,
            ``learnable_tau``, ``detach_reset``, ``v_reset``, ``backend``, ...).
    """

    def __init__(
        self,
        T: int = 4,
        num_classes: int = 10,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 128,
        bn_momentum: float = 0.3,
        **neuron,
    ):
        super().__init__()
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"DigitsSNN: T must be an int >= 1, got {T!r}")
        c1, c2 = channels
        self.T = T
        self.features = nn.Sequential(
            MultiStep(nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1, momentum=bn_momentum)),
            LIF(**neuron),
            MultiStep(nn.MaxPool2d(2)),
            MultiStep(nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2, momentum=bn_momentum)),
            LIF(**neuron),
            MultiStep(nn.MaxPool2d(2), nn.Flatten()),
            MultiStep(nn.Linear(4 * c2, hidden, bias=False), nn.BatchNorm1d(hidden, momentum=bn_momentum)),
            LIF(**neuron),
        )
        self.readout = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 1, 8, 8]`` (or an already time-expanded ``[T, B, 1, 8, 8]``) -> logits ``[B, num_classes]``."""
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        if x.dim() != 5 or x.shape[2:] != (1, 8, 8):
            raise ValueError(f"DigitsSNN: x must have shape [B, 1, 8, 8] or [T, B, 1, 8, 8], got {tuple(x.shape)}")
        return self.readout(self.features(x)).mean(0)
