"""Logit distillation losses: Hinton KD, NKD, USKD (self-KD), PLD (Plackett-Luce) and BD-KD (online).

Shapes: logits ``[B, C]`` (any floating dtype; computed in float32 or wider), labels ``y`` int64 ``[B]``. Every
function returns the reduced loss (``reduction="mean"`` over the batch, ``"sum"``, or ``"none"`` for ``[B]``), and
has an ``nn.Module`` twin holding its hyperparameters. Teacher logits are detached inside: no gradient reaches a
teacher through a student's loss.

Non-finite logits: a row of student or teacher logits holding a NaN or +inf gives a NaN loss for that row, and only
that row, in every loss (no error: a check would cost a device synchronisation per step; the training harness stops
or skips a step whose loss is not finite). A -inf logit is a class of probability 0, which the maths handles: never
NaN, the loss is +inf where the student gives probability 0 to a class its target (teacher, label or soft label)
gives mass, and finite otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyfast._dtypes import acc_dtype
from pyfast.losses._checks import check_labels, check_logits, check_nonnegative, check_positive, reduce
from pyfast.ops.pld import pld_rows


def kl_rows(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities [B, C] -> [B], with 0 log 0 = 0 (a class p gives probability
    exactly 0 adds nothing). A NaN in either row gives NaN: the row of logits that held a NaN or +inf has no
    distribution, and the loss says so instead of dropping the class (every loss here propagates NaN alike)."""
    p = p_log.exp()
    return torch.where(p == 0, torch.zeros_like(p), p * (p_log - q_log)).sum(1)


def float_logits(z: torch.Tensor) -> torch.Tensor:
    """Logits in their arithmetic dtype (:func:`pyfast._dtypes.acc_dtype`: float64 stays, the rest is float32)."""
    return z.to(acc_dtype(z.dtype))


# --------------------------------------------------------------------------------------------------------------
# Hinton KD
# --------------------------------------------------------------------------------------------------------------


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0,
            reduction: str = "mean") -> torch.Tensor:
    """Hinton et al.'s distillation term ``T^2 KL(softmax(t / T) || softmax(s / T))`` per sample.

    ``student``, ``teacher``: logits [B, C]. The T^2 factor keeps the gradient scale independent of T. Add the
    cross-entropy on the labels yourself (``pyfast train --method kd`` uses ``(1 - w) CE + w KD``).
    """
    check_logits("student", student)
    check_logits("teacher", teacher, student.shape[1], student.shape[0])
    T = check_positive("temperature", temperature)
    s, t = float_logits(student), float_logits(teacher).detach()
    per = kl_rows(F.log_softmax(t / T, 1), F.log_softmax(s / T, 1)) * T * T
    return reduce(per, reduction)


class KDLoss(nn.Module):
    """:func:`kd_loss` as a module: ``KDLoss(temperature)(student, teacher)``."""

    def __init__(self, temperature: float = 4.0, reduction: str = "mean"):
        super().__init__()
        self.temperature, self.reduction = check_positive("temperature", temperature), reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return kd_loss(student, teacher, self.temperature, self.reduction)


# --------------------------------------------------------------------------------------------------------------
# NKD: normalised KD (Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation")
# --------------------------------------------------------------------------------------------------------------


