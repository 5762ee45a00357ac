"""LSSKD: joint labels, rotations, the SAD head, the loss (definition, gradients, errors) and the PS-KD bank."""

import functools
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pyfast.losses import (
    EpochTargetBank,
    LSSKDLoss,
    SADHead,
    lsskd_loss,
    marginal_classes,
    rotated_copies,
    sad_labels,
)

B, N, M, L, D = 5, 3, 4, 3, 6
Y = torch.tensor([0, 2, 1, 2, 0])


def inputs(seed=0, grad=False, dtype=torch.float64):
    """Final logits [B, N], L heads' joint logits [B, M, N M] and features [B, M, D], PS-KD targets [B, N]."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, N, generator=g, dtype=dtype) * 2).requires_grad_(grad)
    aux = [(torch.randn(B, M, N * M, generator=g, dtype=dtype) * 2).requires_grad_(grad) for _ in range(L)]
    feats = [torch.randn(B, M, D, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(L)]
    past = torch.softmax(torch.randn(B, N, generator=g, dtype=dtype), 1)
    q = 0.6 * F.one_hot(Y, N).to(dtype) + 0.4 * past
    return z, aux, feats, q


def reference(z, aux, feats, q, tau, w_sad, w_kd, w_ens, w_feat):
    """The docstring's formula, one sample, one head and one rotation at a time (teachers detached)."""
    total = []
    for b in range(B):
        y = int(Y[b])
        ce = -(q[b] * F.log_softmax(z[b], 0)).sum()
        sad = sum(-F.log_softmax(aux[l][b, j], 0)[y * M + j] for l in range(L) for j in range(M)) / M
        kl = sum(F.kl_div(F.log_softmax(aux[l][b, j] / tau, 0), F.softmax(aux[l + 1][b, j].detach() / tau, 0),
                          reduction="sum") for l in range(L - 1) for j in range(M)) / M
        pbar = sum(F.softmax(aux[l][b, 0].detach() / tau, 0).view(N, M).sum(1) for l in range(L)) / L
        ens = F.kl_div(F.log_softmax(z[b] / tau, 0), pbar, reduction="sum")
        feat = sum(((feats[l][b] - feats[l + 1][b].detach()) ** 2).mean() for l in range(L - 1))
        total.append(ce + w_sad * sad + tau * tau * (w_kd * kl + w_ens * ens) + w_feat * feat)
    return torch.stack(total)


def test_sad_label_is_y_times_m_plus_j():
    y = torch.tensor([0, 3, 9])
    assert sad_labels(y, 2, 4).tolist() == [2, 14, 38]
    assert sad_labels(y[:, None], torch.arange(4)[None], 4).tolist() == [[0, 1, 2, 3], [12, 13, 14, 15],
                                                                         [36, 37, 38, 39]]
    assert sad_labels(y, 0, 1).tolist() == y.tolist()
    with pytest.raises(ValueError, match=r"j must be an integer .* in \[0, 4\)"):
        sad_labels(y, 4, 4)
    with pytest.raises(ValueError, match="M must be an integer >= 1"):
        sad_labels(y, 0, 0)
    with pytest.raises(ValueError, match="y must be an int64"):
        sad_labels(y.int(), 0, 4)


def test_rotated_copies_and_rotation_marginals():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    r = rotated_copies(x, 4)
    assert r.shape == (8, 1, 3, 3)
    for j in range(4):
        assert torch.equal(r[2 * j:2 * j + 2], torch.rot90(x, j, (2, 3)))
    assert torch.equal(torch.rot90(r[2:4], 3, (2, 3)), x)  # a quarter turn counter-clockwise, undone by three more
    assert torch.equal(rotated_copies(x, 1), x)
    with pytest.raises(ValueError, match="square images"):
        rotated_copies(torch.zeros(1, 1, 3, 4), 4)
    p = torch.softmax(torch.randn(2, 3 * 4), 1)
    marg = marginal_classes(p, 4)
    torch.testing.assert_close(marg[:, 1], p[:, 4:8].sum(1))
    torch.testing.assert_close(marg.sum(1), torch.ones(2))


def test_sad_head_shapes_and_errors():
    head = SADHead(8, 10, 4, out_ch=16)
    logits, h = head(torch.randn(2, 8, 7, 7), return_features=True)
    assert logits.shape == (2, 40) and h.shape == (2, 16)
    assert head(torch.randn(2, 8, 1, 1)).shape == (2, 40)
    assert SADHead(8, 10).fc.in_features == 8 and SADHead(8, 10, n_trans=1).fc.out_features == 10
    with pytest.raises(ValueError, match=r"features must have shape \[B, 8, H, W\]"):
        head(torch.randn(2, 4, 7, 7))
    with pytest.raises(ValueError, match="n_cls must be an integer >= 2"):
        SADHead(8, 1)


