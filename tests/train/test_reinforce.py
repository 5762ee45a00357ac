"""Dataset Reinforcement: replayable augmentations, sparse targets and their loss, `pyfast reinforce` (one atomic,
resumable file) and the `reinforced` training method."""

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyfast import cli
from pyfast.data import Augmentation
from pyfast.data import transforms as T
from pyfast.harness import ConfigError, TrainConfig
from pyfast.harness.files import OutputError, OutputLock
from pyfast.harness.reinforce import PARAM_BLOCK, ReinforceError, fingerprint, load_reinforced, load_teachers, reinforce
from pyfast.harness.rng import epoch_generator
from pyfast.losses import DRLoss, densify, dr_loss, sparsify
from pyfast.registry import DATASETS, METHODS

# --------------------------------------------------------------------------------------------------------------
# sparsify / densify / dr_loss
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 9, 10])
def test_densify_of_sparsify_keeps_the_topk_and_sums_to_one(k):
    g = torch.Generator().manual_seed(k)
    p = torch.softmax(3 * torch.randn(4, 5, 10, generator=g), -1)  # leading dims [4, 5]
    sp = sparsify(p, k)
    assert sp.values.shape == sp.indices.shape == (4, 5, k)
    assert torch.equal(sp.values, p.sort(-1, descending=True).values[..., :k])
    assert torch.equal(p.gather(-1, sp.indices), sp.values)
    dense = densify(sp, 10)
    torch.testing.assert_close(dense.sum(-1), torch.ones(4, 5))
    assert torch.equal(dense.gather(-1, sp.indices), sp.values)  # the top-k keep their probabilities exactly
    rest = dense.scatter(-1, sp.indices, -1.0)
    if k < 10:  # the leftover is spread equally, and no other class outranks the k-th
        others = rest[rest >= 0].view(4, 5, 10 - k)
        torch.testing.assert_close(others, (1 - sp.values.sum(-1, keepdim=True)).expand_as(others) / (10 - k))
        assert (others <= sp.values[..., -1:]).all()
    else:
        torch.testing.assert_close(dense, p)
    top = densify(sp, 10, method="topk")
    torch.testing.assert_close(top.sum(-1), torch.ones(4, 5))
    torch.testing.assert_close(top.gather(-1, sp.indices), sp.values / sp.values.sum(-1, keepdim=True))
    assert (top.scatter(-1, sp.indices, 0.0) == 0).all()


def test_densify_of_values_summing_above_one_is_a_softmax_over_the_topk():
    values, indices = torch.tensor([[0.8, 0.5], [0.6, 0.3]]), torch.tensor([[3, 1], [0, 2]])
    dense = densify((values, indices), 5)
    expected = torch.zeros(2, 5)
    expected[0, [3, 1]] = torch.softmax(values[0], 0)  # r = -0.3: the spec's fallback
    expected[1, [0, 2]] = values[1]  # r = 0.1 over the 3 others
    expected[1, [1, 3, 4]] = 0.1 / 3
    torch.testing.assert_close(dense, expected)


@pytest.mark.parametrize("method", ["smooth", "topk"])
def test_densify_rows_are_distributions_or_refused(method):
    # Reported: rows that did not sum to 1 and kept negative probabilities (negative values, repeated classes, and
    # k = C with values summing below 1).
    g = torch.Generator().manual_seed(0)
    for k, c in ((1, 5), (3, 5), (5, 5), (4, 100)):
        values = torch.rand(6, k, generator=g) * torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 0.0])[:, None]
        indices = torch.stack([torch.randperm(c, generator=g)[:k] for _ in range(6)])
        if method == "topk":
            values[-1] += 0.1  # topk needs a positive mass to renormalise
        dense = densify((values, indices), c, method)
        assert dense.shape == (6, c) and (dense >= 0).all(), dense
        torch.testing.assert_close(dense.sum(-1), torch.ones(6))
    with pytest.raises(ValueError, match="sparse values must be probabilities >= 0"):
        densify((torch.tensor([[0.5, -0.2]]), torch.tensor([[0, 1]])), 4, method)
    with pytest.raises(ValueError, match="must name distinct classes"):
        densify((torch.tensor([[0.5, 0.3]]), torch.tensor([[2, 2]])), 4, method)
    with pytest.raises(ValueError, match="sparse values must be finite"):
        densify((torch.tensor([[0.5, math.nan]]), torch.tensor([[0, 1]])), 4, method)


