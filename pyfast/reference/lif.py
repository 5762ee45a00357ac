"""Readable pure-PyTorch LIF / IF neuron: the definition of correct for every LIF backend.

Multi-step semantics of SpikingJelly's ``LIFNode`` (step_mode="m"), with the surrogate gradient of the
firing step made explicit so autograd of this loop is the BPTT that the kernels implement.

For t = 0 .. T-1, with k = 1/tau in [0, 1] (k = 0 is an IF neuron) and V_{-1} = v0:

    charge   decay_input=True :  H_t = V_{t-1} + k * (X_t - (V_{t-1} - V_r))
             decay_input=False:  H_t = V_{t-1} - k * (V_{t-1} - V_r) + X_t
             (soft reset, v_reset=None, uses V_r = 0 in the charge)
    fire     S_t = Heaviside(H_t - V_th)            (1 where H_t >= V_th)
    reset    hard:  V_t = H_t * (1 - S_t) + V_r * S_t
             soft:  V_t = H_t - V_th * S_t
             detach_reset=True stops the gradient of S_t inside the reset.

The backward of Heaviside is a surrogate (see :data:`SURROGATES`):

    sigmoid  (alpha=4):   dS/dH = alpha * sg(alpha u) * (1 - sg(alpha u)),  u = H - V_th
    atan     (alpha=2):   dS/dH = (alpha / 2) / (1 + (pi/2 * alpha * u)^2)
    triangle (alpha=0.3): dS/dz = alpha * max(0, 1 - |z|),  z = H / V_th - 1   (IIR-SNN's LinearSpike)

For sigmoid and atan, dS/dV_th = -dS/dH. For triangle the gradient reaches V_th through z:
dS/dV_th = dS/dz * (-H / V_th^2), which is what IIR-SNN's learnable threshold relies on.
"""

from __future__ import annotations

import math

import torch

SURROGATES = ("sigmoid", "atan", "triangle")
DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0, "triangle": 0.3}


def surrogate_grad_h(h: torch.Tensor, v_th: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """dS/dH of the surrogate spike function at membrane ``h`` and threshold ``v_th`` (any shapes that broadcast)."""
    if surrogate == "sigmoid":
        sg = torch.sigmoid(alpha * (h - v_th))
        return alpha * sg * (1.0 - sg)
    if surrogate == "atan":
        return (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * (h - v_th)) ** 2)
    if surrogate == "triangle":
        z = h / v_th - 1.0
        return alpha * torch.clamp(1.0 - z.abs(), min=0.0) / v_th
    raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")


class _SurrogateSpike(torch.autograd.Function):
    """Heaviside(h - v_th) forward; the surrogate's partial derivatives in h and v_th backward.

    Reference-only helper (shipped ops are custom ops, see pyfast.ops.lif); it exists so the reference reads as
    the maths and autograd through it is the ground truth for BPTT.
    """

    # forward without ctx and a setup_context: the form torch.func transforms (vmap, grad, ...) accept.
    generate_vmap_rule = True

    @staticmethod
    def forward(h, v_th, surrogate, alpha):
        return (h >= v_th).to(h.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, v_th, surrogate, alpha = inputs
        ctx.save_for_backward(h, v_th)
        ctx.surrogate, ctx.alpha = surrogate, alpha

    @staticmethod
    def backward(ctx, grad_s):
        h, v_th = ctx.saved_tensors
        d_h = surrogate_grad_h(h, v_th, ctx.surrogate, ctx.alpha)
        if ctx.surrogate == "triangle":
            d_vth = -d_h * h / v_th
        else:
            d_vth = -d_h
        grad_h = grad_s * d_h
        grad_vth = None
        if ctx.needs_input_grad[1]:
            grad_vth = (grad_s * d_vth).sum_to_size(v_th.shape) if v_th.dim() else (grad_s * d_vth).sum()
        return grad_h, grad_vth, None, None


def lif_ref(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step loop over time. x: [T, *] -> (spikes [T, *], final membrane [*]).

    ``tau`` and ``v_threshold`` are numbers or tensors broadcastable to ``x[0]``; autograd gives their gradients.
    """
    if alpha is None:
        alpha = DEFAULT_ALPHA[surrogate]
    k = 1.0 / tau
    v_th = v_threshold if torch.is_tensor(v_threshold) else torch.tensor(v_threshold, dtype=x.dtype, device=x.device)
    v_r_charge = 0.0 if v_reset is None else v_reset
    if v0 is None:
        v = torch.full_like(x[0], v_r_charge)
    else:
        v = v0
    spikes = []
    for t in range(x.shape[0]):
        if decay_input:
            h = v + k * (x[t] - (v - v_r_charge))
        else:
            h = v - k * (v - v_r_charge) + x[t]
        s = _SurrogateSpike.apply(h, v_th, surrogate, alpha)
        s_reset = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - v_th * s_reset
        else:
            v = h * (1.0 - s_reset) + v_reset * s_reset
        spikes.append(s)
    return torch.stack(spikes), v
