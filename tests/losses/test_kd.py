"""Distillation losses: definitions, the invariants of their specs, float64 gradcheck, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from pyfast.losses import (
    BDKDLoss,
    DRLoss,
    KDLoss,
    LSSKDLoss,
    NKDLoss,
    PLDLoss,
    USKDLoss,
    bdkd_losses,
    dr_loss,
    kd_loss,
    lsskd_loss,
    nkd_loss,
    non_target,
    pld_loss,
    zipf_non_target_labels,
)


def logits(b=5, c=7, seed=0, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g, dtype=dtype) * 2).requires_grad_(grad)


Y = torch.tensor([0, 3, 6, 2, 3])


def test_kd_is_t2_kl_and_zero_for_equal_logits():
    s, t = logits(grad=True), logits(seed=1)
    expected = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean") * 9
    torch.testing.assert_close(kd_loss(s, t, 3.0), expected)
    assert kd_loss(t, t).abs() < 1e-12
    assert torch.autograd.gradcheck(lambda a: kd_loss(a, t, 2.0), (s,))
    torch.testing.assert_close(KDLoss(3.0)(s, t), expected)


def test_teachers_get_no_gradient_from_student_losses():
    s, t = logits(grad=True), logits(seed=1, grad=True)
    (kd_loss(s, t) + nkd_loss(s, t, Y) + pld_loss(s, t, Y)).backward()
    assert s.grad is not None and t.grad is None


def test_nkd_matches_its_definition():
    s, t = logits(grad=True), logits(seed=1)
    T, gamma = 2.0, 1.5
    per = []
    for i in range(len(Y)):
        y = int(Y[i])
        others = [c for c in range(7) if c != y]
        t_y = F.softmax(t[i], 0)[y]
        log_s_y = F.log_softmax(s[i], 0)[y]
        t_nt = F.softmax(t[i, others] / T, 0)
        log_s_nt = F.log_softmax(s[i, others] / T, 0)
        per.append(-t_y * log_s_y - gamma * T * T * (t_nt * log_s_nt).sum())
    torch.testing.assert_close(nkd_loss(s, t, Y, T, gamma), torch.stack(per).mean())
    assert torch.autograd.gradcheck(lambda a: nkd_loss(a, t, Y, T, gamma), (s,))
    torch.testing.assert_close(NKDLoss(T, gamma)(s, t, Y), torch.stack(per).mean())


def test_nkd_non_target_gradient_vanishes_when_the_distributions_match():
    t = logits(seed=1)
    s = (t + 0.7).clone().requires_grad_(True)  # non-target logits equal up to a shift
    nkd_loss(s, t, Y, 2.0, gamma=1.0).backward()
    full = s.grad.clone()
    s.grad = None
    t_y = F.softmax(t, 1).gather(1, Y[:, None])
    (-(t_y * F.log_softmax(s, 1).gather(1, Y[:, None])).mean()).backward()
    torch.testing.assert_close(full, s.grad)  # only the target term contributes


def test_non_target_drops_the_label_column():
    z = torch.arange(12.0).view(3, 4)
    assert non_target(z, torch.tensor([0, 2, 3])).tolist() == [[1, 2, 3], [4, 5, 7], [8, 9, 10]]


def test_zipf_labels_sum_to_one_and_follow_the_rank():
    score = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    q = zipf_non_target_labels(score, torch.tensor([1]))  # non-targets 0, 2, 3 with scores .1, .5, .3
    expected = torch.tensor([1 / 3, 1.0, 1 / 2])
    torch.testing.assert_close(q, (expected / expected.sum())[None])


def test_uskd_terms():
    torch.manual_seed(0)
    loss = USKDLoss(6, 7, alpha=1.0, beta=0.0, mu=0.0).double()
    z, f = logits(grad=True), torch.randn(5, 6, dtype=torch.float64)
    s_y = F.softmax(z, 1).gather(1, Y[:, None]).squeeze(1).detach()
    p_y = s_y**2 + 1 - (s_y**2).mean()
    assert abs(p_y.mean().item() - 1) < 1e-12  # mean_B p_y = 1
    torch.testing.assert_close(loss(z, f, Y), -(p_y * F.log_softmax(z, 1).gather(1, Y[:, None]).squeeze(1)).mean())
    weak_only = USKDLoss(6, 7, alpha=0.0, beta=0.0, mu=1.0).double()
    yhat = torch.full((5, 7), 0.1 / 7, dtype=torch.float64)
    yhat[torch.arange(5), Y] += 0.9
    expected = -(yhat * F.log_softmax(weak_only.fc(f), 1)).sum(1).mean()
    torch.testing.assert_close(weak_only(z, f, Y), expected)
    # gradcheck without L_t, whose weight p_y is a stop-gradient of z (the Zipf ranking is piecewise constant)
    full = USKDLoss(6, 7, alpha=0.0).double()
    assert torch.autograd.gradcheck(lambda a, b: full(a, b, Y), (z, f.clone().requires_grad_(True)))
    with pytest.raises(ValueError, match=r"features must have shape \[5, 6\]"):
        full(z, torch.randn(5, 4, dtype=torch.float64), Y)


def brute_force_pl_nll(s, t, y, tau):
    """The loop the PLD formula stands for: walk the target ranking, one softmax over the remaining classes."""
    out = []
    for i in range(s.shape[0]):
        alpha = F.softmax(t[i] / tau, 0)
        others = sorted((c for c in range(s.shape[1]) if c != int(y[i])), key=lambda c: -float(t[i, c]))
        ranking = [int(y[i])] + others
        total = 0.0
        for k, c in enumerate(ranking):
            remaining = torch.stack([s[i, j] for j in ranking[k:]])
            total = total + alpha[c] * (torch.logsumexp(remaining, 0) - s[i, c])
        out.append(total)
    return torch.stack(out).mean()


def test_pld_equals_the_brute_force_plackett_luce_likelihood():
    s, t = logits(grad=True), logits(seed=1)
    for tau in (1.0, 2.5):
        torch.testing.assert_close(pld_loss(s, t, Y, tau), brute_force_pl_nll(s, t, Y, tau))
    assert torch.autograd.gradcheck(lambda a: pld_loss(a, t, Y), (s,))
    torch.testing.assert_close(PLDLoss(2.5)(s, t, Y), brute_force_pl_nll(s, t, Y, 2.5))


def test_pld_is_shift_invariant_and_is_cross_entropy_for_a_one_hot_teacher():
    s, t = logits(), logits(seed=1)
    torch.testing.assert_close(pld_loss(s + 3.0, t, Y), pld_loss(s, t, Y))
    one_hot_teacher = torch.full_like(t, -1e4).scatter(1, Y[:, None], 1e4)
    torch.testing.assert_close(pld_loss(s, one_hot_teacher, Y), F.cross_entropy(s, Y))


def test_bdkd_reduces_to_cross_entropy_for_identical_logits():
    s = logits()
    ls, lt = bdkd_losses(s, s.clone(), Y)
    torch.testing.assert_close(ls, F.cross_entropy(s, Y))
    torch.testing.assert_close(lt, F.cross_entropy(s, Y))


def test_bdkd_weights_follow_the_entropy_gap_and_no_gradient_crosses():
    sharp = torch.tensor([[8.0, 0.0, 0.0]], dtype=torch.float64)  # low entropy
    flat = torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64)   # high entropy
    y = torch.tensor([0])
    T = 1.0

    def kl(p_log, q_log):
        return (p_log.exp() * (p_log - q_log)).sum()

    for student, teacher, w_f, w_r in ((sharp, flat, 3.0, 0.25), (flat, sharp, 0.25, 3.0)):
        ls, _ = bdkd_losses(student, teacher, y, T, w_high=3.0, w_low=0.25)
        lps, lpt = F.log_softmax(student, 1), F.log_softmax(teacher, 1)
        expected = F.cross_entropy(student, y) + w_f * kl(lpt, lps) + w_r * kl(lps, lpt)
        torch.testing.assert_close(ls, expected)
    s, t = logits(grad=True), logits(seed=1, grad=True)
    ls, lt = bdkd_losses(s, t, Y)
    assert torch.autograd.grad(ls, t, allow_unused=True)[0] is None
    assert torch.autograd.grad(lt, s, allow_unused=True)[0] is None
    # each network's loss against its own logits (the other network's are a constant there)
    assert torch.autograd.gradcheck(lambda a: bdkd_losses(a, t.detach(), Y)[0], (s,))
    assert torch.autograd.gradcheck(lambda b: bdkd_losses(s.detach(), b, Y)[1], (t,))
    assert all(torch.isfinite(v) for v in BDKDLoss()(s, t, Y))


@pytest.mark.parametrize("fn", [
    lambda s, t, y: kd_loss(s, t), lambda s, t, y: nkd_loss(s, t, y), lambda s, t, y: pld_loss(s, t, y),
    lambda s, t, y: bdkd_losses(s, t, y),
])
def test_bad_input_names_the_argument(fn):
    s, t = logits(), logits(seed=1)
    with pytest.raises(ValueError, match="teacher has 5 classes, expected 7"):
        fn(s, t[:, :5], Y)
    with pytest.raises(TypeError, match="student must be a floating-point"):
        fn(s.long(), t, Y)
    with pytest.raises(ValueError, match=r"student must have shape \[B, C\]"):
        fn(s[0], t, Y)


def test_bad_hyperparameters_and_labels():
    s, t = logits(), logits(seed=1)
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            kd_loss(s, t, bad)
        with pytest.raises(ValueError, match="tau_t"):
            pld_loss(s, t, Y, bad)
    with pytest.raises(ValueError, match=r"class indices in \[0, 7\)"):
        nkd_loss(s, t, torch.tensor([0, 1, 2, 3, 7]))
    with pytest.raises(ValueError, match="y must be an int64 tensor"):
        pld_loss(s, t, Y.float())
    with pytest.raises(ValueError, match="reduction must be one of"):
        kd_loss(s, t, reduction="avg")
    assert kd_loss(s, t, reduction="none").shape == (5,) and math.isfinite(kd_loss(s, t, reduction="sum").item())


# --------------------------------------------------------------------------------------------------------------
# Non-finite logits and compilation, across every loss
# --------------------------------------------------------------------------------------------------------------

with torch.random.fork_rng():
    torch.manual_seed(0)
    _USKD = USKDLoss(7, 7, reduction="none").double()
_AUX = logits(b=10, c=14, seed=5).view(5, 2, 14)  # LSSKD's shallower head [B, M = 2, N M = 14]
_PREV = torch.softmax(logits(seed=6), 1)  # LSSKD's PS-KD soft targets


def _lsskd_heads(t):
    """LSSKD's auxiliary heads: a fixed shallower one, and t (on every rotation) as the deepest [B, M = 2, N M = 14],
    which teaches the shallower head and, through the heads' ensemble (ens_weight > 0), the final classifier."""
    return [_AUX, t.repeat(1, 2)[:, None].expand(-1, 2, -1)]


