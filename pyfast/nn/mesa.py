"""Mesa layers: drop-in replacements for ``nn.Linear``, ``nn.GELU``, ``nn.Softmax``, ``nn.LayerNorm``,
``nn.Conv2d`` and a ``MatMul`` module, whose forward runs at full precision and whose saved activations are stored as
uint8 codes (Pan et al., Mesa, arXiv 2111.11124), dequantized in backward.

Each layer has the constructor of its ``nn`` counterpart plus keyword-only quantization options (``quant_groups``,
``levels``, ``ema_decay``, ``stochastic``, ``backend``) and keeps its running estimates in :class:`Quantizer`
submodules (buffers ``clip_val``, ``shift``, ``initialized``). A ``nn`` counterpart's state_dict loads into it
(missing estimates start uninitialized, so the first batch sets them).

Quantization happens only when a backward will need the activations (grad enabled and an input or parameter
requiring grad); otherwise the layer is exactly its ``nn`` counterpart. The estimates are updated (EMA) in training
mode and frozen in eval mode. Under autocast the layers follow autocast's choices: Linear, Conv2d and MatMul compute
in the autocast dtype, LayerNorm and Softmax in float32, GELU in its input dtype.

Grouping: ``quant_groups`` G splits the channel axis (the last one for Linear / GELU / LayerNorm inputs, axis 1 for
Conv2d) into G contiguous chunks; for 4-D ``[B, H, N, D]`` operands of MatMul and Softmax the group axis is 1 (with
G = H: one group per head).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from pyfast._checks import check_bool, check_choice, check_int, check_number
from pyfast.backends import resolve
from pyfast.nn._checks import check_backend, check_shape, check_tokens
from pyfast.ops import mesa as ops

__all__ = ["GELU", "Attention", "Conv2d", "LayerNorm", "LayerNorm2d", "Linear", "MatMul", "Quantizer", "Softmax"]

GELU_APPROXIMATIONS = ("none", "tanh")  # nn.GELU's, which it checks only at the first forward


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class Quantizer(nn.Module):
    """Running estimates of one quantized tensor: float32 ``clip_val`` (range alpha) and ``shift`` (minimum beta),
    one per group, and a bool ``initialized``; plus the quantization options."""

    def __init__(self, groups: int = 1, *, levels: int = 256, ema_decay: float = 0.9, stochastic: bool = True,
                 backend: str = "auto", device=None):
        super().__init__()
        self.groups = ops.check_groups(groups)
        self.levels = ops.check_levels(levels)
        self.ema_decay = ops.check_ema_decay(ema_decay)
        self.stochastic = check_bool("mesa", "stochastic", stochastic)
        self.backend = check_backend("mesa", backend)
        self.register_buffer("clip_val", torch.ones(self.groups, dtype=torch.float32, device=device))
        self.register_buffer("shift", torch.zeros(self.groups, dtype=torch.float32, device=device))
        self.register_buffer("initialized", torch.zeros(1, dtype=torch.bool, device=device))

    def extra_repr(self) -> str:
        return (f"groups={self.groups}, levels={self.levels}, ema_decay={self.ema_decay}, "
                f"stochastic={self.stochastic}")

    def args(self, x: torch.Tensor, qdim: int, seed: torch.Tensor | None = None) -> tuple:
        """The trailing quant arguments of a layer op (see pyfast.ops.mesa) for tensor ``x`` grouped on ``qdim``."""
        if x.shape[qdim] % self.groups:
            raise ValueError(f"mesa: quant_groups ({self.groups}) must divide the size of the group axis "
                             f"({x.shape[qdim]}) of a tensor of shape {tuple(x.shape)}")
        if self.clip_val.device != x.device:
            raise ValueError(f"mesa: the quantizer's running estimates (clip_val, shift) are on {self.clip_val.device} "
                             f"but the input is on {x.device}; move the module with .to({str(x.device)!r})")
        if seed is None:
            seed = new_seed(x.device)
        backend = resolve("mesa", self.backend, x.device)
        return (self.clip_val, self.shift, self.initialized, seed, qdim, self.levels, self.ema_decay, self.training,
                self.stochastic, backend)

    @torch.no_grad()
    def commit(self, clip_val: torch.Tensor, shift: torch.Tensor) -> None:
        """Store the estimates a layer op returned (training mode only: eval keeps the estimates fixed)."""
        if self.training:
            self.clip_val.copy_(clip_val)
            self.shift.copy_(shift)
            self.initialized.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A state_dict of the nn counterpart has no estimates: keep ours (uninitialized) instead of failing.
        absent = [k for k in ("clip_val", "shift", "initialized") if prefix + k not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for k in absent:
            if prefix + k in missing_keys:
                missing_keys.remove(prefix + k)


def new_seed(device) -> torch.Tensor:
    """A fresh int64 rounding seed from torch's generator of ``device`` (reproducible under torch.manual_seed)."""
    return torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=device)


