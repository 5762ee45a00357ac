"""LIF / IF spiking neuron as torch custom ops: ``torch.ops.pyfast.lif_fwd`` / ``lif_bwd`` (C++ CPU and CUDA) and
their Triton twins ``lif_fwd_triton`` / ``lif_bwd_triton``, with fake kernels and autograd, plus the public
function :func:`lif`.

The maths (charge, fire, reset, surrogate gradients, BPTT) is written out in :mod:`pyfast.reference.lif` and at the
top of ``csrc/lif/lif.h``.
"""

from __future__ import annotations

import torch

from pyfast import _extension
from pyfast._dtypes import acc_dtype
from pyfast._numbers import is_inf, is_nan, is_number
from pyfast.backends import resolve
from pyfast.reference.lif import DEFAULT_ALPHA, SURROGATES, lif_ref

__all__ = ["lif", "lif_decay"]


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd of the custom ops
# --------------------------------------------------------------------------------------------------------------


def _fwd_fake(x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset, store_h):
    h_seq = torch.empty_like(x, memory_format=torch.contiguous_format) if store_h else x.new_empty((0,))
    return torch.empty_like(x, memory_format=torch.contiguous_format), h_seq, x.new_empty(x.shape[1:])


def _bwd_fake(grad_spikes, grad_v_last, h_seq, x, v0, k, v_th, v_reset, decay_input, surrogate, alpha,
              detach_reset, need_grad_k, need_grad_v_th):
    return (
        torch.empty_like(h_seq, memory_format=torch.contiguous_format),
        h_seq.new_empty(h_seq.shape[1:]),
        k.new_empty(k.shape if need_grad_k else (0,)),
        v_th.new_empty(v_th.shape if need_grad_v_th else (0,)),
    )


# Autograd of the Triton op pyfast::lif_fwd_triton. The C++ op pyfast::lif_fwd has the same autograd written in C++
# (csrc/lif/lif_autograd.cpp: same saved tensors, same backward call), so its GPU steps pay no Python wrapper.


def _setup_context(ctx, inputs, output):
    x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset, store_h = inputs
    _, h_seq, _ = output
    # x is needed only for dL/dk with decay_input (dH/dk = X + V_r - V_prev); everything else is recomputed from H.
    # Without H (store_h=False although an input requires grad: see csrc/lif/lif_autograd.cpp), backward recomputes
    # H from x.
    keep_x = (decay_input and ctx.needs_input_grad[2]) or not store_h
    ctx.save_for_backward(h_seq, x if keep_x else None, v0, k, v_th)
    ctx.config = (v_reset, decay_input, surrogate, alpha, detach_reset)
    # Unused outputs (h_seq; v_last unless return_v) get None instead of materialised zeros: saves a [T, *] fill.
    ctx.set_materialize_grads(False)
    ctx.store_h = store_h


def _backward(ctx, grad_spikes, grad_h_seq, grad_v_last):
    h_seq, x, v0, k, v_th = ctx.saved_tensors
    if not ctx.store_h:
        with torch.no_grad():
            h_seq = torch.ops.pyfast.lif_fwd_triton(x, v0, k, v_th, *ctx.config, True)[1]
    need_k, need_v_th = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
    if grad_spikes is None:
        grad_spikes = torch.zeros_like(h_seq)
    grad_x, grad_v0, grad_k, grad_v_th = torch.ops.pyfast.lif_bwd_triton(
        grad_spikes, grad_v_last, h_seq, x, v0, k, v_th, *ctx.config, need_k, need_v_th
    )
    return (
        grad_x,
        grad_v0 if v0 is not None and ctx.needs_input_grad[1] else None,
        grad_k if need_k else None,
        grad_v_th if need_v_th else None,
        None, None, None, None, None, None,
    )


if _extension.has_cpp():
    torch.library.register_fake("pyfast::lif_fwd")(_fwd_fake)
    torch.library.register_fake("pyfast::lif_bwd")(_bwd_fake)