@pytest.mark.parametrize("tau, w_sad, w_kd, w_ens, w_feat", [(3.0, 1.0, 1.0, 1.0, 0.5), (1.5, 0.3, 2.0, 0.4, 0.0)])
def test_loss_matches_its_definition_in_value_and_gradient(tau, w_sad, w_kd, w_ens, w_feat):
    z, aux, feats, q = inputs(grad=True)
    w = {"tau": tau, "sad_weight": w_sad, "kd_weight": w_kd, "ens_weight": w_ens, "feat_weight": w_feat}
    got = lsskd_loss(z, aux, q, Y, **w, aux_features=feats, reduction="none")
    want = reference(z, aux, feats, q, tau, w_sad, w_kd, w_ens, w_feat)
    torch.testing.assert_close(got, want)
    leaves = [z, *aux, *feats]
    g_got = torch.autograd.grad(got.sum(), leaves, allow_unused=True)
    g_want = torch.autograd.grad(want.sum(), leaves, allow_unused=True)
    for leaf, a, b in zip(leaves, g_got, g_want):  # None: no gradient, as a zero one
        zero = torch.zeros_like(leaf)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b)
    torch.testing.assert_close(lsskd_loss(z, aux, q, Y, **w, aux_features=feats), want.mean())
    torch.testing.assert_close(lsskd_loss(z, aux, q, Y, **w, aux_features=feats, reduction="sum"), want.sum())
    torch.testing.assert_close(LSSKDLoss(**w)(z, aux, q, Y, feats), want.mean())


def test_first_epoch_without_heads_weights_is_cross_entropy():
    z, aux, _, _ = inputs()
    onehot = F.one_hot(Y, N).double()
    torch.testing.assert_close(lsskd_loss(z, aux, onehot, Y, sad_weight=0.0, kd_weight=0.0, ens_weight=0.0),
                               F.cross_entropy(z, Y))


def test_float64_gradcheck():
    z, aux, feats, q = inputs(grad=True)
    gradcheck = functools.partial(torch.autograd.gradcheck, fast_mode=True)
    # the final logits are a student in every term they enter: every term on
    assert gradcheck(lambda a: lsskd_loss(a, [x.detach() for x in aux], q, Y, 2.0, 1.0, 1.0, 1.0, 0.5,
                                          [f.detach() for f in feats]), (z,))
    # every head is also a (detached) teacher in the KL terms: check the joint-label terms with those off
    assert gradcheck(lambda *a: lsskd_loss(z.detach(), list(a), q, Y, 2.0, 1.0, 0.0, 0.0), tuple(aux))
    # the shallowest head's features are only a student of the alignment
    rest = [f.detach() for f in feats[1:]]
    assert gradcheck(
        lambda h: lsskd_loss(z.detach(), [x.detach() for x in aux], q, Y, 2.0, 0.0, 0.0, 0.0, 0.7, [h, *rest]),
        (feats[0],))


def test_teachers_get_no_gradient():
    z, aux, feats, q = inputs(grad=True)
    q.requires_grad_(True)
    lsskd_loss(z, aux, q, Y, 3.0, 0.0, 1.0, 1.0, 1.0, feats).backward()
    assert q.grad is None
    for teacher in (aux[-1], feats[-1]):  # the deepest head only teaches (its joint-label term has weight 0)
        assert teacher.grad is None or not teacher.grad.abs().any()
    assert aux[0].grad.abs().sum() > 0 and feats[0].grad.abs().sum() > 0 and z.grad.abs().sum() > 0


@pytest.mark.parametrize("change, message", [
    (lambda a: {"aux_logits": [a["aux_logits"][0][..., :-1]]}, r"aux_logits\[0\] has 11 joint classes, expected 12"),
    (lambda a: {"aux_logits": [a["aux_logits"][0], a["aux_logits"][1][:, :2, :6]]},
     r"aux_logits\[1\] has 2 transformations, expected 4"),
    (lambda a: {"aux_logits": []}, "aux_logits must be a non-empty list"),
    (lambda a: {"aux_logits": a["aux_logits"][0]}, "aux_logits must be a non-empty list"),
    (lambda a: {"aux_logits": [a["aux_logits"][0][:3]]}, r"aux_logits\[0\] has batch 3, expected 5"),
    (lambda a: {"logits": a["logits"][:, :1]}, "logits must have shape"),
    (lambda a: {"tau": float("nan")}, "tau must be a finite number > 0"),
    (lambda a: {"tau": math.inf}, "tau must be a finite number > 0"),
    (lambda a: {"tau": 0.0}, "tau must be a finite number > 0"),
    (lambda a: {"kd_weight": -1.0}, "kd_weight must be a finite number >= 0"),
    (lambda a: {"ens_weight": math.inf}, "ens_weight must be a finite number >= 0"),
    (lambda a: {"sad_weight": float("nan")}, "sad_weight must be a finite number >= 0"),
    (lambda a: {"y": torch.tensor([0, 1, 2, 3, 0])}, r"y must hold class indices in \[0, 3\)"),
    (lambda a: {"y": Y.int()}, "y must be an int64 tensor"),
    (lambda a: {"prev_targets": a["prev_targets"][:, :2]}, r"prev_targets must be a floating tensor \[5, 3\]"),
    (lambda a: {"prev_targets": a["prev_targets"] * 2}, "prev_targets rows must be finite, non-negative probabilities"),
    (lambda a: {"feat_weight": 1.0, "aux_features": None}, "aux_features must be a list of 3 tensors"),
    (lambda a: {"feat_weight": 1.0, "aux_features": [f[..., :2] if i else f for i, f in enumerate(a["aux_features"])]},
     r"aux_features\[1\] must be a floating tensor \[5, 4, D\]"),
    (lambda a: {"reduction": "max"}, "reduction must be one of"),
])
def test_bad_input_is_a_clear_error(change, message):
    z, aux, feats, q = inputs()
    args = {"logits": z, "aux_logits": aux, "prev_targets": q, "y": Y, "tau": 3.0, "feat_weight": 0.0,
            "aux_features": feats}
    args.update(change(args))
    with pytest.raises(ValueError, match=message):
        lsskd_loss(**args)


