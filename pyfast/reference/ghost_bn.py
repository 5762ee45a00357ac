"""Readable pure-PyTorch ghost batch normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better:
closing the generalization gap in large batch training of neural networks"): the definition of correct for every
backend of ``ghost_bn_fwd`` / ``ghost_bn_bwd``.

Training: the batch of N samples is cut into G = ceil(N / B) ghost batches of B samples (ghost g holds samples
[g B, min(N, (g + 1) B)); the last one is smaller when B does not divide N: the remainder ghost batch). Each is
normalised with its own statistics over (its samples, every spatial position)::

    mu_g = mean x,  var_g = mean (x - mu_g)^2  (biased),  y = (x - mu_g) / sqrt(var_g + eps) * w + b

Running statistics are updated once per ghost batch, in order, exactly as a loop of ``nn.BatchNorm`` calls over the
chunks would (EMA with the unbiased variance var_g m_g / (m_g - 1), m_g = the ghost's values per channel). After
the G updates, in closed form::

    r_G = (1 - m)^G r_0 + sum_{g=1..G} m (1 - m)^{G-g} s_g

Eval uses the running statistics (plain batch norm). With B >= N there is one ghost batch: ``nn.BatchNorm``.
:func:`ghost_batch_norm_ref` is the vectorised form (full ghost batches viewed as [G, B, C, *], statistics over
dims (1, 3, ...)); :func:`ghost_batch_norm_loop_ref` is the per-chunk loop of the official code, for the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyfast._dtypes import acc_dtype


def num_ghosts(n: int, ghost_batch_size: int) -> int:
    """G = ceil(N / B)."""
    return -(-n // ghost_batch_size)


def ghost_counts(n: int, spatial: int, ghost_batch_size: int) -> list[int]:
    """m_g, the values per channel of each ghost batch (samples x spatial positions)."""
    return [min(ghost_batch_size, n - g * ghost_batch_size) * spatial for g in range(num_ghosts(n, ghost_batch_size))]


def running_update(running: torch.Tensor, stats: torch.Tensor, momentum: float) -> torch.Tensor:
    """r_G = (1 - m)^G r_0 + sum_g m (1 - m)^{G-g} s_g for per-ghost statistics ``stats`` [G, C] (float64 maths,
    returned in running's dtype)."""
    g = stats.shape[0]
    powers = torch.arange(g - 1, -1, -1, dtype=torch.float64, device=stats.device)
    weights = momentum * (1.0 - momentum) ** powers
    out = (1.0 - momentum) ** g * running.double() + (weights[:, None] * stats.double()).sum(0)
    return out.to(running.dtype)


def ghost_stats_ref(x: torch.Tensor, ghost_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-ghost mean and biased variance, each [G, C] in the arithmetic type (float32, float64 for float64)."""
    xa = x.to(acc_dtype(x.dtype))
    n, c = x.shape[:2]
    full = n // ghost_batch_size
    means, variances = [], []
    if full:
        v = xa[: full * ghost_batch_size].reshape(full, ghost_batch_size, c, -1)
        means.append(v.mean(dim=(1, 3)))
        variances.append(v.var(dim=(1, 3), unbiased=False))
    if n % ghost_batch_size:
        r = xa[full * ghost_batch_size:].transpose(0, 1).reshape(c, -1)
        means.append(r.mean(dim=1)[None])
        variances.append(r.var(dim=1, unbiased=False)[None])
    return torch.cat(means), torch.cat(variances)


def ghost_batch_norm_ref(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                         weight: torch.Tensor | None, bias: torch.Tensor | None, ghost_batch_size: int,
                         momentum: float, eps: float):
    """Training-mode ghost batch norm of x [N, C, *]: returns (y, new_running_mean, new_running_var); the running
    statistics are None when not given. Differentiable in x, weight and bias."""
    acc = acc_dtype(x.dtype)
    n, c = x.shape[:2]
    mean, var = ghost_stats_ref(x, ghost_batch_size)
    g = mean.shape[0]
    # Each sample's ghost index, to broadcast the [G, C] statistics back to [N, C, 1...].
    idx = torch.arange(n, device=x.device) // ghost_batch_size
    shape = (n, c) + (1,) * (x.dim() - 2)
    mu = mean[idx].reshape(shape)
    inv = torch.rsqrt(var + eps)[idx].reshape(shape)
    y = (x.to(acc) - mu) * inv
    if weight is not None:
        y = y * weight.to(acc).reshape((c,) + (1,) * (x.dim() - 2))
    if bias is not None:
        y = y + bias.to(acc).reshape((c,) + (1,) * (x.dim() - 2))
    new_mean = new_var = None
    if running_mean is not None:
        counts = torch.tensor(ghost_counts(n, x[0, 0].numel(), ghost_batch_size), dtype=torch.float64,
                              device=x.device)[:g, None]
        with torch.no_grad():
            new_mean = running_update(running_mean, mean.detach(), momentum)
            new_var = running_update(running_var, var.detach().double() * counts / (counts - 1), momentum)
    return y.to(x.dtype), new_mean, new_var


def ghost_batch_norm_loop_ref(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                              weight: torch.Tensor | None, bias: torch.Tensor | None, ghost_batch_size: int,
                              momentum: float, eps: float) -> torch.Tensor:
    """The official code's form: ``F.batch_norm`` (training) on each chunk of ghost_batch_size samples in order,
    updating the running buffers in place once per chunk. Returns y."""
    chunks = x.split(ghost_batch_size)
    return torch.cat([F.batch_norm(ch, running_mean, running_var, weight, bias, True, momentum, eps) for ch in chunks])
