"""VGG-16 for 32x32 images, as an ANN and as a spiking network (IIR-SNN), with BatchNorm folding.

Shapes (``w`` = channel multiplier ``width``; ``c = round(512 w)``)::

    x [B, 3, 32, 32] -> 13 x (conv3x3 + BN + activation), 5 pools -> [B, c, 1, 1] -> flatten [B, c]
    classifier: Linear(c, hidden) + act + dropout, Linear(hidden, hidden) + act + dropout, Linear(hidden, classes)

The spiking network (:class:`SpikingVGG16`) runs the same layers on ``[T, B, ...]``: convolutions, BN and pooling see
the merged ``[T*B, ...]`` batch, and every activation is an IIR-SNN neuron (:class:`pyfast.nn.LIF` with a learnable
leak and threshold per layer, soft reset, the triangle surrogate). The input is direct-encoded: the image drives the
first conv at every step, so that conv runs once and is repeated over T. Pooling is average pooling (as in IIR-SNN:
a max over spikes passes almost no gradient), and the logits are the time average of the last linear layer.

:func:`fuse_bn` folds every ``Conv -> BatchNorm`` pair into the conv (the "BN-fused" networks of IIR-SNN, whose
spiking stages start from a fused ANN): the folded network equals the original in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_choice, check_int, check_number, check_positive, check_rate
from pyfast.backends import BACKENDS
from pyfast.nn import LIF
from pyfast.reference.lif import SURROGATES
from pyfast.registry import MODELS

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _check_options(owner: str, num_classes: int, in_channels: int, width: float, hidden: int, dropout: float) -> None:
    """The options VGG16 and SpikingVGG16 share: sizes >= 1, ``width`` a finite number > 0, ``dropout`` in [0, 1)."""
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("hidden", hidden)):
        check_int(owner, name, value)
    check_positive(owner, "width", width)
    check_rate(owner, "dropout", dropout)


def _features(width: float, in_channels: int, activation, pool) -> nn.Sequential:
    layers, cin = [], in_channels
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(pool())
        else:
            cout = max(1, round(v * width))
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), activation()]
            cin = cout
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """ANN VGG-16 with BatchNorm (see the module docstring). ``hidden``: classifier width (scaled by ``width``)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0, hidden: int = 512,
                 dropout: float = 0.2):
        super().__init__()
        _check_options("VGG16", num_classes, in_channels, width, hidden, dropout)
        self.features = _features(width, in_channels, lambda: nn.ReLU(inplace=True), lambda: nn.MaxPool2d(2))
        c, h = max(1, round(512 * width)), max(1, round(hidden * width))
        self.classifier = nn.Sequential(
            nn.Linear(c, h), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(h, h), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(h, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def iir_neuron(threshold: float = 0.4, leak: float = 1.0, surrogate: str = "triangle", alpha: float = 0.3,
               backend: str = "auto") -> LIF:
    """The IIR-SNN neuron: U_t = leak U_{t-1} + I_t, spike when U_t > threshold, soft reset U_t -= threshold S_t,
    with leak and threshold learnable scalars of the layer (``decay_input=False``, k = 1 - leak).

    ``threshold`` and ``alpha`` (the surrogate's sharpness) are finite numbers > 0, ``leak`` is in [0, 1] (1: no
    leak), ``surrogate`` one of :data:`pyfast.reference.lif.SURROGATES`, ``backend`` one of
    :data:`pyfast.backends.BACKENDS`; checked here, when the layer is built, rather than at its first forward."""
    check_positive("iir_neuron", "threshold", threshold)
    check_number("iir_neuron", "leak", leak, low=0, high=1)
    check_choice("iir_neuron", "surrogate", surrogate, SURROGATES)
    check_positive("iir_neuron", "alpha", alpha)
    check_choice("iir_neuron", "backend", backend, BACKENDS)
    return LIF(tau=1.0 / (1.0 - leak) if leak < 1 else float("inf"), v_threshold=threshold, v_reset=None,
               decay_input=False, surrogate=surrogate, alpha=alpha, backend=backend, learnable_leak=True,
               learnable_threshold=True)


class SpikingVGG16(nn.Module):
    """IIR-SNN VGG-16 over ``T`` time steps (see the module docstring). ``x [B, 3, 32, 32] -> logits [B, classes]``.

    ``T`` is an attribute: the IIR-SNN schedule lowers it stage by stage (5, 4, ..., 1) on the same weights.
    ``neuron``: keyword arguments of :func:`iir_neuron` (threshold, leak, surrogate, alpha, backend).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, T: int = 5, width: float = 1.0, hidden: int = 512,
                 dropout: float = 0.2, **neuron):
        super().__init__()
        _check_options("SpikingVGG16", num_classes, in_channels, width, hidden, dropout)
        self.T = check_int("SpikingVGG16", "T", T)
        self.features = _features(width, in_channels, lambda: iir_neuron(**neuron), lambda: nn.AvgPool2d(2))
        c, h = max(1, round(512 * width)), max(1, round(hidden * width))
        self.classifier = nn.Sequential(
            nn.Linear(c, h), iir_neuron(**neuron), nn.Dropout(dropout),
            nn.Linear(h, h), iir_neuron(**neuron), nn.Dropout(dropout),
            nn.Linear(h, num_classes),
        )

    def _run(self, layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """``x [T, B, ...]``: neurons see the sequence, every other layer the merged ``[T*B, ...]`` batch."""
        for layer in layers:
            if isinstance(layer, LIF):
                x = layer(x)
            else:
                x = layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"SpikingVGG16: x must have shape [B, C, H, W], got {tuple(x.shape)}")
        conv, bn, *rest = self.features
        current = bn(conv(x))  # direct encoding: the same input current at every step, computed once
        h = current.unsqueeze(0).expand(self.T, *current.shape)
        h = self._run(nn.Sequential(*rest), h)
        return self._run(self.classifier, h.flatten(2)).mean(0)


def fuse_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a Conv2d in an ``nn.Sequential`` into that conv, in place.

    conv'(x) = gamma (conv(x) - mean) / sqrt(var + eps) + beta: weight scaled per output channel, bias added. The BN
    becomes ``nn.Identity``; the result equals the original model in eval mode (running statistics). Returns model.
    """
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True).to(conv.weight)
            with torch.no_grad():
                fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias.detach())
            seq[i], seq[i + 1] = fused, nn.Identity()
    return model


def _check_image_size(builder: str, image_size: int) -> None:
    """The VGG builders take 32x32 input only: five 2x2 pools leave the classifier a 1x1 map."""
    if check_int(builder, "image_size", image_size) != 32:
        raise ValueError(f"{builder}: built for 32x32 input (5 pools to 1x1), got image_size {image_size}")


@MODELS.register("vgg16", "VGG-16 with BatchNorm, CIFAR variant (512-wide classifier)")
def vgg16(num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0, **kw) -> VGG16:
    _check_image_size("vgg16", image_size)
    return VGG16(num_classes, in_channels, width, **kw)


@MODELS.register("vgg16-snn", "spiking VGG-16 (IIR-SNN neurons: learnable leak and threshold, triangle surrogate)")
def vgg16_snn(num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0, T: int = 5,
              **kw) -> SpikingVGG16:
    _check_image_size("vgg16-snn", image_size)
    return SpikingVGG16(num_classes, in_channels, T, width, **kw)