def test_bank_targets_update_and_state():
    bank = EpochTargetBank(6, 3)
    idx, y = torch.tensor([4, 1]), torch.tensor([2, 0])
    onehot = F.one_hot(y, 3).float()
    torch.testing.assert_close(bank.targets(idx, y, 0.5), onehot)  # nothing stored yet: the label
    p = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    bank.update(idx, p)
    torch.testing.assert_close(bank.targets(idx, y, 0.5), 0.5 * onehot + 0.5 * p)
    torch.testing.assert_close(bank.targets(idx, y, 0.0), onehot)
    mixed = bank.targets(torch.tensor([1, 0]), torch.tensor([0, 1]), 0.8)  # sample 0 has no prediction yet
    torch.testing.assert_close(mixed, torch.tensor([[0.2 + 0.8 * 0.6, 0.8 * 0.3, 0.8 * 0.1], [0.0, 1.0, 0.0]]))
    bank.update(torch.tensor([1]), torch.tensor([[0.0, 0.0, 1.0]]))  # the newest prediction replaces the old
    torch.testing.assert_close(bank.targets(torch.tensor([1]), torch.tensor([0]), 1.0), torch.tensor([[0.0, 0, 1]]))
    assert bank.seen.tolist() == [False, True, False, False, True, False]
    state = bank.state_dict()
    assert set(state) == {"probs", "seen"}
    other = EpochTargetBank(6, 3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.targets(idx, y, 0.5), bank.targets(idx, y, 0.5))


def test_bank_alpha_schedule():
    alphas = [EpochTargetBank.alpha(e, 6) for e in range(6)]
    torch.testing.assert_close(torch.tensor(alphas), 0.8 * torch.arange(1, 7) / 6)
    assert EpochTargetBank.alpha(0, 1, 0.5) == 0.5
    for bad in (-1, 6, 1.0):
        with pytest.raises(ValueError, match=r"epoch must be an integer in \[0, 6\)"):
            EpochTargetBank.alpha(bad, 6)
    with pytest.raises(ValueError, match=r"alpha_max must be in \[0, 1\]"):
        EpochTargetBank.alpha(0, 6, 1.5)


def test_bank_bad_input():
    bank = EpochTargetBank(4, 3)
    with pytest.raises(ValueError, match=r"index must hold sample indices in \[0, 4\)"):
        bank.targets(torch.tensor([4]), torch.tensor([0]), 0.5)
    with pytest.raises(ValueError, match="index must be an int64 tensor"):
        bank.update(torch.tensor([0.0]), torch.ones(1, 3) / 3)
    with pytest.raises(ValueError, match=r"probs must be a floating tensor \[1, 3\]"):
        bank.update(torch.tensor([0]), torch.ones(1, 4) / 4)
    with pytest.raises(ValueError, match="probs must be finite"):
        bank.update(torch.tensor([0]), torch.full((1, 3), math.nan))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        bank.targets(torch.tensor([0]), torch.tensor([0]), 1.5)
    with pytest.raises(ValueError, match=r"y must hold class indices in \[0, 3\)"):
        bank.targets(torch.tensor([0]), torch.tensor([3]), 0.5)
    with pytest.raises(ValueError, match="n_classes must be an integer >= 2"):
        EpochTargetBank(4, 1)


def _bank_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        bank = EpochTargetBank(8, 3)
        index = torch.tensor([rank, 4 + rank])  # each rank its own samples, as a DistributedSampler gives
        bank.update(index, torch.softmax(torch.tensor([[rank, 0.0, 1.0], [0.0, rank + 1.0, 0.0]]), 1))
        torch.save(bank.state_dict(), os.path.join(out_dir, f"bank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_bank_stays_identical_across_ranks(tmp_path):
    init = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_bank_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"bank{r}.pt") for r in range(2))
    assert torch.equal(a["probs"], b["probs"]) and torch.equal(a["seen"], b["seen"])
    assert a["seen"].tolist() == [True, True, False, False, True, True, False, False]  # both ranks' samples
    torch.testing.assert_close(a["probs"][5], torch.softmax(torch.tensor([0.0, 2.0, 0.0]), 0))