def test_sparse_targets_bad_input_names_the_argument():
    p = torch.softmax(torch.randn(2, 4), 1)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
        sparsify(p, 5)
    with pytest.raises(ValueError, match="k must be"):
        sparsify(p, 0)
    with pytest.raises(ValueError, match="p must be a floating-point"):
        sparsify(torch.ones(2, 4, dtype=torch.int64), 2)
    sp = sparsify(p, 2)
    with pytest.raises(ValueError, match="num_classes must be an integer >= k = 2"):
        densify(sp, 1)
    with pytest.raises(ValueError, match="method must be one of smooth, topk"):
        densify(sp, 4, method="zeros")
    with pytest.raises(ValueError, match=r"sparse indices must lie in \[0, 4\)"):
        densify((sp.values, sp.indices + 3), 4)
    with pytest.raises(ValueError, match="sparse indices must be an integer tensor"):
        densify((sp.values, sp.indices.float()), 4)
    with pytest.raises(ValueError, match="sparse values must be finite"):
        densify((sp.values * math.nan, sp.indices), 4)


def test_dr_loss_is_batchmean_kl_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    target = densify(sparsify(torch.softmax(torch.randn(6, 7, generator=g, dtype=torch.float64), 1), 3), 7)
    loss = dr_loss(logits, target)
    torch.testing.assert_close(loss, F.kl_div(F.log_softmax(logits, 1), target, reduction="batchmean"))
    loss.backward()
    torch.testing.assert_close(logits.grad, (torch.softmax(logits, 1) - target).detach() / 6)
    assert dr_loss(logits, target, "none").shape == (6,)
    torch.testing.assert_close(DRLoss("sum")(logits, target), loss * 6)
    assert dr_loss(target.log() + 2.0, target).abs() < 1e-12  # zero at softmax(logits) = target
    one_hot = F.one_hot(torch.arange(6), 7).double()  # 0 log 0 = 0: cross-entropy on one-hot targets
    torch.testing.assert_close(dr_loss(logits, one_hot), F.cross_entropy(logits, torch.arange(6)))
    bf16 = dr_loss(logits.detach().bfloat16(), target)
    assert bf16.dtype == torch.float32 and bf16.isfinite()


@pytest.mark.parametrize("target, message", [
    (torch.full((3, 4), 0.25)[:, :3], "target must be a floating-point tensor of the logits' shape"),
    (torch.full((3, 4), 0.5), "summing to 1"),
    (torch.tensor([[1.5, -0.5, 0.0, 0.0]] * 3), "non-negative"),
    (torch.ones(3, 4, dtype=torch.int64), "floating-point"),
])
def test_dr_loss_bad_target(target, message):
    with pytest.raises(ValueError, match=message):
        dr_loss(torch.randn(3, 4), target)
    with pytest.raises(ValueError, match="reduction must be one of"):
        DRLoss("batchmean")


# --------------------------------------------------------------------------------------------------------------
# Replayable augmentations
# --------------------------------------------------------------------------------------------------------------