def non_target(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The logits without the target column: ``[B, C] -> [B, C - 1]`` (order of the other classes kept)."""
    keep = torch.ones_like(z, dtype=torch.bool).scatter_(1, y[:, None], False)
    return z[keep].view(z.shape[0], z.shape[1] - 1)


def nkd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, temperature: float = 1.0,
             gamma: float = 1.5, reduction: str = "mean") -> torch.Tensor:
    """NKD's distillation term (the method adds CE): ``-t_y log S_y - gamma T^2 sum_{i != y} T~_i log S~_i``.

    ``S = softmax(s)``, ``t_y = softmax(t)_y`` (the teacher's target probability, detached); ``T~`` / ``S~`` are the
    softmaxes of the non-target logits divided by T (the normalised non-target distributions). Defaults are the
    ImageNet ones (T = 1, gamma = 1.5); the CIFAR-100 configuration uses T = 3, gamma = 3.5.
    """
    check_logits("student", student)
    check_logits("teacher", teacher, student.shape[1], student.shape[0])
    check_labels(y, student)
    T, g = check_positive("temperature", temperature), check_nonnegative("gamma", gamma)
    s, t = float_logits(student), float_logits(teacher).detach()
    log_s = F.log_softmax(s, 1).gather(1, y[:, None]).squeeze(1)
    t_y = F.softmax(t, 1).gather(1, y[:, None]).squeeze(1)
    t_nt = F.softmax(non_target(t, y) / T, 1)
    log_s_nt = F.log_softmax(non_target(s, y) / T, 1)
    per = -t_y * log_s - g * T * T * (t_nt * log_s_nt).sum(1)
    return reduce(per, reduction)


class NKDLoss(nn.Module):
    def __init__(self, temperature: float = 1.0, gamma: float = 1.5, reduction: str = "mean"):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.gamma, self.reduction = check_nonnegative("gamma", gamma), reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nkd_loss(student, teacher, y, self.temperature, self.gamma, self.reduction)


# --------------------------------------------------------------------------------------------------------------
# USKD: teacher-free self-KD with a weak head on mid-level features and Zipf soft non-target labels
# --------------------------------------------------------------------------------------------------------------


def zipf_non_target_labels(score: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zipf soft labels over the non-target classes: ``q_c ∝ 1 / rank(c)`` with rank 1 the highest ``score`` among
    the non-targets; ``[B, C] -> [B, C - 1]`` in :func:`non_target` order, each row summing to 1."""
    nt = non_target(score, y)
    ranks = nt.argsort(1, descending=True).argsort(1).to(nt.dtype) + 1  # 1 = best
    q = 1.0 / ranks
    return q / q.sum(1, keepdim=True)


class USKDLoss(nn.Module):
    """USKD's extra terms (the method adds CE): ``alpha L_t + beta L_non + L_w``.

    - ``L_t = -mean(p_y log s_y)`` with ``s = softmax(z)`` and ``p_y = s_y^2 + 1 - mean_B(s_y^2)`` (detached);
    - weak head ``fc: channels -> C`` on mid-level features ``f [B, channels]``:
      ``L_w = -mu mean sum yhat log softmax(fc(f))`` with ``yhat = 0.9 onehot + 0.1 / C``;
    - ``L_non = -mean sum q log softmax(z_{!=y})``: Zipf labels (:func:`zipf_non_target_labels`) ranked by
      ``r = w / (1 - w_y) + l / (1 - l_y)`` with ``w = softmax(fc(f))``. The official code takes ``l`` as the
      *log*-softmax of z (mixing probabilities and log-probabilities); ``rank_with_log_probs=True`` keeps that
      (the published numbers come from it), False uses probabilities for both.

    Defaults are the CIFAR-100 ones (alpha 0.1, beta 0.1, mu 0.1). ``forward(z, f, y)``.
    """

    def __init__(self, channels: int, num_classes: int, alpha: float = 0.1, beta: float = 0.1, mu: float = 0.1,
                 rank_with_log_probs: bool = True, reduction: str = "mean"):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.fc = nn.Linear(channels, num_classes)
        self.alpha, self.beta = check_nonnegative("alpha", alpha), check_nonnegative("beta", beta)
        self.mu, self.rank_with_log_probs, self.reduction = check_nonnegative("mu", mu), rank_with_log_probs, reduction

    def forward(self, z: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_logits("z", z, self.fc.out_features)
        check_labels(y, z)
        if features.dim() != 2 or features.shape != (z.shape[0], self.fc.in_features):
            raise ValueError(f"features must have shape [{z.shape[0]}, {self.fc.in_features}], got "
                             f"{tuple(features.shape)}")
        z = float_logits(z)
        C = z.shape[1]
        log_s = F.log_softmax(z, 1)
        log_s_y = log_s.gather(1, y[:, None]).squeeze(1)
        s_y2 = log_s_y.detach().exp() ** 2
        # The batch mean skips rows whose logits held a NaN or +inf: their own loss is NaN, the others' stay finite.
        p_y = s_y2 + 1 - s_y2.nanmean()
        l_t = -p_y * log_s_y

        weak = float_logits(self.fc(features.to(self.fc.weight.dtype)))
        log_w = F.log_softmax(weak, 1)
        yhat = torch.full_like(log_w, 0.1 / C).scatter_add_(1, y[:, None], torch.full_like(log_w[:, :1], 0.9))
        l_w = -(yhat * log_w).sum(1)

        with torch.no_grad():
            w = log_w.exp()
            other = log_s if self.rank_with_log_probs else log_s.exp()
            score = w / (1 - w.gather(1, y[:, None])) + other / (1 - other.gather(1, y[:, None]))
            q = zipf_non_target_labels(score, y)
        l_non = -(q * F.log_softmax(non_target(z, y), 1)).sum(1)
        per = self.alpha * l_t + self.beta * l_non + self.mu * l_w
        return reduce(per, self.reduction)


# --------------------------------------------------------------------------------------------------------------
# PLD: Plackett-Luce distillation
# --------------------------------------------------------------------------------------------------------------


def pld_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, tau_t: float = 1.0,
             reduction: str = "mean", *, backend: str = "auto") -> torch.Tensor:
    """Plackett-Luce distillation, a replacement for CE + KD.

    The target ranking pi* is the true class first, then the other classes by descending teacher logit (equal teacher
    logits by ascending class index); the loss is the teacher-confidence-weighted negative log-likelihood of pi* under
    the student's Plackett-Luce model::

        L = sum_k alpha_{pi*_k} (log sum_{j >= k} exp(s_{pi*_j}) - s_{pi*_k}),   alpha = softmax(t / tau_t)

    Convex in s, invariant to s + c, and equal to cross-entropy when alpha is one-hot on the label. ``tau_t`` (the
    teacher temperature) defaults to 1. Computed by the fused ``torch.ops.pyfast.pld_fwd`` / ``pld_bwd`` (one pass
    per row: softmax, sort, reverse cumulative log-sum-exp, weighted sum; the backward reuses the forward's ranking)
    or the reference (:mod:`pyfast.reference.pld`), chosen by ``backend`` (``"auto"``, ``"cpp"``, ``"cuda"``,
    ``"triton"``, ``"reference"``; see :func:`pyfast.ops.pld.pld_rows`).
    """
    check_logits("student", student)
    check_logits("teacher", teacher, student.shape[1], student.shape[0])
    check_labels(y, student)
    tau = check_positive("tau_t", tau_t)
    return reduce(pld_rows(student, teacher.detach(), y, tau, backend=backend), reduction)


class PLDLoss(nn.Module):
    def __init__(self, tau_t: float = 1.0, reduction: str = "mean", *, backend: str = "auto"):
        super().__init__()
        self.tau_t, self.reduction, self.backend = check_positive("tau_t", tau_t), reduction, backend

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pld_loss(student, teacher, y, self.tau_t, self.reduction, backend=self.backend)


# --------------------------------------------------------------------------------------------------------------
# BD-KD: balanced divergences for online distillation
# --------------------------------------------------------------------------------------------------------------


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Entropy per row of log-probabilities [B, C] -> [B] (0 log 0 = 0; NaN in, NaN out)."""
    p = log_p.exp()
    return -torch.where(p == 0, torch.zeros_like(p), p * log_p).sum(1)


def bdkd_losses(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, temperature: float = 4.0,
                w_high: float = 1.0, w_low: float = 0.5, reduction: str = "mean"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-KD's two objectives for online KD of a student and a teacher trained together: ``(L_student, L_teacher)``.

    With ``p = softmax(logits / T)`` and ``dH = H(p_t) - H(p_s)`` per sample::

        L_student = CE(s, y) + T^2 [w_f KL(p_t || p_s) + w_r KL(p_s || p_t)]     p_t detached
        L_teacher = CE(t, y) + T^2 KL(p_s || p_t)                                 p_s detached

    An over-confident student (``dH > 0``: lower entropy than the teacher) gets ``w_f = w_high, w_r = w_low``
    (forward KL, mass-covering, softens it); otherwise ``w_f = w_low, w_r = w_high``. The weight values and T are
    not confirmed from the paper (arXiv 2212.12965 gives the rule, the spec could not pin the numbers): they are
    arguments, the defaults are a guess. No gradient crosses between the networks.
    """
    check_logits("student", student)
    check_logits("teacher", teacher, student.shape[1], student.shape[0])
    check_labels(y, student)
    T = check_positive("temperature", temperature)
    hi, lo = check_nonnegative("w_high", w_high), check_nonnegative("w_low", w_low)
    s, t = float_logits(student), float_logits(teacher)
    log_ps, log_pt = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
    over_confident = (entropy(log_pt.detach()) - entropy(log_ps.detach())) > 0
    w_f = torch.where(over_confident, hi, lo)
    w_r = torch.where(over_confident, lo, hi)
    kd_s = w_f * kl_rows(log_pt.detach(), log_ps) + w_r * kl_rows(log_ps, log_pt.detach())
    loss_s = F.cross_entropy(s, y, reduction="none") + T * T * kd_s
    loss_t = F.cross_entropy(t, y, reduction="none") + T * T * kl_rows(log_ps.detach(), log_pt)
    return reduce(loss_s, reduction), reduce(loss_t, reduction)


class BDKDLoss(nn.Module):
    def __init__(self, temperature: float = 4.0, w_high: float = 1.0, w_low: float = 0.5, reduction: str = "mean"):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.w_high, self.w_low = check_nonnegative("w_high", w_high), check_nonnegative("w_low", w_low)
        self.reduction = reduction

    def forward(self, student, teacher, y):
        return bdkd_losses(student, teacher, y, self.temperature, self.w_high, self.w_low, self.reduction)
