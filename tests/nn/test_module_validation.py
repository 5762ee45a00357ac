"""Every module of pyfast.nn refuses a bad argument at construction, and a badly shaped input at forward, with a
TypeError (wrong type) or ValueError (wrong value) that names the module, the argument, what was expected and what
was given. Before these checks, such arguments failed later and elsewhere (a ZeroDivisionError for num_heads=0, an
IndexError at forward for channel_dim=5, a tuple-unpacking error for a 2-D token input) or were silently accepted
(LIF(surrogate="x"), LIF(v_reset=nan), mesa's stochastic="no" counting as True)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import pyfast.convert
import pyfast.nn as pnn
from pyfast.nn import mesa

NAN, INF = math.nan, math.inf
BACKENDS = "backend must be one of ('auto', 'reference', 'cpp', 'cuda', 'triton'), got 'gpu'"


def case(make, *args, error, fragment, **kwargs):
    """One row: ``make(*args, **kwargs)`` raises ``error`` with ``fragment`` in its message."""
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return pytest.param(make, args, kwargs, error, fragment, id=f"{make.__name__}({', '.join(shown)})")


def _shared_parameters():
    model = nn.Linear(2, 2)
    return (model, torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1))


def _routing(model=None, gate=None, main=None, **kwargs):
    """GradientRouting of a valid model and optimisers, with the arguments given replaced."""
    layer = nn.Linear(2, 2)
    gate = torch.optim.SGD([layer.weight], lr=0.1) if gate is None else gate
    main = torch.optim.SGD([layer.bias], lr=0.1) if main is None else main
    return pnn.GradientRouting(layer if model is None else model, gate, main, **kwargs)


CONSTRUCTORS = [
    # LIF / IF
    case(pnn.LIF, surrogate="x", error=ValueError,
         fragment="LIF: surrogate must be one of ('sigmoid', 'atan', 'triangle'), got 'x'"),
    case(pnn.LIF, alpha=-1, error=ValueError, fragment="LIF: alpha must be a finite number > 0, got -1"),
    case(pnn.LIF, alpha=NAN, error=ValueError, fragment="LIF: alpha must be a finite number > 0, got nan"),
    case(pnn.LIF, alpha="4", error=TypeError, fragment="LIF: alpha must be a finite number > 0, got str '4'"),
    case(pnn.LIF, v_reset=NAN, error=ValueError, fragment="LIF: v_reset must be a finite number, got nan"),
    case(pnn.LIF, v_reset=-INF, error=ValueError, fragment="LIF: v_reset must be a finite number, got -inf"),
    case(pnn.LIF, param_shape=(-1,), error=ValueError,
         fragment="LIF: param_shape must be a tuple of ints >= 1, got (-1,)"),
    case(pnn.LIF, param_shape=(4, 0), learnable_tau=True, error=ValueError,
         fragment="LIF: param_shape must be a tuple of ints >= 1, got (4, 0)"),
    case(pnn.LIF, param_shape=(2.0,), error=TypeError, fragment="LIF: param_shape must be a tuple of ints >= 1"),
    case(pnn.LIF, param_shape=4, error=TypeError, fragment="LIF: param_shape must be a tuple of ints >= 1, got int 4"),
    case(pnn.LIF, tau="2", error=TypeError, fragment="LIF: tau must be a number >= 1, got str '2'"),
    case(pnn.LIF, tau=NAN, error=ValueError, fragment="LIF: tau must be a number >= 1, got nan"),
    case(pnn.LIF, tau=0.5, error=ValueError, fragment="LIF: tau must be a number >= 1, got 0.5"),
    case(pnn.LIF, tau=INF, error=ValueError, fragment="LIF: tau=inf (k = 0) with decay_input=True"),
    case(pnn.LIF, v_threshold=INF, error=ValueError, fragment="LIF: v_threshold must be a finite number > 0, got inf"),
    case(pnn.LIF, decay_input="no", error=TypeError, fragment="LIF: decay_input must be a bool, got str 'no'"),
    case(pnn.LIF, learnable_tau=1, error=TypeError, fragment="LIF: learnable_tau must be a bool, got int 1"),
    case(pnn.LIF, backend="gpu", error=ValueError, fragment=f"LIF: {BACKENDS}"),
    case(pnn.IF, surrogate="relu", error=ValueError, fragment="IF: surrogate must be one of"),
    case(pnn.IF, alpha=0, error=ValueError, fragment="IF: alpha must be a finite number > 0, got 0"),
    case(pnn.IF, v_reset=NAN, error=ValueError, fragment="IF: v_reset must be a finite number, got nan"),
    case(pnn.IF, v_threshold=NAN, error=ValueError, fragment="IF: v_threshold must be a finite number > 0, got nan"),
    case(pnn.IF, param_shape=(0,), error=ValueError, fragment="IF: param_shape must be a tuple of ints >= 1, got (0,)"),
    case(pnn.IF, detach_reset=None, error=TypeError, fragment="IF: detach_reset must be a bool, got NoneType"),
    # Gates and gated attention
    case(pnn.HardAttentionGate, 4, channel_dim=5, error=ValueError,
         fragment="HardAttentionGate: channel_dim must be in [-4, -1] or [1, 4] (axis 0 is the batch; inputs have at "
                  "most 5 dims), got 5"),
    case(pnn.HardAttentionGate, 4, channel_dim=0, error=ValueError,
         fragment="HardAttentionGate: channel_dim must be in [-4, -1] or [1, 4]"),
    case(pnn.HardAttentionGate, 4, channel_dim=1.0, error=TypeError,
         fragment="HardAttentionGate: channel_dim must be an int, got float 1.0"),
    case(pnn.HardAttentionGate, 0, error=ValueError, fragment="HardAttentionGate: channels must be an int >= 1, got 0"),
    case(pnn.HardAttentionGate, "4", error=TypeError,
         fragment="HardAttentionGate: channels must be an int >= 1, got str '4'"),
    case(pnn.GatedClassAttention, 8, 0, error=ValueError,
         fragment="GatedClassAttention: num_heads must be an int >= 1, got 0"),
    case(pnn.GatedClassAttention, 8, -2, error=ValueError,
         fragment="GatedClassAttention: num_heads must be an int >= 1, got -2"),
    case(pnn.GatedClassAttention, 10, 3, error=ValueError,
         fragment="GatedClassAttention: dim (10) must be a multiple of num_heads (3)"),
    case(pnn.GatedClassAttention, 8, 2, qkv_bias="yes", error=TypeError,
         fragment="GatedClassAttention: qkv_bias must be a bool, got str 'yes'"),
    case(pnn.GatedClassAttention, 8, 2, backend="gpu", error=ValueError, fragment=f"GatedClassAttention: {BACKENDS}"),
    case(pnn.GatedClassAttentionBlock, 8, 2, 0, error=ValueError,
         fragment="GatedClassAttentionBlock: num_tasks must be an int >= 1, got 0"),
    case(pnn.GatedClassAttentionBlock, 8, 2, 2.5, error=TypeError,
         fragment="GatedClassAttentionBlock: num_tasks must be an int >= 1, got float 2.5"),
    case(pnn.GatedClassAttentionBlock, 0, 2, 2, error=ValueError,
         fragment="GatedClassAttentionBlock: dim must be an int >= 1, got 0"),
    case(pnn.GatedClassAttentionBlock, 8, 2, 2, mlp_ratio=NAN, error=ValueError,
         fragment="GatedClassAttentionBlock: mlp_ratio must be a finite number > 0, got nan"),
    case(pnn.GatedClassAttentionBlock, 8, 2, 2, mlp_ratio=0.1, error=ValueError,
         fragment="GatedClassAttentionBlock: mlp_ratio must give an MLP of at least 1 unit, got int(dim * mlp_ratio) "
                  "= int(8 * 0.1) = 0"),
    case(pnn.GatedClassAttentionBlock, 8, 2, 2, s_max="800", error=TypeError,
         fragment="GatedClassAttentionBlock: s_max must be a finite number > 0, got str '800'"),
    case(pnn.GatedClassAttentionBlock, 8, 2, 2, thres_emb=INF, error=ValueError,
         fragment="GatedClassAttentionBlock: thres_emb must be a finite number > 0, got inf"),
    case(pnn.anneal_s, 1, 10, s_max=0.0, error=ValueError, fragment="anneal_s: s_max must be a finite number > 0, got 0"),
    case(_routing, model="model", error=TypeError, fragment="GradientRouting: model must be an nn.Module, got str"),
    case(_routing, gate=[1], error=TypeError,
         fragment="GradientRouting: gate_optimizer must be a torch.optim.Optimizer, got list"),
    case(_routing, accumulate="no", error=TypeError, fragment="GradientRouting: accumulate must be a bool, got str"),
    case(lambda: pnn.GradientRouting(*_shared_parameters()), error=ValueError,
         fragment="GradientRouting: gate_optimizer and main_optimizer must hold disjoint parameters (the gates, "
                  "everything else), got 2 parameter(s) in both"),
    # Activations, normalisation, heads, drop path
    case(pnn.CRReLU, "0.01", error=TypeError, fragment="CRReLU: eps_init must be a finite number, got str '0.01'"),
    case(pnn.CRReLU, INF, error=ValueError, fragment="CRReLU: eps_init must be a finite number, got inf"),
    case(pnn.CRReLU, per_channel="yes", num_channels=4, error=TypeError,
         fragment="CRReLU: per_channel must be a bool, got str 'yes'"),
    case(pnn.CRReLU, per_channel=True, num_channels=0, error=ValueError,
         fragment="CRReLU: num_channels must be an int >= 1, got 0"),
    case(pnn.CRReLU, num_channels=64, error=ValueError,
         fragment="CRReLU: num_channels=64 is used only with per_channel=True"),
    case(pnn.CRReLU, dim=1.5, error=TypeError, fragment="CRReLU: dim must be an int, got float"),
    case(pnn.CRReLU, backend="gpu", error=ValueError, fragment=f"CRReLU: {BACKENDS}"),
    case(pnn.GhostBatchNorm2d, -1, error=ValueError, fragment="GhostBatchNorm2d: num_features must be an int >= 1, got -1"),
    case(pnn.GhostBatchNorm1d, 0, error=ValueError, fragment="GhostBatchNorm1d: num_features must be an int >= 1, got 0"),
    case(pnn.GhostBatchNorm1d, 2.5, error=TypeError,
         fragment="GhostBatchNorm1d: num_features must be an int >= 1, got float 2.5"),
    case(pnn.GhostBatchNorm2d, 4, 0, error=ValueError, fragment="ghost_batch_size must be an int >= 1, got 0"),
    case(pnn.GhostBatchNorm2d, 4, momentum=NAN, error=ValueError, fragment="momentum must be a finite number in [0, 1]"),
    case(pnn.GhostBatchNorm2d, 4, eps=0.0, error=ValueError, fragment="eps must be a finite number > 0, got 0.0"),
    case(pnn.GhostBatchNorm2d, 4, backend="gpu", error=ValueError, fragment=f"GhostBatchNorm2d: {BACKENDS}"),
    case(pyfast.convert.convert_to_ghost_bn, nn.Linear(2, 2), 0, error=ValueError,
         fragment="convert_to_ghost_bn: ghost_batch_size must be an int >= 1, got 0"),
    case(pnn.MultiSampleDropoutHead, -1, 10, error=ValueError,
         fragment="MultiSampleDropoutHead: in_features must be an int >= 1, got -1"),
    case(pnn.MultiSampleDropoutHead, 8, 0, error=ValueError,
         fragment="MultiSampleDropoutHead: num_classes must be an int >= 1, got 0"),
    case(pnn.MultiSampleDropoutHead, 8, 10, num_samples=0, error=ValueError,
         fragment="num_samples must be an int >= 1, got 0"),
    case(pnn.MultiSampleDropoutHead, 8, 10, p=NAN, error=ValueError, fragment="p must be a finite number in [0, 1)"),
    case(pnn.MultiSampleDropoutHead, 8, 10, backend="gpu", error=ValueError,
         fragment=f"MultiSampleDropoutHead: {BACKENDS}"),
    case(pnn.DropPath, 1.0, error=ValueError, fragment="DropPath: p must be a finite number in [0, 1), got 1.0"),
    case(pnn.DropPath, -0.1, error=ValueError, fragment="DropPath: p must be a finite number in [0, 1), got -0.1"),
    case(pnn.DropPath, NAN, error=ValueError, fragment="DropPath: p must be a finite number in [0, 1), got nan"),
    case(pnn.DropPath, "0.1", error=TypeError, fragment="DropPath: p must be a finite number in [0, 1), got str '0.1'"),
    # Weighted convolutions
    case(pnn.WeightedConv2d, -1, 4, 3, error=ValueError, fragment="WeightedConv2d: in_channels must be an int >= 1, got -1"),
    case(pnn.WeightedConv1d, 2, 0, 3, error=ValueError, fragment="WeightedConv1d: out_channels must be an int >= 1, got 0"),
    case(pnn.WeightedConv3d, 2.0, 4, 3, error=TypeError,
         fragment="WeightedConv3d: in_channels must be an int >= 1, got float 2.0"),
    case(pnn.WeightedConv2d, 2, 4, 3, learnable_den="no", error=TypeError,
         fragment="WeightedConv2d: learnable_den must be a bool, got str 'no'"),
    case(pnn.WeightedConv2d, 2, 4, 3, allow_negative_den=1, error=TypeError,
         fragment="WeightedConv2d: allow_negative_den must be a bool, got int 1"),
    case(pnn.WeightedConv2d, 2, 4, 3, backend="gpu", error=ValueError, fragment=f"WeightedConv2d: {BACKENDS}"),
    # Token mixers
    case(pnn.SpectralGating, 0, 4, 4, error=ValueError, fragment="SpectralGating: dim must be an int >= 1, got 0"),
    case(pnn.SpectralGating, 8, 2.5, 4, error=TypeError, fragment="SpectralGating: h must be an int >= 1, got float 2.5"),
    case(pnn.SpectralGating, 8, 4, 4, init_std=-0.02, error=ValueError,
         fragment="SpectralGating: init_std must be a finite number >= 0, got -0.02"),
    case(pnn.SpectralGating, 8, 4, 4, init_std=NAN, error=ValueError,
         fragment="SpectralGating: init_std must be a finite number >= 0, got nan"),
    case(pnn.FourierKArAtAttention, 16, 0, n_tokens=5, error=ValueError,
         fragment="FourierKArAtAttention: num_heads must be an int >= 1, got 0"),
    case(pnn.FourierKArAtAttention, 0, 2, n_tokens=5, error=ValueError,
         fragment="FourierKArAtAttention: dim must be an int >= 1, got 0"),
    case(pnn.FourierKArAtAttention, 16, 3, n_tokens=5, error=ValueError,
         fragment="FourierKArAtAttention: dim (16) must be a multiple of num_heads (3)"),
    case(pnn.FourierKArAtAttention, 16, 2, n_tokens=5, qkv_bias=None, error=TypeError,
         fragment="FourierKArAtAttention: qkv_bias must be a bool, got NoneType"),
    case(pnn.FourierKArAtAttention, 16, 2, n_tokens=5, proj_drop=NAN, error=ValueError,
         fragment="FourierKArAtAttention: proj_drop must be a finite number in [0, 1], got nan"),
    case(pnn.FourierKArAtAttention, 16, 2, n_tokens=5, G=2.5, error=TypeError,
         fragment="FourierKArAtAttention: G must be an int >= 1, got float 2.5"),
    case(pnn.FourierKArAtAttention, 16, 2, n_tokens=-5, error=ValueError,
         fragment="FourierKArAtAttention: n_tokens must be an int >= 1, got -5"),
    case(pnn.FourierKArAtAttention, 16, 2, n_tokens=5, mode="universal", shared=[], error=TypeError,
         fragment="FourierKArAtAttention: shared must be a dict (one per model) or None, got list"),
    case(pnn.FourierKArAtAttention, 16, 2, n_tokens=5, backend="gpu", error=ValueError,
         fragment=f"FourierKArAtAttention: {BACKENDS}"),
    case(pnn.KArAtCoefficients, 0, 5, error=ValueError, fragment="num_heads must be an int >= 1, got 0"),
    case(pnn.KArAtCoefficients, 2, 5, constant_term=1, error=TypeError,
         fragment="constant_term must be a bool, got int 1"),
    # Mesa layers
    case(mesa.Quantizer, 0, error=ValueError, fragment="mesa: quant_groups must be >= 1, got 0"),
    case(mesa.Quantizer, stochastic="no", error=TypeError, fragment="mesa: stochastic must be a bool, got str 'no'"),
    case(mesa.GELU, backend="gpu", error=ValueError, fragment=f"mesa: {BACKENDS}"),
    case(mesa.GELU, "exact", error=ValueError,
         fragment="mesa.GELU: approximate must be one of ('none', 'tanh'), got 'exact'"),
    case(mesa.Linear, -1, 4, error=ValueError, fragment="mesa.Linear: in_features must be an int >= 1, got -1"),
    case(mesa.Linear, 4, 0, error=ValueError, fragment="mesa.Linear: out_features must be an int >= 1, got 0"),
    case(mesa.Conv2d, 0, 4, 3, error=ValueError, fragment="mesa.Conv2d: in_channels must be an int >= 1, got 0"),
    case(mesa.LayerNorm, 0, error=ValueError, fragment="mesa.LayerNorm: normalized_shape must be a tuple of ints >= 1, "
                                                    "got (0,)"),
    case(mesa.LayerNorm, (), error=ValueError,
         fragment="mesa.LayerNorm: normalized_shape must name at least one axis, got ()"),
    case(mesa.MatMul, ema_decay=NAN, error=ValueError, fragment="mesa: ema_decay"),
    case(mesa.Attention, nn.Linear(8, 24), nn.Linear(8, 8), 0, 0.5, error=ValueError,
         fragment="mesa.Attention: num_heads must be an int >= 1, got 0"),
    case(mesa.Attention, nn.Linear(8, 24), nn.Linear(8, 8), 2, NAN, error=ValueError,
         fragment="mesa.Attention: scale must be a finite number > 0, got nan"),
    case(mesa.Attention, None, nn.Linear(8, 8), 2, 0.5, error=TypeError,
         fragment="mesa.Attention: qkv must be an nn.Module, got NoneType"),
    case(mesa.Attention, nn.Linear(8, 24), nn.Linear(8, 8), 2, 0.5, matmul="no", error=TypeError,
         fragment="mesa.Attention: matmul must be a bool, got str 'no'"),
]


@pytest.mark.parametrize("make, args, kwargs, error, fragment", CONSTRUCTORS)
def test_a_bad_constructor_argument_is_a_clear_error(make, args, kwargs, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        make(*args, **kwargs)


FORWARDS = [
    pytest.param(lambda: pnn.FourierKArAtAttention(192, 3, n_tokens=4), (4, 192),
                 "FourierKArAtAttention: x must have shape [B, N, C] with C=192, got (4, 192)", id="karat-2d"),
    pytest.param(lambda: pnn.FourierKArAtAttention(192, 3, n_tokens=4), (2, 4, 96),
                 "FourierKArAtAttention: x must have shape [B, N, C] with C=192, got (2, 4, 96)", id="karat-channels"),
    pytest.param(lambda: pnn.SpectralGating(192, 2, 2), (4, 192),
                 "SpectralGating: x must have shape [B, N, C] with N=4, C=192 (a token grid of 2x2), got (4, 192)",
                 id="spectral-2d"),
    pytest.param(lambda: pnn.SpectralGating(8, 2, 2), (2, 4, 6, 8),
                 "SpectralGating: x must have shape [B, N, C] with N=4, C=8 (a token grid of 2x2), got (2, 4, 6, 8)",
                 id="spectral-4d"),
    pytest.param(lambda: mesa.Attention(nn.Linear(8, 24), nn.Linear(8, 8), 2, 0.5), (3, 8),
                 "mesa.Attention: x must have shape [B, N, C] with C=8, got (3, 8)", id="mesa-attention-2d"),
    pytest.param(lambda: mesa.Attention(nn.Sequential(nn.Linear(6, 18)), nn.Linear(6, 6), 4, 0.5), (1, 3, 6),
                 "mesa.Attention: qkv gives 18 features, not 3 x num_heads (4) x a head width",
                 id="mesa-attention-heads"),
    pytest.param(lambda: pnn.HardAttentionGate(4, channel_dim=3), (2, 4, 3),
                 "HardAttentionGate: x must have 4 channels on dim 3 (after the batch axis), got shape (2, 4, 3)",
                 id="gate-dim-past-the-input"),
    pytest.param(lambda: pnn.HardAttentionGate(4, channel_dim=-3), (4, 2, 3),
                 "HardAttentionGate: x must have 4 channels on dim -3 (after the batch axis), got shape (4, 2, 3)",
                 id="gate-dim-on-the-batch"),
]


@pytest.mark.parametrize("make, shape, fragment", FORWARDS)
def test_a_badly_shaped_input_names_the_expected_shape(make, shape, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        make()(torch.randn(*shape))


def test_a_non_tensor_token_input_is_a_type_error():
    with pytest.raises(TypeError, match=re.escape("SpectralGating: x must be a tensor [B, N, C], got list")):
        pnn.SpectralGating(4, 2, 2)([[0.0] * 4] * 4)


def test_the_edges_of_every_range_are_accepted():
    # The checks refuse exactly what is out of range: the limits themselves and the other accepted forms construct.
    pnn.LIF(tau=INF, decay_input=False, v_reset=None, alpha=None)
    pnn.LIF(tau=1, v_threshold=1e-6, learnable_threshold=True, param_shape=torch.Size([3, 1]))
    pnn.LIF(tau=INF, learnable_leak=True)  # IIR-SNN's IF start: k = 1 - leak is learnt
    pnn.IF(v_reset=-0.5, surrogate="triangle", alpha=0.3)
    pnn.HardAttentionGate(4, channel_dim=-4)(torch.randn(2, 4, 3, 5, 6))
    pnn.HardAttentionGate(4, channel_dim=1)(torch.randn(2, 4, 3))
    pnn.CRReLU(0, per_channel=True, num_channels=3, dim=-1)
    pnn.DropPath(0)
    pnn.SpectralGating(8, 1, 1, init_std=0)
    pnn.FourierKArAtAttention(16, 16, n_tokens=1, proj_drop=1.0, G=1, r=1)
    pnn.GatedClassAttentionBlock(8, 8, 1, mlp_ratio=0.125)
    mesa.LayerNorm([2, 3], quant_groups=3)
    assert pnn.anneal_s(0, 1, s_max=1e-3) == pytest.approx(1e3)