def _lsskd(s, t):
    return lsskd_loss(s, _lsskd_heads(t), _PREV, Y, ens_weight=1.0, reduction="none")


LOSSES = {  # (student, teacher) -> per-sample losses [B] (each output of bdkd separately)
    "kd": lambda s, t: kd_loss(s, t, reduction="none"),
    "nkd": lambda s, t: nkd_loss(s, t, Y, reduction="none"),
    "pld": lambda s, t: pld_loss(s, t, Y, reduction="none"),
    "bdkd-student": lambda s, t: bdkd_losses(s, t, Y, reduction="none")[0],
    "bdkd-teacher": lambda s, t: bdkd_losses(s, t, Y, reduction="none")[1],
    # dr_loss has targets, not teacher logits (checked probabilities): the teacher side is its softmax
    "dr": lambda s, t: dr_loss(s, torch.softmax(t, 1).nan_to_num(0.2), reduction="none"),
    # USKD has no teacher: its weak classifier's input features take the teacher's place
    "uskd": lambda s, t: _USKD(s, t, Y),
    "lsskd": _lsskd,
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("side", ["student", "teacher"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_nan_or_inf_logit_gives_a_nan_loss_for_its_row_in_every_loss(name, side, value):
    # kd_loss returned 0 for a row whose teacher logits held NaN or inf (its KL dropped the class as p > 0 failed),
    # while nkd_loss and bdkd_losses returned NaN.
    s, t = logits(seed=1), logits(seed=2)
    (s if side == "student" else t)[1, 4] = value
    if name == "dr" and side == "teacher":  # a damaged target row is refused, not turned into a loss
        with pytest.raises(ValueError, match="target rows must be finite, non-negative probabilities"):
            LOSSES[name](s, t)
        return
    per = LOSSES[name](s, t)
    assert per.shape == (5,) and torch.isnan(per[1]), per
    assert torch.isfinite(per[[0, 2, 3, 4]]).all(), per


def test_one_non_finite_row_leaves_the_other_rows_of_uskd_finite():
    # USKD's target weight p_y = s_y^2 + 1 - mean_B(s_y^2) averaged over the batch: one NaN row made every row NaN.
    z, f, others = logits(seed=1), logits(seed=2), [0, 2, 3, 4]
    z[1, 4] = math.nan
    per = _USKD(z, f, Y)
    assert torch.isnan(per[1]), per
    torch.testing.assert_close(per[others], _USKD(z[others], f[others], Y[others]))  # as if the row were not there


# What a -inf logit of row 1 (class 4, not its label 3) gives that row: +inf where the student gives probability 0 to a
# class its target gives mass, finite where only the target rules the class out.
MINUS_INF = {
    ("kd", "student"): "inf", ("kd", "teacher"): "finite",
    ("nkd", "student"): "inf", ("nkd", "teacher"): "finite",
    ("pld", "student"): "inf", ("pld", "teacher"): "finite",
    # BD-KD: each network is the other's student (both KL directions in the student's loss)
    ("bdkd-student", "student"): "inf", ("bdkd-student", "teacher"): "inf",
    ("bdkd-teacher", "student"): "finite", ("bdkd-teacher", "teacher"): "inf",
    ("dr", "student"): "inf", ("dr", "teacher"): "finite",
    ("uskd", "student"): "inf",  # the Zipf soft labels give every non-target class mass
    ("uskd", "teacher"): "nan",  # features, not logits: a -inf feature through the weak head is a NaN logit
    ("lsskd", "student"): "inf", ("lsskd", "teacher"): "finite",
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_minus_inf_logit_follows_the_maths_in_every_loss(name, side):
    s, t = logits(seed=1), logits(seed=2)
    (s if side == "student" else t)[1, 4] = -math.inf
    per = LOSSES[name](s, t)
    expected = MINUS_INF[name, side]
    row = per[1]
    assert {"inf": row == math.inf, "finite": torch.isfinite(row), "nan": torch.isnan(row)}[expected], per
    assert torch.isfinite(per[[0, 2, 3, 4]]).all(), per


def test_a_minus_inf_logit_is_a_class_of_probability_zero():
    s, t = logits(seed=1), logits(seed=2)
    t[1, 4] = -math.inf  # the teacher rules class 4 out: KD is finite
    assert torch.isfinite(kd_loss(s, t, reduction="none")).all()
    s[1, 4] = -math.inf
    assert torch.isfinite(kd_loss(s, t, reduction="none")).all()


@pytest.mark.parametrize("module, args", [
    (lambda: KDLoss(), lambda s, t: (s, t)),
    (lambda: NKDLoss(), lambda s, t: (s, t, Y)),
    (lambda: PLDLoss(), lambda s, t: (s, t, Y)),
    (lambda: BDKDLoss(), lambda s, t: (s, t, Y)),
    (lambda: DRLoss(), lambda s, t: (s, torch.softmax(t, 1))),
    (lambda: _USKD, lambda s, t: (s, t, Y)),  # one instance: its weak head is initialised at random
    (lambda: LSSKDLoss(ens_weight=1.0), lambda s, t: (s, _lsskd_heads(t), _PREV, Y)),
])
@pytest.mark.parametrize("dynamic", [False, True])  # True: symbolic batch and hyperparameters, as tests/nn's modules
def test_every_loss_module_compiles_whole(module, args, dynamic):
    s, t = logits(seed=3, grad=True), logits(seed=4)
    eager = module()(*args(s, t))
    compiled = torch.compile(module(), fullgraph=True, dynamic=dynamic, backend="aot_eager")(*args(s, t))
    torch.testing.assert_close(compiled, eager)