def _images(n: int, seed: int = 0, channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _row(**fields) -> torch.Tensor:
    """One parameter row: every field 0 (the identity) except those given (ops by name)."""
    row = torch.zeros(T.NUM_FIELDS, dtype=torch.int16)
    for name, value in fields.items():
        row[T.FIELDS.index(name)] = T.OPS.index(value) if name in ("op1", "op2") else value
    return row


def test_sampled_params_are_seeded_valid_and_cover_every_op():
    shape = (3, 32, 32)

    def draw(seed, hflip=True, erase_p=0.25):
        return T.sample_params(4000, shape, crop_padding=4, hflip=hflip, magnitude=9, erase_p=erase_p,
                               generator=torch.Generator().manual_seed(seed))

    p = draw(0)
    assert p.dtype == torch.int16 and p.shape == (4000, T.NUM_FIELDS)
    assert torch.equal(p, draw(0)) and not torch.equal(p, draw(1))
    T.check_params(p, shape)
    f = {name: p[:, i].long() for i, name in enumerate(T.FIELDS)}
    assert f["crop_dy"].min() == -4 and f["crop_dy"].max() == 4
    assert 0.45 < f["flip"].float().mean() < 0.55 and not draw(0, hflip=False)[:, 2].any()
    assert 0.22 < f["erase"].float().mean() < 0.28 and not draw(0, erase_p=0.0)[:, 7:].any()
    area = (f["erase_h"] * f["erase_w"])[f["erase"] == 1].float() / 1024
    assert area.min() >= 0.015 and area.max() <= 0.35
    assert set(f["op1"].tolist()) == set(range(len(T.OPS))) == set(f["op2"].tolist())
    signed = torch.isin(f["op1"], torch.tensor([T.OPS.index(o) for o in T.SIGNED_OPS]))
    assert set(f["level1"][signed].tolist()) == {-9, 9}
    assert set(f["level1"][f["op1"] == T.OPS.index("solarize")].tolist()) == {9}
    assert set(f["level1"][f["op1"] == T.OPS.index("equalize")].tolist()) == {0}


def test_replay_is_bit_exact_in_any_batch_order_and_split():
    x = _images(300)
    p = T.sample_params(300, (3, 32, 32), crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(3))
    y = T.apply(x, p)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(T.apply(x[perm], p[perm]), y[perm])
    assert torch.equal(torch.cat([T.apply(x[i:i + 7], p[i:i + 7]) for i in range(0, 300, 7)]), y)
    assert torch.equal(T.apply(x[5:6], p[5:6].int()), y[5:6])  # any integer dtype
    assert y.dtype == torch.uint8 and not torch.equal(y, x)


def test_each_op_does_what_its_table_says():
    x = _images(1)
    identity = T.apply(x, _row()[None])
    assert torch.equal(identity, x)
    shifted = T.apply(x, _row(crop_dy=2, crop_dx=-3)[None])
    assert torch.equal(shifted[..., :30, 3:], x[..., 2:, :29]) and not shifted[..., 30:, :].any()
    assert not shifted[..., :3].any()
    assert torch.equal(T.apply(x, _row(flip=1)[None]), x.flip(3))
    moved = T.apply(x, _row(op1="translate_x", level1=9)[None])  # floor(9 * 150 * 32 / 9930) = 4 pixels right
    assert torch.equal(moved[..., 4:], x[..., :-4]) and not moved[..., :4].any()
    moved = T.apply(x, _row(op2="translate_y", level2=-30)[None])  # 14 pixels up
    assert torch.equal(moved[..., :-14, :], x[..., 14:, :])
    for op in ("shear_x", "shear_y", "rotate"):  # nearest neighbour: only pixels of the image, or the 0 fill
        y = T.apply(x, _row(op1=op, level1=-20)[None])
        assert not torch.equal(y, x)
        flat = y.view(3, -1)
        assert all(torch.isin(flat[c][flat[c] > 0], x[0, c]).all() for c in range(3))
    flat = torch.full((1, 3, 32, 32), 77, dtype=torch.uint8)  # a constant image: rotation keeps its middle
    assert (T.apply(flat, _row(op1="rotate", level1=30)[None])[..., 8:24, 8:24] == 77).all()
    xi = x.int()
    assert torch.equal(T.apply(x, _row(op1="brightness", level1=-30)[None]).int(), (xi + 5) // 10)  # round(x/10)
    assert torch.equal(T.apply(x, _row(op1="posterize", level1=30)[None]), x & 0xF0)  # 4 bits kept
    assert torch.equal(T.apply(x, _row(op1="solarize", level1=30)[None]), 255 - x)  # threshold 0
    assert torch.equal(T.apply(x, _row(op1="solarize", level1=0)[None]).int(), torch.where(xi >= 255, 0, xi))
    grey = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    assert torch.equal(T.apply(grey, _row(op1="color", level1=30)[None]), grey)  # no colour to enhance
    assert (T.apply(flat, _row(op1="sharpness", level1=30)[None]) == 77).all()
    assert (T.apply(flat, _row(op1="contrast", level1=-30)[None]) == 77).all()
    dim = (x // 4 + 50).contiguous()
    stretched = T.apply(dim, _row(op1="autocontrast")[None])
    assert (stretched.amin((2, 3)) == 0).all() and (stretched.amax((2, 3)) == 255).all()
    equalized = T.apply(dim, _row(op1="equalize")[None]).long()
    order = dim.view(3, -1).long().argsort(1)  # equalisation is monotone and spreads the levels over 0..255
    assert (equalized.view(3, -1).gather(1, order).diff(1) >= 0).all() and (equalized.amax((2, 3)) > 240).all()
    erased = T.apply(x, _row(erase=1, erase_top=2, erase_left=5, erase_h=3, erase_w=4, fill0=1, fill1=2,
                             fill2=3)[None])
    assert torch.equal(erased[0, :, 2:5, 5:9], torch.tensor([1, 2, 3], dtype=torch.uint8).view(3, 1, 1).expand(3, 3, 4))
    erased[0, :, 2:5, 5:9] = x[0, :, 2:5, 5:9]
    assert torch.equal(erased, x)


def test_one_channel_images_replay():
    x = _images(50, channels=1)
    p = T.sample_params(50, (1, 32, 32), crop_padding=2, hflip=False, generator=torch.Generator().manual_seed(0))
    assert not p[:, 13:].any()
    assert torch.equal(T.apply(x.flip(0), p.flip(0)), T.apply(x, p).flip(0))


def test_replay_bad_input_names_the_argument():
    x, good = _images(2), torch.stack([_row(), _row()])
    with pytest.raises(ValueError, match="images must be a uint8 tensor"):
        T.apply(x.float(), good)
    with pytest.raises(ValueError, match=r"params must be an integer tensor \[B, 15\]"):
        T.apply(x, good[:, :14])
    with pytest.raises(ValueError, match=r"params must be an integer tensor"):
        T.apply(x, good.float())
    with pytest.raises(ValueError, match="params has 2 rows for 1 images"):
        T.apply(x[:1], good)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        T.apply(_images(2, channels=2), good)
    for bad, what in ((_row(op1="rotate", level1=31), "level out of range"), (_row(op1="posterize", level1=-3), ">= 0"),
                      (_row(erase=1, erase_top=30, erase_h=4, erase_w=1), "erasing box outside"),
                      (_row(crop_dx=40), "crop shifts"), (_row(flip=2), "flags"), (_row(fill2=300), "fill colour")):
        with pytest.raises(ValueError, match=what):
            T.apply(x, torch.stack([good[0], bad]))
    with pytest.raises(ValueError, match="magnitude must be an integer in"):
        T.sample_params(2, (3, 32, 32), crop_padding=4, hflip=True, magnitude=31)
    with pytest.raises(ValueError, match="crop_padding must be"):
        T.sample_params(2, (3, 32, 32), crop_padding=-1, hflip=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_replay_on_cuda_matches_the_cpu_bit_for_bit():
    x = _images(500)
    p = T.sample_params(500, (3, 32, 32), crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(T.apply(x.cuda(), p.cuda()).cpu(), T.apply(x, p))


# --------------------------------------------------------------------------------------------------------------
# pyfast reinforce
# --------------------------------------------------------------------------------------------------------------


class Recorder(nn.Module):
    """A small deterministic teacher that keeps every input it sees (and can stop the run after ``stop_after``
    calls, like a Ctrl-C)."""

    def __init__(self, seed: int, num_classes: int = 10, stop_after: int | None = None):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                     nn.Linear(16, num_classes))
        self.inputs, self.stop_after = [], stop_after

    def forward(self, x):
        if self.stop_after is not None and len(self.inputs) >= self.stop_after:
            raise KeyboardInterrupt
        self.inputs.append(x.clone())
        return 4 * self.net(x)


@pytest.fixture(scope="module")
def digits():
    return DATASETS.get("digits").builder()


@pytest.fixture(scope="module")
def small(digits):
    """150 digits: three augmentation blocks (64, 64, 22 images)."""
    assert PARAM_BLOCK == 64
    return digits.subset(torch.arange(150))


def _quiet(**kw):
    return dict(progress=False, log=lambda line: None, **kw)


def test_reinforce_stores_params_and_ensemble_topk_of_the_replayed_images(tmp_path, small):
    teachers = [Recorder(0), Recorder(1)]
    rd = reinforce(small, teachers, tmp_path / "d.pt", samples=3, topk=4, seed=5, batch_size=100, **_quiet())
    assert rd.params.shape == (150, 3, T.NUM_FIELDS) and rd.indices.shape == rd.probs.shape == (150, 3, 4)
    assert rd.indices.dtype == torch.int16 and rd.probs.dtype == torch.float32
    loaded = load_reinforced(tmp_path / "d.pt", small)
    assert loaded.meta == rd.meta and torch.equal(loaded.probs, rd.probs) and torch.equal(loaded.params, rd.params)
    assert rd.meta["fingerprint"] == fingerprint(small) and rd.meta["samples"] == 3 and rd.meta["topk"] == 4
    assert rd.meta["augmentation"] == {"crop_padding": 4, "hflip": False, "magnitude": 9, "erase_p": 0.25}
    assert not any(p.name.endswith((".partial", ".tmp")) for p in tmp_path.iterdir())

    # What the teachers saw (image-major, in batches of 100) is what the stored params replay, bit for bit, in
    # another order and batch.
    seen = torch.cat(teachers[0].inputs).view(150, 3, 3, 32, 32)
    assert torch.equal(torch.cat(teachers[1].inputs), seen.flatten(0, 1))
    order = torch.randperm(450, generator=torch.Generator().manual_seed(0))
    img, s = order // 3, order % 3
    replayed = small.normalize(T.apply(small.x_train[img], rd.params[img, s].long()))
    assert torch.equal(replayed, seen[img, s])
    with torch.no_grad():
        p = (torch.softmax(teachers[0](seen[:2, 1]), 1) + torch.softmax(teachers[1](seen[:2, 1]), 1)) / 2
    torch.testing.assert_close(rd.probs[:2, 1], p.topk(4).values)
    assert torch.equal(rd.indices[:2, 1].long(), p.topk(4).indices)
    assert (rd.probs.diff(dim=-1) <= 0).all() and rd.probs.sum(-1).max() <= 1 + 1e-6


def test_reinforce_resumes_after_an_interruption_to_the_same_file(tmp_path, small):
    kw = dict(samples=2, topk=3, seed=1, batch_size=48, **_quiet())
    whole = reinforce(small, [Recorder(0), Recorder(1)], tmp_path / "whole.pt", **kw)
    out = tmp_path / "run.pt"
    stopping = [Recorder(0, stop_after=4), Recorder(1)]  # 128 images per block, 3 batches: stops in block 2
    with pytest.raises(KeyboardInterrupt):
        reinforce(small, stopping, out, save_interval=0.0, **kw)
    assert not out.exists() and (tmp_path / "run.pt.partial").is_file()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    saved = torch.load(tmp_path / "run.pt.partial", weights_only=True)
    assert saved["done"] == 64 and saved["params"].shape[0] == 64

    with pytest.raises(ReinforceError, match=r"cannot resume from .*samples=2 \(now 3\)"):
        reinforce(small, [Recorder(0), Recorder(1)], out, **{**kw, "samples": 3})
    other = dataclasses.replace(small, x_train=small.x_train.clone())
    other.x_train[0, 0, 0, 0] ^= 1
    with pytest.raises(ReinforceError, match="other training images"):
        reinforce(other, [Recorder(0), Recorder(1)], out, **kw)

    resumed = [Recorder(0), Recorder(1)]
    logs = []
    result = reinforce(small, resumed, out, **{**kw, "log": logs.append})
    assert f"resuming {tmp_path / 'run.pt.partial'} after 64 of 150 images" in logs
    assert sum(len(x) for x in resumed[0].inputs) == (150 - 64) * 2  # only the rest was computed
    assert not (tmp_path / "run.pt.partial").exists()
    final, reference = (torch.load(p, weights_only=True) for p in (out, tmp_path / "whole.pt"))
    assert final["meta"] == reference["meta"] and result.meta == whole.meta
    for name in ("params", "indices", "probs"):
        assert torch.equal(final[name], reference[name]), name

    assert reinforce(small, [Recorder(0), Recorder(1)], out, **kw).meta == whole.meta  # complete: nothing to do
    with pytest.raises(ReinforceError, match=r"--out .* already holds .*topk=3 \(now 2\)"):
        reinforce(small, [Recorder(0), Recorder(1)], out, **{**kw, "topk": 2})


def test_reinforce_overwrite_starts_over_and_a_second_process_is_refused(tmp_path, small):
    kw = dict(samples=2, topk=3, seed=1, batch_size=48, **_quiet())
    out = tmp_path / "d.pt"
    reinforce(small, [Recorder(0)], out, **kw)
    replaced = reinforce(small, [Recorder(0)], out, **{**kw, "topk": 2, "overwrite": True})
    assert replaced.meta["topk"] == 2 and load_reinforced(out).meta["topk"] == 2
    with pytest.raises(KeyboardInterrupt):
        reinforce(small, [Recorder(0, stop_after=4)], tmp_path / "p.pt", save_interval=0.0, **kw)
    started_over = [Recorder(0)]
    reinforce(small, started_over, tmp_path / "p.pt", **{**kw, "samples": 3, "overwrite": True})
    assert sum(len(x) for x in started_over[0].inputs) == 150 * 3  # nothing reused from the other partial
    with OutputLock(out, "--out", directory=False), pytest.raises(OutputError, match="in use by another"):
        reinforce(small, [Recorder(0)], out, **kw)
    with pytest.raises(ReinforceError, match="is a directory"):
        reinforce(small, [Recorder(0)], tmp_path, **kw)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f["probs"][3, 1].__setitem__(0, float("nan")), r"probs\[3, 1, 0\] is nan, not a probability"),
    (lambda f: f["probs"][0, 0].__setitem__(1, -0.1), r"probs\[0, 0, 1\] is -0.1"),
    (lambda f: f["probs"][2, 0].fill_(0.5), "image 2, sample 0 sum to 1.500000 > 1"),
    (lambda f: f["indices"][1, 1].__setitem__(0, 10), r"class indices must be in 0\.\.9"),
])
def test_a_damaged_reinforced_file_is_refused_when_opened(tmp_path, small, damage, message):
    reinforce(small, [Recorder(0)], tmp_path / "d.pt", samples=2, topk=3, **_quiet())
    saved = torch.load(tmp_path / "d.pt", weights_only=True)
    damage(saved)
    torch.save(saved, tmp_path / "d.pt")
    with pytest.raises(ReinforceError, match=message):
        load_reinforced(tmp_path / "d.pt", small)


def test_reinforce_bad_input_names_the_argument(tmp_path, small):
    teachers = [Recorder(0)]
    for kw, message in ((dict(topk=11), "--topk 11 is larger than the number of classes of digits"),
                        (dict(samples=0), "--samples must be an integer >= 1"),
                        (dict(magnitude=31), "--magnitude must be an integer in"),
                        (dict(erase_p=1.5), "--erase-p must be a number in")):
        with pytest.raises(ReinforceError, match=message):
            reinforce(small, teachers, tmp_path / "d.pt", **kw, **_quiet())
    with pytest.raises(ReinforceError, match="--teacher: give at least one"):
        reinforce(small, [], tmp_path / "d.pt", **_quiet())
    with pytest.raises(ReinforceError, match=r"--teacher: the teachers give outputs of shape \(256, 7\)"):
        reinforce(small, [Recorder(0, num_classes=7)], tmp_path / "d.pt", **_quiet())
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ReinforceError, match="unreadable"):
        load_reinforced(tmp_path / "junk.pt")
    with pytest.raises(ReinforceError, match="no reinforced file at"):
        load_reinforced(tmp_path / "missing.pt")
    with pytest.raises(ReinforceError, match="--teacher .*nothing: no checkpoint at"):
        load_teachers([str(tmp_path / "nothing")], small)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert cli.main(["train", "--model", "resnet18", "--model-arg", "width=0.125", "--epochs", "1", "--batch-size",
                     "16", "--max-steps-per-epoch", "2", "--out", str(out), "--no-progress"]) == 0
    return out