def _needs_saving(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class Linear(nn.Linear):
    """``nn.Linear`` storing its input as uint8 (G chunks of ``in_features``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 quant_groups: int = 1, levels: int = 256, ema_decay: float = 0.9, stochastic: bool = True,
                 backend: str = "auto"):
        check_int("mesa.Linear", "in_features", in_features)
        check_int("mesa.Linear", "out_features", out_features)
        super().__init__(in_features, out_features, bias, device, dtype)
        ops.check_groups(quant_groups, in_features, "in_features")
        self.quant = Quantizer(quant_groups, levels=levels, ema_decay=ema_decay, stochastic=stochastic,
                               backend=backend, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_saving(x, self.weight, self.bias):
            return super().forward(x)
        cast = _autocast_dtype(x.device)
        if cast is not None:
            x = x.to(cast)
        y, _, c, s = torch.ops.pyfast.mesa_linear(x, self.weight, self.bias, *self.quant.args(x, -1))
        self.quant.commit(c, s)
        return y


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` storing its (padded) input as uint8 (G chunks of ``in_channels``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 quant_groups: int = 1, levels: int = 256, ema_decay: float = 0.9, stochastic: bool = True,
                 backend: str = "auto"):
        check_int("mesa.Conv2d", "in_channels", in_channels)
        check_int("mesa.Conv2d", "out_channels", out_channels)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        ops.check_groups(quant_groups, in_channels, "in_channels")
        self.quant = Quantizer(quant_groups, levels=levels, ema_decay=ema_decay, stochastic=stochastic,
                               backend=backend, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_saving(x, self.weight, self.bias) or x.dim() != 4:
            return super().forward(x)
        padding = list(self.padding) if not isinstance(self.padding, str) else [0, 0]
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = [0, 0]
        cast = _autocast_dtype(x.device)
        if cast is not None:
            x = x.to(cast)
        y, _, c, s = torch.ops.pyfast.mesa_conv2d(x, self.weight, self.bias, list(self.stride), padding,
                                                  list(self.dilation), self.groups, *self.quant.args(x, 1))
        self.quant.commit(c, s)
        return y


class GELU(nn.GELU):
    """``nn.GELU`` storing its input as uint8 (G chunks of the last axis)."""

    def __init__(self, approximate: str = "none", *, quant_groups: int = 1, levels: int = 256,
                 ema_decay: float = 0.9, stochastic: bool = True, backend: str = "auto"):
        super().__init__(check_choice("mesa.GELU", "approximate", approximate, GELU_APPROXIMATIONS))
        self.quant = Quantizer(quant_groups, levels=levels, ema_decay=ema_decay, stochastic=stochastic,
                               backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_saving(x):
            return super().forward(x)
        y, _, c, s = torch.ops.pyfast.mesa_gelu(x, self.approximate, *self.quant.args(x, -1))
        self.quant.commit(c, s)
        return y


class Softmax(nn.Softmax):
    """``nn.Softmax`` storing only its output, as uint8 (its backward needs nothing else). Groups: axis 1 of a 4-D
    ``[B, H, N, N]`` attention map (one per head with ``quant_groups = H``), else chunks of the last axis."""

    def __init__(self, dim: int | None = None, *, quant_groups: int = 1, levels: int = 256, ema_decay: float = 0.9,
                 stochastic: bool = True, backend: str = "auto"):
        super().__init__(dim)
        self.quant = Quantizer(quant_groups, levels=levels, ema_decay=ema_decay, stochastic=stochastic,
                               backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_saving(x) or self.dim is None:
            return super().forward(x)
        if _autocast_dtype(x.device) is not None:
            x = x.float()  # autocast runs softmax in float32
        qdim = 1 if x.dim() == 4 else -1
        y, _, c, s = torch.ops.pyfast.mesa_softmax(x, self.dim, *self.quant.args(x, qdim))
        self.quant.commit(c, s)
        return y


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` storing its input as uint8 (G chunks of the last axis) plus the float32 row mean / rstd."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, quant_groups: int = 1, levels: int = 256, ema_decay: float = 0.9,
                 stochastic: bool = True, backend: str = "auto"):
        shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else normalized_shape
        if not check_shape("mesa.LayerNorm", "normalized_shape", shape):
            raise ValueError("mesa.LayerNorm: normalized_shape must name at least one axis, got ()")
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        ops.check_groups(quant_groups, self.normalized_shape[-1], "normalized_shape[-1]")
        self.quant = Quantizer(quant_groups, levels=levels, ema_decay=ema_decay, stochastic=stochastic,
                               backend=backend, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_saving(x, self.weight, self.bias):
            return super().forward(x)
        if _autocast_dtype(x.device) is not None:
            x = x.float()  # autocast runs layer_norm in float32
        y, _, _, _, c, s = torch.ops.pyfast.mesa_layer_norm(x, list(self.normalized_shape), self.weight, self.bias,
                                                            self.eps, *self.quant.args(x, -1))
        self.quant.commit(c, s)
        return y


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channels of ``[B, C, H, W]`` (timm's and torchvision's ``LayerNorm2d``: normalise axis 1
    at every position), storing its input as uint8; computed on the channels-last view, as theirs are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"mesa.LayerNorm2d: x must have shape [B, C, H, W], got {tuple(x.shape)}")
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MatMul(nn.Module):
    """``a @ b`` storing both operands as uint8, each with its own estimates (``quant_a``, ``quant_b``). Groups: axis
    1 of 4-D ``[B, H, ., .]`` operands (one per head with ``quant_groups = H``), else chunks of the last axis."""

    def __init__(self, *, quant_groups: int = 1, levels: int = 256, ema_decay: float = 0.9, stochastic: bool = True,
                 backend: str = "auto"):
        super().__init__()
        kw = dict(levels=levels, ema_decay=ema_decay, stochastic=stochastic, backend=backend)
        self.quant_a = Quantizer(quant_groups, **kw)
        self.quant_b = Quantizer(quant_groups, **kw)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not _needs_saving(a, b):
            return a @ b
        cast = _autocast_dtype(a.device)
        if cast is not None:
            a, b = a.to(cast), b.to(cast)
        qa = self.quant_a.args(a, 1 if a.dim() == 4 else -1)
        qb = self.quant_b.args(b, 1 if b.dim() == 4 else -1, seed=qa[3])
        y, _, ca, sa, _, cb, sb = torch.ops.pyfast.mesa_matmul(
            a, b, qa[0], qa[1], qa[2], qb[0], qb[1], qb[2], qa[3], qa[4], qb[4], *qa[5:])
        self.quant_a.commit(ca, sa)
        self.quant_b.commit(cb, sb)
        return y


class Attention(nn.Module):
    """Multi-head self-attention ``[B, N, C] -> [B, N, C_out]`` with Mesa's quantized ``q @ k^T``, softmax and
    ``attn @ v`` (grouped per head): a drop-in for timm's ``vision_transformer.Attention`` (and pyfast's ViT
    attention), with its call ``forward(x, attn_mask=None, is_causal=False)``.

    ``qkv`` / ``proj`` are whatever modules it is given (Mesa or plain Linear; ``qkv`` maps C to ``3 H D``).
    The optional timm parts keep their roles: ``q_norm`` / ``k_norm`` on each head's queries and keys, ``norm`` on
    the attention output before ``proj``, ``gate`` (a Linear on x whose sigmoid scales that output). ``attn_mask``:
    an additive float mask, or a bool mask where True keeps a score (as ``F.scaled_dot_product_attention``);
    ``is_causal`` masks the upper triangle (it takes precedence over ``attn_mask``, as in timm).
    """

    def __init__(self, qkv: nn.Module, proj: nn.Module, num_heads: int, scale: float, attn_drop: nn.Module | None = None,
                 proj_drop: nn.Module | None = None, *, q_norm: nn.Module | None = None,
                 k_norm: nn.Module | None = None, norm: nn.Module | None = None, gate: nn.Module | None = None,
                 matmul: bool = True, softmax: bool = True, **quant):
        super().__init__()
        for name, module in (("qkv", qkv), ("proj", proj)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"mesa.Attention: {name} must be an nn.Module, got {type(module).__name__}")
        check_bool("mesa.Attention", "matmul", matmul)
        check_bool("mesa.Attention", "softmax", softmax)
        self.num_heads = check_int("mesa.Attention", "num_heads", num_heads)
        self.scale = check_number("mesa.Attention", "scale", scale, low=0.0, low_open=True)
        self.qkv, self.proj = qkv, proj
        self.attn_drop = attn_drop if attn_drop is not None else nn.Identity()
        self.proj_drop = proj_drop if proj_drop is not None else nn.Identity()
        self.q_norm = q_norm if q_norm is not None else nn.Identity()
        self.k_norm = k_norm if k_norm is not None else nn.Identity()
        self.norm = norm if norm is not None else nn.Identity()
        self.gate = gate
        self.matmul_qk = MatMul(quant_groups=num_heads, **quant) if matmul else None
        self.matmul_av = MatMul(quant_groups=num_heads, **quant) if matmul else None
        self.softmax = Softmax(-1, quant_groups=num_heads, **quant) if softmax else nn.Softmax(-1)

    @classmethod
    def from_timm(cls, attn: nn.Module, *, matmul: bool = True, softmax: bool = True, **quant) -> Attention:
        """The Mesa twin of a timm-style attention module, sharing its submodules (so its parameters)."""
        parts = {name: getattr(attn, name, None) for name in ("attn_drop", "proj_drop", "q_norm", "k_norm", "norm",
                                                              "gate")}
        return cls(attn.qkv, attn.proj, attn.num_heads, attn.scale, matmul=matmul, softmax=softmax, **parts, **quant)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        check_tokens("mesa.Attention", x, c=getattr(self.qkv, "in_features", None))  # qkv may be any module
        B, N, _ = x.shape
        qkv = self.qkv(x)
        if qkv.shape[-1] % (3 * self.num_heads):
            raise ValueError(f"mesa.Attention: qkv gives {qkv.shape[-1]} features, not 3 x num_heads ({self.num_heads})"
                             " x a head width")
        head_dim = qkv.shape[-1] // (3 * self.num_heads)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        kt = k.transpose(-2, -1)
        scores = (self.matmul_qk(q, kt) if self.matmul_qk is not None else q @ kt) * self.scale  # [B, heads, N, N]
        if is_causal:
            scores = scores + scores.new_full((N, N), float("-inf")).triu_(1)
        elif attn_mask is not None:
            scores = scores + (attn_mask if attn_mask.dtype != torch.bool else
                               torch.zeros_like(attn_mask, dtype=scores.dtype).masked_fill_(~attn_mask, float("-inf")))
        attn = self.attn_drop(self.softmax(scores))
        out = self.matmul_av(attn, v) if self.matmul_av is not None else attn @ v
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.num_heads * head_dim))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))
