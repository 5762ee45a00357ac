"""``pyfast.nn.WeightedConv1d/2d/3d``: drop-in ``nn.Conv1d/2d/3d`` with the weighted convolution's density.

Each is a subclass of the matching ``nn.Conv*d`` (same constructor, attributes, ``weight`` / ``bias`` parameters and
``isinstance``), plus a ``den`` tensor; the forward convolves with ``W * Phi`` (:func:`pyfast.ops.wconv_weight`)
through the parent's own convolution (ATen, every ``padding_mode``).
"""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_bool, check_int
from pyfast._dtypes import acc_dtype
from pyfast.nn._checks import check_backend
from pyfast.ops.wconv import check_den_values, check_kernel_size, pack_den, weight_of_packed_den
from pyfast.reference.wconv import DEFAULT_DEN, density_ref, split_den

__all__ = ["WeightedConv1d", "WeightedConv2d", "WeightedConv3d", "default_den"]


def default_den(kernel_size) -> tuple | list:
    """The suggested den for a kernel (:data:`pyfast.reference.wconv.DEFAULT_DEN`, from the paper's README v2.0):
    one den shared by every axis when the kernel is square/cubic, else one per axis. ValueError for a kernel size
    with no suggested value (pass ``den`` explicitly)."""
    kernel_size = tuple(kernel_size)
    check_kernel_size(kernel_size)
    missing = sorted({k for k in kernel_size if k not in DEFAULT_DEN})
    if missing:
        raise ValueError(f"wconv: no suggested den for kernel size {missing[0]} (known: {sorted(DEFAULT_DEN)}); pass "
                         f"den=... explicitly")
    if len(set(kernel_size)) == 1:
        return DEFAULT_DEN[kernel_size[0]]
    return [DEFAULT_DEN[k] for k in kernel_size]


class _WeightedConvMixin:
    """The density part shared by WeightedConv1d/2d/3d (placed before nn.Conv*d in the bases)."""

    def _init_density(self, den, learnable_den: bool, allow_negative_den: bool, backend: str) -> None:
        owner = type(self).__name__
        check_bool(owner, "learnable_den", learnable_den)
        check_bool(owner, "allow_negative_den", allow_negative_den)
        check_backend(owner, backend)
        check_kernel_size(self.kernel_size)
        if den is None:
            den = default_den(self.kernel_size)
        packed = pack_den(den, self.kernel_size, device=self.weight.device, dtype=self.weight.dtype)
        check_den_values(packed, allow_negative_den)
        packed = packed.detach().to(device=self.weight.device, dtype=self.weight.dtype).clone()
        if learnable_den:
            self.den = nn.Parameter(packed)
        else:
            self.register_buffer("den", packed)
        self.allow_negative_den = allow_negative_den
        self.backend = backend

    @property
    def learnable_den(self) -> bool:
        return isinstance(self.den, nn.Parameter) and self.den.requires_grad

    def den_per_axis(self) -> list[torch.Tensor]:
        """den of each kernel axis (views of ``self.den``; the same tensor on every axis when it is shared)."""
        return split_den(self.den, self.kernel_size)

    def density(self) -> torch.Tensor:
        """Phi, of shape ``kernel_size`` (float32, or float64 for float64 weights)."""
        return density_ref(self.den.detach(), self.kernel_size, acc_dtype(self.weight.dtype))

    def weighted_weight(self) -> torch.Tensor:
        """W * Phi as the forward uses it, computed on every call.

        Not cached in eval: an update written through ``weight.data`` (an EMA of the weights, say) changes the values
        without bumping the parameter's version counter, so no cache key can see it, and a cached product would be
        silently stale. It costs nothing measurable: a ResNet-18 eval forward (batch 128, 2-core CPU) ran 0.95x-0.97x
        the cached version's time in three side-by-side runs."""
        return weight_of_packed_den(self.weight, self.den, self.backend)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.weighted_weight(), self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A plain nn.Conv*d state dict has no den: it loads (strict or not) and keeps the constructed den, so a
        # pretrained conv model can be loaded into its weighted twin. A den that is present is checked first.
        key = prefix + "den"
        if key in state_dict and isinstance(state_dict[key], torch.Tensor) and state_dict[key].shape == self.den.shape:
            check_den_values(state_dict[key], self.allow_negative_den)
        n_missing = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key not in state_dict and key in missing_keys[n_missing:]:
            missing_keys.remove(key)

    def extra_repr(self) -> str:
        den = [round(v, 4) for v in self.den.detach().float().tolist()]
        return f"{super().extra_repr()}, den={den}" + (", learnable_den=True" if self.learnable_den else "")


