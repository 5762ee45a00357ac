"""LIF / IF spiking neuron, Triton kernels: forward and BPTT backward (the Triton twin of csrc/lif/lif_kernel.cu).

Multi-step, SpikingJelly semantics. Per neuron, t = 0 .. T-1, k = 1/tau in [0, 1], V_{-1} = v0 (default V_r, or 0
for soft reset):
  charge  decay_input:  H_t = V_{t-1} + k (X_t - (V_{t-1} - V_r))
          otherwise:    H_t = V_{t-1} - k (V_{t-1} - V_r) + X_t          (soft reset: V_r = 0 in the charge)
  fire    S_t = [H_t >= V_th]
  reset   hard: V_t = H_t (1 - S_t) + V_r S_t        soft: V_t = H_t - V_th S_t

Surrogates, sh = dS/dH and sth = dS/dV_th (u = H - V_th):
  sigmoid   sg = 1 / (1 + exp(-alpha u)),   sh = alpha sg (1 - sg),               sth = -sh
  atan      sh = (alpha / 2) / (1 + (pi/2 alpha u)^2),                            sth = -sh
  triangle  z = H / V_th - 1, dS/dz = alpha max(0, 1 - |z|),  sh = dS/dz / V_th,  sth = -dS/dz H / V_th^2

Backward (BPTT, reverse t), gV = dL/dV_t from step t+1 (dL/dV_{T-1} = grad of the returned final membrane):
  hard: dV/dH = 1 - S + (V_r - H) sh      dV/dV_th = (V_r - H) sth
  soft: dV/dH = 1 - V_th sh               dV/dV_th = -S - V_th sth
  (detach_reset drops the sh / sth terms above)
  gH       = gS_t sh + gV dV/dH
  gV_th   += gS_t sth + gV dV/dV_th
  gX_t     = k gH  (decay_input)  or  gH
  gk      += gH (X_t [decay_input] + V_r - V_{t-1})
  gV      <- (1 - k) gH,  and finally  gv0 = gV.

Storage: the forward writes H_t rounded to the input dtype and fires and resets on that rounded value, so the backward,
which recomputes S_t (and V_{t-1}, for gk) from the saved H, sees exactly the forward's spikes. Arithmetic is float32
(float64 for float64 inputs, k and v_th included; v_reset and alpha are float64 kernel arguments, a Python float being
float32 otherwise, converted once to the arithmetic type). One program owns BLOCK neighbouring neurons for all T steps:
the recurrence is sequential in t only, so every input is read once and every output written once, coalesced.

Every mode (surrogate, reset, decay_input, detach_reset, store_h, which gradients) is a tl.constexpr: each compiled
kernel is branch-free in them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pyfast._dtypes import acc_dtype

from .common import INTERPRET, TL_DTYPES, tl_acc_dtype, to_storage

SURROGATE_IDS = {"sigmoid": 0, "atan": 1, "triangle": 2}  # the SURROGATE constexpr of the backward kernel


# --------------------------------------------------------------------------------------------------------------
# Per-neuron maths (the same as csrc/lif/lif.h)
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _charge(v_prev, x, k, v_r, DECAY_INPUT: tl.constexpr):
    if DECAY_INPUT:
        h = v_prev + k * (x - (v_prev - v_r))
    else:
        h = v_prev - k * (v_prev - v_r) + x
    return h


@triton.jit
def _fire(h, v_th):
    return (h >= v_th).to(h.dtype)


@triton.jit
def _reset(h, s, v_th, v_r, HARD_RESET: tl.constexpr):
    if HARD_RESET:
        v = h * (1.0 - s) + v_r * s
    else:
        v = h - v_th * s
    return v


@triton.jit
def _surrogate_grad(h, v_th, a, SURROGATE: tl.constexpr):
    """(dS/dH, dS/dV_th) of the surrogate."""
    if SURROGATE == 0:
        sg = 1.0 / (1.0 + tl.exp(-a * (h - v_th)))
        d_h = a * sg * (1.0 - sg)
        d_vth = -d_h
    elif SURROGATE == 1:
        # pi/2 made in the arithmetic dtype (a float literal would be rounded to float32 first).
        w = tl.full([], 1.5707963267948966, h.dtype) * a * (h - v_th)
        d_h = 0.5 * a / (1.0 + w * w)
        d_vth = -d_h
    else:
        # IIR-SNN: z = H / V_th - 1, dS/dz = alpha max(0, 1 - |z|); chain rule through z for H and V_th.
        inv_th = 1.0 / v_th
        z = h * inv_th - 1.0
        one_minus = 1.0 - tl.abs(z)
        d_z = tl.where(one_minus > 0.0, a * one_minus, 0.0)
        d_h = d_z * inv_th
        d_vth = -d_z * h * inv_th * inv_th
    return d_h, d_vth


@triton.jit
def _backward_step(grad_s, grad_v, h, v_th, v_r, a, SURROGATE: tl.constexpr, HARD_RESET: tl.constexpr,
                   DETACH_RESET: tl.constexpr):
    """(dL/dH_t, step t's contribution to dL/dV_th)."""
    s = _fire(h, v_th)
    sh, sth = _surrogate_grad(h, v_th, a, SURROGATE)
    if HARD_RESET:
        if DETACH_RESET:
            dv_dh = 1.0 - s
            grad_vth = grad_s * sth
        else:
            dv_dh = 1.0 - s + (v_r - h) * sh
            grad_vth = grad_s * sth + grad_v * ((v_r - h) * sth)
    else:
        if DETACH_RESET:
            dv_dh = tl.full(h.shape, 1.0, h.dtype)
            grad_vth = grad_s * sth + grad_v * -s
        else:
            dv_dh = 1.0 - v_th * sh
            grad_vth = grad_s * sth + grad_v * (-s - v_th * sth)
    grad_h = grad_s * sh + grad_v * dv_dh
    return grad_h, grad_vth


@triton.jit
def _load_param(ptr, offs, mask, SHARED: tl.constexpr, OTHER: tl.constexpr, ACC: tl.constexpr):
    if SHARED:
        p = tl.load(ptr).to(ACC)
    else:
        p = tl.load(ptr + offs, mask=mask, other=OTHER).to(ACC)
    return p


# --------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------


# T and N are not specialised: T = 1 or N = 1 would otherwise become compile-time constants (one more compile each).
@triton.jit
def _neuron_params(k_ptr, v_th_ptr, offs, mask, v_reset, K_SHARED: tl.constexpr, VTH_SHARED: tl.constexpr,
                   HARD_RESET: tl.constexpr, ACC: tl.constexpr):
    """k and V_th of each neuron of the block, and V_r (0 for soft reset)."""
    k = _load_param(k_ptr, offs, mask, K_SHARED, 0.0, ACC)
    v_th = _load_param(v_th_ptr, offs, mask, VTH_SHARED, 1.0, ACC)
    if HARD_RESET:
        v_r = tl.full([], v_reset, ACC)
    else:
        v_r = tl.zeros([], ACC)
    return k, v_th, v_r


@triton.jit(do_not_specialize=["T", "N"])
def lif_fwd_kernel(
    x_ptr, v0_ptr, k_ptr, v_th_ptr, spikes_ptr, h_ptr, v_last_ptr,
    T, N, v_reset: tl.float64,
    HAS_V0: tl.constexpr, K_SHARED: tl.constexpr, VTH_SHARED: tl.constexpr, HARD_RESET: tl.constexpr,
    DECAY_INPUT: tl.constexpr, STORE_H: tl.constexpr, ACC: tl.constexpr, BF16_BY_HAND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k, v_th, v_r = _neuron_params(k_ptr, v_th_ptr, offs, mask, v_reset, K_SHARED, VTH_SHARED, HARD_RESET, ACC)
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(ACC)
    else:
        v = tl.zeros([BLOCK], ACC) + v_r

    # Pointers advance by N per step (64-bit pointer arithmetic: no int32 overflow of t * N).
    x_ptrs = x_ptr + offs
    s_ptrs = spikes_ptr + offs
    h_ptrs = h_ptr + offs
    for _ in range(T):
        xt = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
        # Fire and reset on H rounded to the storage dtype: the backward recomputes S from that same value.
        h_store = to_storage(_charge(v, xt, k, v_r, DECAY_INPUT), DTYPE, BF16_BY_HAND)
        h = h_store.to(ACC)
        s = _fire(h, v_th)
        tl.store(s_ptrs, s.to(DTYPE), mask=mask)
        if STORE_H:
            tl.store(h_ptrs, h_store, mask=mask)
            h_ptrs += N
        v = _reset(h, s, v_th, v_r, HARD_RESET)
        x_ptrs += N
        s_ptrs += N
    tl.store(v_last_ptr + offs, to_storage(v, DTYPE, BF16_BY_HAND), mask=mask)


@triton.jit(do_not_specialize=["T", "N"])
def lif_bwd_kernel(
    grad_s_ptr, grad_v_last_ptr, h_ptr, x_ptr, v0_ptr, k_ptr, v_th_ptr, grad_x_ptr, grad_v0_ptr, grad_k_ptr,
    grad_v_th_ptr,
    T, N, v_reset: tl.float64, alpha: tl.float64,
    HAS_GRAD_V_LAST: tl.constexpr, LOAD_X: tl.constexpr, HAS_V0: tl.constexpr, K_SHARED: tl.constexpr,
    VTH_SHARED: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr, DETACH_RESET: tl.constexpr,
    SURROGATE: tl.constexpr, NEED_GRAD_K: tl.constexpr, NEED_GRAD_VTH: tl.constexpr, ACC: tl.constexpr,
    BF16_BY_HAND: tl.constexpr, BLOCK: tl.constexpr,
):
    DTYPE: tl.constexpr = h_ptr.dtype.element_ty
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k, v_th, v_r = _neuron_params(k_ptr, v_th_ptr, offs, mask, v_reset, K_SHARED, VTH_SHARED, HARD_RESET, ACC)
    a = tl.full([], alpha, ACC)
    if HAS_GRAD_V_LAST:
        gv = tl.load(grad_v_last_ptr + offs, mask=mask, other=0.0).to(ACC)
    else:
        gv = tl.zeros([BLOCK], ACC)
    gk = tl.zeros([BLOCK], ACC)
    gth = tl.zeros([BLOCK], ACC)
    if NEED_GRAD_K:
        if HAS_V0:
            v_init = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(ACC)
        else:
            v_init = tl.zeros([BLOCK], ACC) + v_r

    last = (T - 1).to(tl.int64) * N
    h_ptrs = h_ptr + last + offs
    gs_ptrs = grad_s_ptr + last + offs
    gx_ptrs = grad_x_ptr + last + offs
    x_ptrs = x_ptr + last + offs
    # h holds H_t; H_{t-1} is loaded once per step and becomes h of the next (earlier) step.
    h = tl.load(h_ptrs, mask=mask, other=0.0).to(ACC)
    for i in range(T):
        has_prev = i < T - 1  # t = T-1-i > 0
        gs = tl.load(gs_ptrs, mask=mask, other=0.0).to(ACC)
        h_prev = tl.load(h_ptrs - N, mask=mask & has_prev, other=0.0).to(ACC)
        grad_h, grad_vth = _backward_step(gs, gv, h, v_th, v_r, a, SURROGATE, HARD_RESET, DETACH_RESET)
        if DECAY_INPUT:
            gx = k * grad_h
        else:
            gx = grad_h
        tl.store(gx_ptrs, to_storage(gx, DTYPE, BF16_BY_HAND), mask=mask)
        if NEED_GRAD_VTH:
            gth += grad_vth
        if NEED_GRAD_K:
            v_prev = tl.where(has_prev, _reset(h_prev, _fire(h_prev, v_th), v_th, v_r, HARD_RESET), v_init)
            if LOAD_X:
                xt = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
                gk += grad_h * (xt + v_r - v_prev)
            else:
                gk += grad_h * (v_r - v_prev)
            x_ptrs -= N
        gv = (1.0 - k) * grad_h
        h = h_prev
        h_ptrs -= N
        gs_ptrs -= N
        gx_ptrs -= N
    tl.store(grad_v0_ptr + offs, to_storage(gv, DTYPE, BF16_BY_HAND), mask=mask)
    if NEED_GRAD_K:
        tl.store(grad_k_ptr + offs, gk, mask=mask)
    if NEED_GRAD_VTH:
        tl.store(grad_v_th_ptr + offs, gth, mask=mask)


# --------------------------------------------------------------------------------------------------------------
# Launchers (called by the custom ops pyfast::lif_fwd_triton / lif_bwd_triton in pyfast/ops/lif.py)
# --------------------------------------------------------------------------------------------------------------


# (BLOCK, num_warps) per kernel on a GPU, the best of a sweep of BLOCK x num_warps (bench/RESULTS.md, "Launch
# choices"): the forward with 4 neurons per thread in small programs, the backward, with more live values per neuron,
# with one neuron per thread. BLOCK = 256 also gives the most programs for small N. The time loop is sequential, so
# nothing else is tuned.
_FWD_CONFIG = (256, 2)
_BWD_CONFIG = (256, 8)


def _launch_config(kernel, n: int, device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        # Interpreter: a program costs per operation, not per lane; no more lanes than neurons.
        return max(16, min(1024, triton.next_power_of_2(n))), 1
    return _FWD_CONFIG if kernel is lif_fwd_kernel else _BWD_CONFIG


def _acc(dtype: torch.dtype):
    if dtype not in TL_DTYPES:
        raise TypeError(f"lif (triton): x must be float32/float64/float16/bfloat16, got {dtype}")
    return tl_acc_dtype(dtype)


def _surrogate_id(surrogate: str) -> int:
    if surrogate not in SURROGATE_IDS:
        raise ValueError(f"lif (triton): surrogate must be one of {tuple(SURROGATE_IDS)}, got {surrogate!r}")
    return SURROGATE_IDS[surrogate]


def _shared(p: torch.Tensor, n: int, name: str, dtype: torch.dtype, device: torch.device) -> bool:
    _expect(name, p, p.numel() if p.numel() == 1 else n, dtype, device, "1 or N = ")
    return p.numel() == 1


def _expect(name, t, numel, dtype, device, what=""):
    """The raw-pointer kernels read and write numel elements of t: anything else is an error, never an overrun."""
    if t is None:
        return
    if t.numel() != numel or t.dtype != dtype or t.device != device or not t.is_contiguous():
        raise ValueError(
            f"lif (triton): {name} must be a contiguous {dtype} tensor of {what}{numel} elements on {device}, got "
            f"{'a non-contiguous ' if not t.is_contiguous() else ''}{t.dtype} tensor of {t.numel()} elements on "
            f"{t.device}"
        )


def _launch(kernel, device, n, args, **constexprs):
    block, num_warps = _launch_config(kernel, n, device)
    grid = (triton.cdiv(n, block),)
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        # Triton launches on the current device's current stream.
        with torch.cuda.device(device):
            kernel[grid](*args, BLOCK=block, num_warps=num_warps, **constexprs)
    else:
        kernel[grid](*args, BLOCK=block, num_warps=num_warps, **constexprs)


def lif_fwd(x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset, spikes, h_seq, v_last) -> None:
    """Forward of the LIF neuron into preallocated outputs.

    x: [T, *] contiguous (float32/float64/float16/bfloat16), treated as [T, N] with N = x[0].numel(); v0: [*] of
    x's dtype or None (start from v_reset, or 0 for soft reset); k, v_th: 1 (shared) or N (per neuron) elements in the
    arithmetic dtype (float64 for float64 x, else float32); v_reset: float, or None for soft reset. Writes spikes
    [T, *] and, unless h_seq is None, the charged membrane h_seq [T, *] (both x's dtype), and the final membrane
    v_last [*]. surrogate, alpha and detach_reset only matter for the backward; they are taken so the two launchers
    share one signature family.
    """
    _surrogate_id(surrogate)
    acc = _acc(x.dtype)
    t = x.shape[0]
    n = x.numel() // t if t else 0
    dev = x.device
    for name, tensor, numel in (("x", x, t * n), ("v0", v0, n), ("spikes", spikes, t * n), ("h_seq", h_seq, t * n),
                                ("v_last", v_last, n)):
        _expect(name, tensor, numel, x.dtype, dev)
    if n == 0 or t == 0:
        return
    param_dtype = acc_dtype(x.dtype)
    k_shared, vth_shared = _shared(k, n, "k", param_dtype, dev), _shared(v_th, n, "v_th", param_dtype, dev)
    args = (
        x, x if v0 is None else v0, k, v_th, spikes, spikes if h_seq is None else h_seq, v_last,
        t, n, 0.0 if v_reset is None else float(v_reset),
    )
    _launch(
        lif_fwd_kernel, x.device, n, args,
        HAS_V0=v0 is not None, K_SHARED=k_shared, VTH_SHARED=vth_shared, HARD_RESET=v_reset is not None,
        DECAY_INPUT=bool(decay_input), STORE_H=h_seq is not None, ACC=acc, BF16_BY_HAND=INTERPRET,
    )


def lif_bwd(grad_spikes, grad_v_last, h_seq, x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset,
            grad_x, grad_v0, grad_k, grad_v_th) -> None:
    """BPTT backward of :func:`lif_fwd` into preallocated outputs.

    grad_spikes, h_seq: [T, *]; grad_v_last: [*] or None (zero); x: [T, *], read only for grad_k with decay_input
    (None otherwise allowed); v0: [*] or None. Writes grad_x [T, *] and grad_v0 [*] (x's dtype) and, where
    not None, the per-neuron [N] buffers grad_k and grad_v_th, in k's and v_th's arithmetic dtype (the caller sums
    them for a shared k / v_th).
    """
    acc = _acc(h_seq.dtype)
    t = h_seq.shape[0]
    n = h_seq.numel() // t if t else 0
    dev = h_seq.device
    for name, tensor, numel in (("grad_spikes", grad_spikes, t * n), ("grad_v_last", grad_v_last, n),
                                ("h_seq", h_seq, t * n), ("x", x, t * n), ("v0", v0, n), ("grad_x", grad_x, t * n),
                                ("grad_v0", grad_v0, n)):
        _expect(name, tensor, numel, h_seq.dtype, dev)
    param_dtype = acc_dtype(h_seq.dtype)
    _expect("grad_k", grad_k, n, param_dtype, dev)
    _expect("grad_v_th", grad_v_th, n, param_dtype, dev)
    if n == 0 or t == 0:
        return
    k_shared, vth_shared = _shared(k, n, "k", param_dtype, dev), _shared(v_th, n, "v_th", param_dtype, dev)
    need_k, need_vth = grad_k is not None, grad_v_th is not None
    load_x = need_k and bool(decay_input)
    if load_x and x is None:
        raise ValueError("lif_bwd: x is required for grad_k when decay_input=True")
    args = (
        grad_spikes, grad_spikes if grad_v_last is None else grad_v_last, h_seq, x if load_x else h_seq,
        h_seq if v0 is None else v0, k, v_th, grad_x, grad_v0, grad_k if need_k else k, grad_v_th if need_vth else k,
        t, n, 0.0 if v_reset is None else float(v_reset), float(alpha),
    )
    _launch(
        lif_bwd_kernel, h_seq.device, n, args,
        HAS_GRAD_V_LAST=grad_v_last is not None, LOAD_X=load_x, HAS_V0=v0 is not None, K_SHARED=k_shared,
        VTH_SHARED=vth_shared, HARD_RESET=v_reset is not None, DECAY_INPUT=bool(decay_input),
        DETACH_RESET=bool(detach_reset), SURROGATE=_surrogate_id(surrogate), NEED_GRAD_K=need_k,
        NEED_GRAD_VTH=need_vth, ACC=acc, BF16_BY_HAND=INTERPRET,
    )
