"""Readable pure-PyTorch Plackett-Luce distillation (PLD): the definition of correct for every backend of ``pld_fwd``
/ ``pld_bwd``.

Per row, with student logits s, teacher logits t, label y and teacher temperature tau_t::

    alpha = softmax(t / tau_t)
    pi    = y first, then the other classes by descending t (the target ranking)
    L     = sum_k alpha[pi_k] (log sum_{j >= k} exp(s[pi_j]) - s[pi_k])

i.e. the alpha-weighted negative log-likelihood of pi under the student's Plackett-Luce model: gather s along pi, a
reverse cumulative log-sum-exp (:func:`tail_logsumexp`), a weighted sum. Equal teacher logits rank by ascending class index (a stable sort; -0 equals
+0), the same rule in every backend. Gradients (what autograd of this file computes and what the kernels implement),
with z_k = s[pi_k], Z_k = sum_{j >= k} exp(z_j), l_k = log Z_k - z_k::

    dL/dz_j = exp(z_j) sum_{k <= j} alpha[pi_k] / Z_k - alpha[pi_j]
    dL/dt   = alpha (l - L) / tau_t      (l in class order; the ranking is piecewise constant in t)

Arithmetic in float32 for float32/float16/bfloat16 inputs (float64 for float64). Teacher logits are assumed finite:
a NaN or infinite teacher logit makes alpha, and so the row's loss, NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyfast._dtypes import acc_dtype


def pld_ranking(teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The target ranking pi [B, C] (int64): the label, then the other classes by descending teacher logit, equal
    logits by ascending class index."""
    t = teacher.to(acc_dtype(teacher.dtype))
    rank_key = t.scatter(1, labels[:, None], torch.full_like(t[:, :1], float("inf")))  # the label ranks first
    return torch.argsort(rank_key, dim=1, descending=True, stable=True)


def tail_logsumexp(z: torch.Tensor) -> torch.Tensor:
    """``log sum_{j >= k} exp(z[:, j])`` for every column k of z [B, C]: a reverse cumulative log-sum-exp by doubling
    (after the step of width h, column k covers z[:, k : k + 2h]; log2(C) steps).

    Not ``z.flip(1).logcumsumexp(1).flip(1)``: the values are the same, but logcumsumexp's backward adds log(grad) to
    the result, which rounds the gradient's weights away as the logits grow (3e-5 relative in float32 at |z| ~ 1e2,
    the weights lost entirely at ~1e30). The gradient of logaddexp is a sigmoid of a difference: exact at any
    scale."""
    t, h = z, 1
    while h < z.shape[1]:
        t = torch.cat((torch.logaddexp(t[:, :-h], t[:, h:]), t[:, -h:]), 1)
        h *= 2
    return t


def pld_ref(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, tau_t: float = 1.0) -> torch.Tensor:
    """Per-row PLD loss [B] of student / teacher logits [B, C] and int64 labels [B]; differentiable in both logits."""
    s = student.to(acc_dtype(student.dtype))
    t = teacher.to(acc_dtype(teacher.dtype))
    alpha = F.softmax(t / tau_t, 1)
    order = pld_ranking(t.detach(), labels)
    s_sorted, a_sorted = s.gather(1, order), alpha.gather(1, order)
    tail_lse = tail_logsumexp(s_sorted)  # log sum_{j >= k} exp(s_{pi_j})
    return (a_sorted * (tail_lse - s_sorted)).sum(1)