# Triton twins. Registered as torch.library.custom_op (not triton_op): under TRITON_INTERPRET=1 a triton_op fails
# opcheck's fake-tensor checks, while a custom_op that launches the same kernel passes opcheck and
# torch.compile(fullgraph=True) (DESIGN.md, build facts). Same schema as the C++ ops; a test enforces the parity.


def _per_neuron_grad_to_param(per_neuron: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    grad = per_neuron.sum() if param.numel() == 1 else per_neuron
    return grad.reshape(param.shape).to(param.dtype)


@torch.library.custom_op("pyfast::lif_fwd_triton", mutates_args=())
def lif_fwd_triton(
    x: torch.Tensor, v0: torch.Tensor | None, k: torch.Tensor, v_th: torch.Tensor, v_reset: float | None,
    decay_input: bool, surrogate: str, alpha: float, detach_reset: bool, store_h: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from pyfast._triton import lif as kernels  # triton is optional: imported on first use

    x = x.contiguous()
    spikes, h_seq, v_last = _fwd_fake(x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset, store_h)
    acc = acc_dtype(x.dtype)
    kernels.lif_fwd(
        x, None if v0 is None else v0.contiguous(), k.to(acc).contiguous(), v_th.to(acc).contiguous(), v_reset,
        decay_input, surrogate, alpha, detach_reset, spikes, h_seq if store_h else None, v_last,
    )
    return spikes, h_seq, v_last


@torch.library.custom_op("pyfast::lif_bwd_triton", mutates_args=())
def lif_bwd_triton(
    grad_spikes: torch.Tensor, grad_v_last: torch.Tensor | None, h_seq: torch.Tensor, x: torch.Tensor | None,
    v0: torch.Tensor | None, k: torch.Tensor, v_th: torch.Tensor, v_reset: float | None, decay_input: bool,
    surrogate: str, alpha: float, detach_reset: bool, need_grad_k: bool, need_grad_v_th: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from pyfast._triton import lif as kernels

    h_seq = h_seq.contiguous()
    n = h_seq[0].numel()
    grad_x = torch.empty_like(h_seq)
    grad_v0 = h_seq.new_empty(h_seq.shape[1:])
    acc = acc_dtype(h_seq.dtype)
    grad_k_n = h_seq.new_zeros((n,), dtype=acc) if need_grad_k else None
    grad_v_th_n = h_seq.new_zeros((n,), dtype=acc) if need_grad_v_th else None
    kernels.lif_bwd(
        grad_spikes.contiguous(), None if grad_v_last is None else grad_v_last.contiguous(), h_seq,
        None if x is None else x.contiguous(), None if v0 is None else v0.contiguous(), k.to(acc).contiguous(),
        v_th.to(acc).contiguous(), v_reset, decay_input, surrogate, alpha, detach_reset, grad_x, grad_v0, grad_k_n,
        grad_v_th_n,
    )
    grad_k = _per_neuron_grad_to_param(grad_k_n, k) if need_grad_k else k.new_empty((0,))
    grad_v_th = _per_neuron_grad_to_param(grad_v_th_n, v_th) if need_grad_v_th else v_th.new_empty((0,))
    return grad_x, grad_v0, grad_k, grad_v_th


lif_fwd_triton.register_fake(_fwd_fake)
lif_bwd_triton.register_fake(_bwd_fake)
lif_fwd_triton.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------------------------


def _check_number(name: str, value, *, low: float | None = None, low_open: bool = False, allow_inf=False,
                  or_tensor=False) -> float:
    if not is_number(value):
        raise TypeError(f"lif: {name} must be a number{' or a tensor' if or_tensor else ''}, got "
                        f"{type(value).__name__}")
    value = float(value)
    if is_nan(value) or (is_inf(value) and not allow_inf):
        raise ValueError(f"lif: {name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"lif: {name} must be {'>' if low_open else '>='} {low}, got {value}")
    return value


def _check_param_tensor(name: str, p: torch.Tensor, x: torch.Tensor) -> None:
    if not p.is_floating_point():
        raise TypeError(f"lif: {name} must be a floating-point tensor, got dtype {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"lif: {name} is on {p.device} but x is on {x.device}")
    try:
        shape = torch.broadcast_shapes(p.shape, x.shape[1:])
    except RuntimeError:
        shape = None
    if shape != x.shape[1:]:
        raise ValueError(
            f"lif: {name} of shape {tuple(p.shape)} must broadcast to one time step of x, {tuple(x.shape[1:])}"
        )


def _zero_decay_error(what: str) -> ValueError:
    # With decay_input, k = 0 scales the input by 0: the membrane keeps v0 and the neuron never responds.
    return ValueError(f"lif: {what}: with decay_input=True, k=0 multiplies the input by 0; an IF neuron needs "
                      f"decay_input=False")


def _check_decay_values(name: str, in_range: torch.Tensor, zero_decay: torch.Tensor, decay_input: bool,
                        rule: str) -> None:
    """Raises unless a tensor tau / k is ``in_range`` everywhere and, with decay_input, nowhere a zero decay
    (``zero_decay``: k = 0, tau = inf), as a number tau / k would; both are bool tensors of its entries. One device
    sync when the values are valid."""
    invalid = ~in_range | zero_decay if decay_input else ~in_range
    if bool(invalid.any()):
        if not bool(in_range.all()):
            raise ValueError(f"lif: {name} must {rule}")
        raise _zero_decay_error(f"{name} has k=0 (tau=inf) entries")


def _capturing(device: torch.device) -> bool:
    """Whether the current CUDA stream of ``device`` is capturing a CUDA graph (False off CUDA)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _values_checked(device: torch.device) -> bool:
    # Value checks of tensor hyperparameters read their data (a device sync): skipped while torch.compile traces (no
    # graph break) and while a CUDA graph is captured (a sync would end the capture with an error).
    return not torch.compiler.is_compiling() and not _capturing(device)


_CONSTANTS: dict[tuple[float, torch.device, torch.dtype], torch.Tensor] = {}
_MAX_CONSTANTS = 64


def _constant(value: float, x: torch.Tensor) -> torch.Tensor:
    """A [1] tensor of :func:`pyfast._dtypes.acc_dtype` of x holding ``value`` on x's device, made once per (value, device, dtype) and
    reused: a fresh one would cost an allocation and a fill launch per call and per hyperparameter, host time that
    bounds a GPU step of a few hundred microseconds. (torch.tensor(value, device="cuda") would even synchronise the
    stream.) The ops only read it. Made outside inference mode, so a tensor first made under torch.inference_mode can
    still be saved for a later backward; while torch.compile traces, a traced torch.full instead of a captured
    global."""
    dtype = acc_dtype(x.dtype)
    if torch.compiler.is_compiling():
        return torch.full((1,), float(value), dtype=dtype, device=x.device)
    key = (float(value), x.device, dtype)
    cached = _CONSTANTS.get(key)
    if cached is None:
        # Not cached: a value first seen under CUDA graph capture (the fill only runs when the graph is replayed, so a
        # later eager call could read the cached tensor before it holds anything), or once the cache is full (e.g. a
        # tau swept over many values; no entry is ever dropped, as a captured graph may still read it).
        if _capturing(x.device) or len(_CONSTANTS) >= _MAX_CONSTANTS:
            return torch.full((1,), float(value), dtype=dtype, device=x.device)
        with torch.inference_mode(False):
            cached = _CONSTANTS[key] = torch.full((1,), float(value), dtype=dtype, device=x.device)
    return cached


def _as_neuron_param(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Tensor of :func:`pyfast._dtypes.acc_dtype` of x with 1 element or one per neuron (N = x[0].numel()), as the kernels take it.
    Differentiable."""
    p = p.to(acc_dtype(x.dtype))
    if p.numel() == 1:
        return p.reshape(1)
    return p.expand(x.shape[1:]).reshape(-1)


def _check_common(x, v0, v_threshold, v_reset, surrogate, alpha):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"lif: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"lif: x must be a floating-point tensor (float32/float64/float16/bfloat16), got {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"lif: x must have shape [T, *] with T >= 1 time steps, got {tuple(x.shape)}")
    if v0 is not None:
        if not isinstance(v0, torch.Tensor):
            raise TypeError(f"lif: v0 must be a tensor or None, got {type(v0).__name__}")
        if v0.shape != x.shape[1:]:
            raise ValueError(f"lif: v0 must have shape x.shape[1:] = {tuple(x.shape[1:])}, got {tuple(v0.shape)}")
        if v0.dtype != x.dtype:
            raise TypeError(f"lif: v0 must have x's dtype {x.dtype}, got {v0.dtype}")
        if v0.device != x.device:
            raise ValueError(f"lif: v0 is on {v0.device} but x is on {x.device}")
    if isinstance(v_threshold, torch.Tensor):
        _check_param_tensor("v_threshold", v_threshold, x)
        if _values_checked(x.device) and not bool((v_threshold > 0).all() & torch.isfinite(v_threshold).all()):
            raise ValueError("lif: v_threshold must be finite and > 0 everywhere")
    else:
        _check_number("v_threshold", v_threshold, low=0.0, low_open=True, or_tensor=True)
    if v_reset is not None:
        _check_number("v_reset", v_reset)
    if surrogate not in SURROGATES:
        raise ValueError(f"lif: surrogate must be one of {SURROGATES}, got {surrogate!r}")
    alpha = DEFAULT_ALPHA[surrogate] if alpha is None else _check_number("alpha", alpha, low=0.0, low_open=True)
    return alpha


# --------------------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------------------


def _run(x, v0, k, tau_for_reference, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset, return_v,
         backend):
    """Dispatch a validated call. ``k`` is a tensor; ``tau_for_reference`` is what the reference loop takes."""
    chosen = resolve("lif", backend, x.device)
    if chosen == "reference":
        spikes, v_last = lif_ref(
            x, v0, tau=tau_for_reference, v_threshold=v_threshold, v_reset=v_reset, decay_input=decay_input,
            surrogate=surrogate, alpha=alpha, detach_reset=detach_reset,
        )
        return (spikes, v_last) if return_v else spikes
    op = torch.ops.pyfast.lif_fwd_triton if chosen == "triton" else torch.ops.pyfast.lif_fwd
    k_n = _as_neuron_param(k, x)
    v_th = v_threshold if isinstance(v_threshold, torch.Tensor) else _constant(v_threshold, x)
    v_th_n = _as_neuron_param(v_th, x)
    store_h = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, v0, k_n, v_th_n)
    )
    v_reset = None if v_reset is None else float(v_reset)
    spikes, _, v_last = op(x, v0, k_n, v_th_n, v_reset, decay_input, surrogate, float(alpha), detach_reset, store_h)
    return (spikes, v_last) if return_v else spikes


def lif(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    *,
    tau: float | torch.Tensor = 2.0,
    v_threshold: float | torch.Tensor = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    detach_reset: bool = False,
    return_v: bool = False,
    backend: str = "auto",
):
    """Multi-step leaky integrate-and-fire neuron with surrogate-gradient BPTT (SpikingJelly ``LIFNode`` semantics).

    For t = 0..T-1, with k = 1/tau and V_{-1} = v0 (default: v_reset, or 0 for soft reset)::

        H_t = V_{t-1} + k (X_t - (V_{t-1} - V_r))      decay_input=True
        H_t = V_{t-1} - k (V_{t-1} - V_r) + X_t        decay_input=False   (V_r = 0 for soft reset)
        S_t = Heaviside(H_t - V_th)
        V_t = H_t (1 - S_t) + V_r S_t   (hard, v_reset a number)   or   H_t - V_th S_t   (soft, v_reset=None)

    Args:
        x: input current, shape ``[T, *]`` (time first), float32/float64/float16/bfloat16, any layout.
        v0: initial membrane, shape ``x.shape[1:]``, x's dtype and device; ``None`` starts from the reset value.
        tau: membrane time constant >= 1 (k = 1/tau in [0, 1]); a number, or a tensor broadcastable to
            ``x.shape[1:]`` (scalar or per neuron) that may require grad. ``tau=inf`` (k = 0) with
            ``decay_input=False`` is an IF neuron; with ``decay_input=True`` it would scale the input by 0, an error
            (for a number, and for any entry of a tensor).
        v_threshold: firing threshold > 0; a number or a tensor broadcastable to ``x.shape[1:]`` (may require grad).
        v_reset: hard-reset value, or ``None`` for soft reset (subtract the threshold).
        decay_input: whether the input is scaled by k as well.
        surrogate: ``"sigmoid"`` (alpha 4), ``"atan"`` (alpha 2) or ``"triangle"`` (IIR-SNN, alpha 0.3).
        alpha: surrogate sharpness; ``None`` takes the default above.
        detach_reset: stop the gradient through the spike inside the reset.
        return_v: also return the final membrane ``[*]``.
        backend: ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or ``"reference"`` (see pyfast.backends).

    Returns:
        spikes of x's shape and dtype (0/1), and the final membrane of shape ``x.shape[1:]`` if ``return_v``.

    Gradients flow to x, v0, and tensor tau / v_threshold. Half-precision inputs are computed in float32; the
    membrane H is rounded to the input dtype before firing, so the backward sees exactly the forward's spikes.
    Tensor hyperparameters are range-checked eagerly (one device sync), not while torch.compile traces or a CUDA
    graph is captured.
    """
    alpha = _check_common(x, v0, v_threshold, v_reset, surrogate, alpha)
    if isinstance(tau, torch.Tensor):
        _check_param_tensor("tau", tau, x)
        if _values_checked(x.device):
            rule = "be >= 1 everywhere (k = 1/tau must lie in [0, 1])"  # tau >= 1 is False for NaN
            _check_decay_values("tau", tau >= 1, torch.isinf(tau), decay_input, rule)
        k = 1.0 / tau
    else:
        tau = _check_number("tau", tau, low=1.0, allow_inf=True, or_tensor=True)
        if is_inf(tau) and decay_input:
            raise _zero_decay_error("tau=inf (k=0)")
        k = _constant(1.0 / tau, x)
    return _run(x, v0, k, tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset, return_v, backend)


def lif_decay(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    *,
    k: float | torch.Tensor,
    v_threshold: float | torch.Tensor = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    detach_reset: bool = False,
    return_v: bool = False,
    backend: str = "auto",
    k_in_range: bool = False,
):
    """:func:`lif` parametrised by the decay ``k = 1/tau`` in [0, 1] instead of tau.

    For learnable decays (PLIF's ``k = sigmoid(w)``, IIR-SNN's leak ``lambda = 1 - k``) whose gradient should not
    pass through 1/tau. ``k`` is a number or a tensor broadcastable to ``x.shape[1:]``; ``k = 0`` needs
    ``decay_input=False`` (as ``tau=inf`` in :func:`lif`); other arguments as in :func:`lif`. ``k_in_range=True``
    skips the value check of a tensor ``k`` that lies in [0, 1] by construction (``pyfast.nn.LIF``'s sigmoid or
    clamp), a device sync on a GPU on every call.
    """
    alpha = _check_common(x, v0, v_threshold, v_reset, surrogate, alpha)
    if isinstance(k, torch.Tensor):
        _check_param_tensor("k", k, x)
        if not k_in_range and _values_checked(x.device):
            _check_decay_values("k", (k >= 0) & (k <= 1), k == 0, decay_input, "lie in [0, 1] everywhere")
    else:
        k = _check_number("k", k, low=0.0, or_tensor=True)
        if k > 1:
            raise ValueError(f"lif: k must lie in [0, 1], got {k}")
        if k == 0 and decay_input:
            raise _zero_decay_error("k=0 (tau=inf)")
        k = _constant(k, x)
    return _run(x, v0, k, 1.0 / k, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset, return_v,
                backend)
