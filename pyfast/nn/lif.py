"""``pyfast.nn.LIF`` / ``pyfast.nn.IF``: multi-step spiking-neuron layers over :func:`pyfast.ops.lif`."""

from __future__ import annotations

import math

import torch
from torch import nn

from pyfast._checks import check_bool, check_choice, check_number
from pyfast.nn._checks import check_backend, check_shape
from pyfast.ops.lif import lif_decay
from pyfast.reference.lif import SURROGATES


class LIF(nn.Module):
    """Leaky integrate-and-fire layer over a whole sequence: ``[T, *] -> spikes [T, *]``.

    Arguments as :func:`pyfast.ops.lif`, plus:
        learnable_tau: learn the decay as PLIF does, ``k = 1/tau = sigmoid(w)`` with ``w`` initialised so that
            ``k = 1/tau`` (needs tau > 1); k stays in (0, 1) by construction.
        learnable_leak: learn the leak ``lambda = 1 - k`` directly, as IIR-SNN does (initialised to ``1 - 1/tau``;
            ``tau=inf`` gives 1, an IF neuron); k = clamp(1 - lambda, 0, 1). Excludes ``learnable_tau``.
        learnable_threshold: learn ``v_threshold`` directly (IIR-SNN); it must stay > 0 (checked each eager call;
            not under torch.compile or CUDA graph capture).
        param_shape: shape of the learnable parameters, broadcastable to one time step ``x.shape[1:]``:
            ``()`` for one per layer, e.g. ``(C, 1, 1)`` per channel of ``[T, B, C, H, W]`` input.

    ``forward(x, v0=None)`` returns the spikes, or ``(spikes, final membrane)`` when ``return_v=True``. The layer
    keeps no state between calls: pass ``v0`` to continue a sequence.
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        surrogate: str = "sigmoid",
        alpha: float | None = None,
        detach_reset: bool = False,
        return_v: bool = False,
        backend: str = "auto",
        learnable_tau: bool = False,
        learnable_threshold: bool = False,
        learnable_leak: bool = False,
        param_shape: tuple[int, ...] = (),
    ):
        super().__init__()
        owner = type(self).__name__
        tau = check_number(owner, "tau", tau, low=1.0, allow_inf=True)  # k = 1/tau in [0, 1]
        v_threshold = check_number(owner, "v_threshold", v_threshold, low=0.0, low_open=True)
        if v_reset is not None:
            v_reset = check_number(owner, "v_reset", v_reset)
        surrogate = check_choice(owner, "surrogate", surrogate, SURROGATES)
        if alpha is not None:
            alpha = check_number(owner, "alpha", alpha, low=0.0, low_open=True)
        for name, flag in (("decay_input", decay_input), ("detach_reset", detach_reset), ("return_v", return_v),
                           ("learnable_tau", learnable_tau), ("learnable_threshold", learnable_threshold),
                           ("learnable_leak", learnable_leak)):
            check_bool(owner, name, flag)
        backend = check_backend(owner, backend)
        param_shape = check_shape(owner, "param_shape", param_shape)
        if tau == math.inf and decay_input and not learnable_leak:
            raise ValueError(f"{owner}: tau=inf (k = 0) with decay_input=True multiplies the input by 0; an IF neuron "
                             "needs decay_input=False")
        # Fixed hyperparameters stay Python numbers: the op makes them on the input's device without a host sync.
        if learnable_tau and learnable_leak:
            raise ValueError(f"{owner}: learnable_tau and learnable_leak are two parametrisations of k; choose one")
        if learnable_leak:
            self.leak = nn.Parameter(torch.full(param_shape, 1.0 - 1.0 / tau))
        elif learnable_tau:
            if not 1 < tau < math.inf:
                raise ValueError(f"{owner}: learnable_tau needs a finite tau > 1 (k = sigmoid(w) in (0, 1)), got {tau}")
            self.w = nn.Parameter(torch.full(param_shape, -math.log(tau - 1.0)))
        else:
            self.k = 1.0 / tau
        if learnable_threshold:
            self.v_threshold = nn.Parameter(torch.full(param_shape, v_threshold))
        else:
            self.v_threshold = v_threshold
        self.v_reset, self.decay_input, self.surrogate = v_reset, decay_input, surrogate
        self.alpha, self.detach_reset, self.return_v, self.backend = alpha, detach_reset, return_v, backend
        self.learnable_tau, self.learnable_leak = learnable_tau, learnable_leak

    def decay(self) -> torch.Tensor | float:
        """k = 1/tau: a tensor of shape ``param_shape`` when learnable, else a number."""
        if self.learnable_leak:
            return (1.0 - self.leak).clamp(0.0, 1.0)
        return torch.sigmoid(self.w) if self.learnable_tau else self.k

    def forward(self, x: torch.Tensor, v0: torch.Tensor | None = None):
        # sigmoid / clamp keep a learnable k inside [0, 1]: no per-call value check (a device sync on a GPU).
        return lif_decay(
            x, v0, k=self.decay(), v_threshold=self.v_threshold, v_reset=self.v_reset, decay_input=self.decay_input,
            surrogate=self.surrogate, alpha=self.alpha, detach_reset=self.detach_reset, return_v=self.return_v,
            backend=self.backend, k_in_range=self.learnable_tau or self.learnable_leak,
        )

    def extra_repr(self) -> str:
        k = self.decay()
        k = k.flatten()[0].item() if isinstance(k, torch.Tensor) else k  # learnable: the first neuron's
        tau = 1.0 / k if k else math.inf
        return (
            f"tau={tau:.3g}{' (learnable)' if self.learnable_tau else ''}, v_reset={self.v_reset}, "
            f"decay_input={self.decay_input}, surrogate={self.surrogate!r}, detach_reset={self.detach_reset}, "
            f"backend={self.backend!r}"
        )


class IF(LIF):
    """Integrate-and-fire layer: ``H_t = V_{t-1} + X_t`` (LIF with k = 0 and decay_input=False)."""

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate: str = "sigmoid",
        alpha: float | None = None,
        detach_reset: bool = False,
        return_v: bool = False,
        backend: str = "auto",
        learnable_threshold: bool = False,
        param_shape: tuple[int, ...] = (),
    ):
        super().__init__(
            tau=math.inf, v_threshold=v_threshold, v_reset=v_reset, decay_input=False, surrogate=surrogate,
            alpha=alpha, detach_reset=detach_reset, return_v=return_v, backend=backend,
            learnable_threshold=learnable_threshold, param_shape=param_shape,
        )