_DOC = """{name}: ``nn.{base}`` with the weighted convolution's density (Cammarasana & Patane, arXiv 2505.24558).

    ``y = conv(x, W * Phi, bias)``, Phi the outer product over kernel axes of ``alpha = [den, 1, reversed(den)]``
    (centre tap fixed at 1; see :func:`pyfast.ops.wconv_weight`). Every kernel size must be odd.

    Arguments: those of ``nn.{base}`` (same defaults: padding 0, bias True, nn's init; the paper's code defaults to
    padding 1, bias False and kaiming fan_out init), then keyword-only:
        den: one den per kernel axis (a sequence of sequences / 1-D tensors), or one sequence shared by every axis of
            a square/cubic kernel (the paper's isotropic density), outermost value first. ``None``: the suggested
            values, :func:`pyfast.nn.wconv.default_den` (3: [0.7], 5: [0.2, 0.8], 7: [0.25, 0.15, 0.55]).
        learnable_den: ``den`` is an ``nn.Parameter`` (trained; give it its own optimizer group with
            :func:`pyfast.wconv.den_parameters`) instead of a buffer.
        allow_negative_den: accept negative den values (checked at construction and when loading a state dict).
        backend: backend of the density-weight op (``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"``, ``"reference"``).

    ``den`` is 1-D: the per-axis dens concatenated (axis 0 first), or the shared den. It is in the state dict as
    ``den`` (parameter or buffer). State dicts: ``weight`` / ``bias`` have nn.{base}'s keys and shapes, and an
    ``nn.{base}`` state dict (no ``den``) loads into this module even with ``strict=True``, keeping the constructed
    den. The other way, ``nn.{base}.load_state_dict`` needs ``strict=False`` (it does not know ``den``), and
    then computes the plain conv of W, not of W * Phi: use :func:`pyfast.wconv.revert` to fold Phi into a plain conv.
    """


def _make_init(base: type):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, *, den=None, learnable_den=False,
                 allow_negative_den=False, backend="auto"):
        check_int(type(self).__name__, "in_channels", in_channels)  # before nn.Conv*d allocates the weight
        check_int(type(self).__name__, "out_channels", out_channels)
        base.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                      padding_mode, device, dtype)
        self._init_density(den, learnable_den, allow_negative_den, backend)

    return __init__


class WeightedConv1d(_WeightedConvMixin, nn.Conv1d):
    __doc__ = _DOC.format(name="WeightedConv1d", base="Conv1d")
    __init__ = _make_init(nn.Conv1d)


class WeightedConv2d(_WeightedConvMixin, nn.Conv2d):
    __doc__ = _DOC.format(name="WeightedConv2d", base="Conv2d")
    __init__ = _make_init(nn.Conv2d)


class WeightedConv3d(_WeightedConvMixin, nn.Conv3d):
    __doc__ = _DOC.format(name="WeightedConv3d", base="Conv3d")
    __init__ = _make_init(nn.Conv3d)


WEIGHTED_CONVS = {nn.Conv1d: WeightedConv1d, nn.Conv2d: WeightedConv2d, nn.Conv3d: WeightedConv3d}