def test_cli_reinforce_then_train_on_it(tmp_path, capsys, teacher_run, digits):
    out = tmp_path / "digits.dr"
    argv = ["reinforce", "--teacher", str(teacher_run), "--samples", "1", "--topk", "3", "--out", str(out),
            "--batch-size", "512", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    assert f"-> {out}" in capsys.readouterr().out
    rd = load_reinforced(out, digits)
    assert rd.meta["teachers"][0]["path"] == str((teacher_run / "last.pt").resolve())
    assert rd.meta["teachers"][0]["model"] == "resnet18" and rd.probs.shape == (len(digits.y_train), 1, 3)
    assert cli.main(["train", "--method", "reinforced", "--model-arg", "width=0.125", "--method-arg",
                     f"reinforced={out}", "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "2",
                     "--out", str(tmp_path / "student"), "--no-progress"]) == 0
    assert "final test_acc" in capsys.readouterr().out

    for bad, message in ((["--topk", "11"], "--topk 11 is larger"), (["--samples", "0"], "argument --samples"),
                         (["--data", "mnist"], "argument --data: must be one of"),
                         (["--teacher", str(tmp_path / "none")], "--teacher .*none: no checkpoint")):
        with pytest.raises(SystemExit) as exc:
            cli.main([*argv, *bad])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "Traceback" not in err
        assert re.search(message, err), err
    with pytest.raises(ReinforceError, match="trained on 'digits', this run uses 'cifar10'"):
        load_teachers([str(teacher_run)], dataclasses.replace(digits, name="cifar10"))


def test_cli_reinforce_ctrl_c_says_how_to_continue(tmp_path, capsys, monkeypatch, teacher_run):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pyfast.cli.reinforce", interrupted)
    out = tmp_path / "d.pt"
    assert cli.main(["reinforce", "--teacher", str(teacher_run), "--out", str(out), "--no-progress"]) == 130
    assert f"saved in {out}.partial: rerun the same command to continue" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# The reinforced training method
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, small):
    path = tmp_path_factory.mktemp("dr") / "small.pt"
    teachers = [Recorder(0), Recorder(1)]
    reinforce(small, teachers, path, samples=3, topk=4, seed=2, batch_size=150, **_quiet())
    return path, torch.cat(teachers[0].inputs).view(150, 3, 3, 32, 32)


def _method(small, path, **args):
    cfg = TrainConfig(method="reinforced", seed=3, method_args={"reinforced": str(path), **args})
    method = METHODS.get("reinforced").builder(cfg)
    method.data = small
    method.prepare_model(nn.Identity())
    return method


def _augment(small, epoch=0):
    return Augmentation.draw(150, small.crop_padding, small.hflip, epoch_generator(3, epoch, 1))


def test_method_replays_what_the_teachers_saw_with_their_targets(small, small_file):
    path, seen = small_file
    method = _method(small, path, p_replay=1.0)
    index = torch.randperm(150, generator=torch.Generator().manual_seed(1))[:40]
    x, y = method.batch(small, index, _augment(small), epoch=0)
    assert torch.equal(y, small.y_train[index])
    rd = load_reinforced(path)
    sample = method._draws[2][index]
    assert torch.equal(x, seen[index, sample])  # bit for bit the teachers' inputs
    target = densify((rd.probs[index, sample], rd.indices[index, sample]), 10)
    assert torch.equal(method._target, target)
    logits = torch.randn(40, 10)
    loss, out = method.loss(lambda _: logits, x, y)
    assert out is logits and torch.equal(loss, dr_loss(logits, target))
    assert len(set(method._draws[2].tolist())) == 3  # every stored sample gets replayed


def test_method_choices_are_per_image_and_p_replay_0_is_plain_training(small, small_file):
    path, _ = small_file
    method = _method(small, path, p_replay=0.5, densify="topk")
    index, augment = torch.randperm(150)[:60], _augment(small, epoch=2)
    x, _ = method.batch(small, index, augment, epoch=2)
    target = method._target
    halves = [method.batch(small, part, augment, epoch=2) for part in index.split(25)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x)  # independent of the batch size
    _, _ = method.batch(small, index, augment, epoch=2)
    assert torch.equal(method._target, target)
    replay = method._draws[1][index]
    assert 10 < replay.sum() < 50
    one_hot = F.one_hot(small.y_train[index], 10).float()
    assert torch.equal(target[~replay], one_hot[~replay]) and not torch.equal(target[replay], one_hot[replay])
    method.batch(small, index, augment, epoch=3)
    assert not torch.equal(method._draws[1][index], replay)  # a new epoch, new choices

    plain = _method(small, path, p_replay=0.0)
    x, _ = plain.batch(small, index, augment, epoch=2)
    assert torch.equal(x, small.normalize(augment.apply(small.x_train[index], index)))
    assert torch.equal(plain._target, one_hot)


def test_method_refuses_other_data_and_bad_args(small, small_file, digits):
    path, _ = small_file
    with pytest.raises(ReinforceError, match="holds 150 images of 10 classes; digits has 1437"):
        _method(digits, path)
    other = dataclasses.replace(small, x_train=small.x_train.flip(0).contiguous())
    with pytest.raises(ReinforceError, match="made from other digits training images"):
        _method(other, path)
    for args, message in (({"p_replay": 1.5}, "p_replay must be a number in"),
                          ({"densify": "zeros"}, "densify must be one of smooth, topk"),
                          ({"reinforced": None}, "reinforced must be the file written by")):
        with pytest.raises(ValueError, match=message):
            METHODS.get("reinforced").builder(TrainConfig(method="reinforced",
                                                          method_args={"reinforced": str(path), **args}))
    with pytest.raises(ValueError, match="label_smoothing=0.1 does not apply"):
        METHODS.get("reinforced").builder(TrainConfig(method="reinforced", label_smoothing=0.1,
                                                      method_args={"reinforced": str(path)}))
    from pyfast.harness import build_run
    from pyfast.harness.distributed import World

    cfg = TrainConfig(method="reinforced", model_args={"width": 0.125}, method_args={"reinforced": str(path)})
    with pytest.raises(ConfigError, match="method 'reinforced': .*holds 150 images"):
        build_run(cfg.resolved(), World(), torch.device("cpu"))
    method = _method(small, path)
    with pytest.raises(RuntimeError, match="needs the targets of the batch"):
        method.loss(lambda x: x, torch.randn(2, 10), torch.zeros(2, dtype=torch.int64))
