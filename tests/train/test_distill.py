"""Distillation method wrappers: teachers from runs, the online pair, the self-distilled models (USKD, LSSKD)."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyfast.harness.loop
from pyfast.harness import ConfigError, TrainConfig, build_run, load_checkpoint, load_trained_model, train
from pyfast.harness.checkpoints import checksum
from pyfast.harness.distributed import World
from pyfast.losses import nkd_loss
from pyfast.methods.distill import OnlinePair
from pyfast.models.resnet import resnet18
from pyfast.registry import DATASETS, METHODS, Entry

REPO = Path(__file__).resolve().parents[2]


def test_teacher_from_a_run_and_its_errors(tmp_path):
    teacher_cfg = TrainConfig(model="resnet18", model_args={"width": 0.125}, epochs=1, batch_size=16,
                              max_steps_per_epoch=1, progress=False, out=str(tmp_path / "t"))
    train(teacher_cfg, log=lambda s: None)
    digits = DATASETS.get("digits").builder()
    model = load_trained_model(tmp_path / "t", digits)
    saved = torch.load(tmp_path / "t" / "last.pt", weights_only=True)["model"]
    assert not model.training and all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="no checkpoint at"):
        load_trained_model(tmp_path / "nothing", digits)
    with pytest.raises(ConfigError, match="trained on 'digits', this run uses 'cifar10'"):
        load_trained_model(tmp_path / "t", dataclasses.replace(digits, name="cifar10"))
    student = TrainConfig(method="kd", model_args={"width": 0.125}, method_args={"teacher": str(tmp_path / "t")})
    run = build_run(student.resolved(), World(), torch.device("cpu"))
    assert not any(k.startswith("teacher") for k in run.model.state_dict())  # the teacher is not the student's
    with pytest.raises(ConfigError, match="teacher must be the run directory"):
        build_run(dataclasses.replace(student, method_args={}).resolved(), World(), torch.device("cpu"))


def test_online_pair_ships_the_student():
    cfg = TrainConfig(method="bd-kd", model_args={"width": 0.125},
                      method_args={"teacher_model": "vgg16", "teacher_model_args": {"width": 0.125}}).resolved()
    run = build_run(cfg, World(), torch.device("cpu"))
    assert isinstance(run.model, OnlinePair)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss, logits = run.method.loss(run.model.train(), x, y)
    loss.backward()
    assert logits.shape == (4, 10)
    assert all(p.grad is not None for p in run.model.teacher.parameters() if p.requires_grad)
    assert torch.equal(run.model.eval()(x), run.model.student(x))


def test_self_distilled_heads_vanish_at_inference():
    cfg = TrainConfig(method="uskd", model_args={"width": 0.25}).resolved()
    run = build_run(cfg, World(), torch.device("cpu"))
    backbone = run.model.inference_model()
    n_backbone = sum(p.numel() for p in backbone.parameters())
    n_all = sum(p.numel() for p in run.model.parameters())
    assert n_all - n_backbone == 64 * 10 + 10  # the weak head: Linear(stage-3 channels = 256 * 0.25, 10 classes)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss, _ = run.method.loss(run.model.train(), x, y)
    loss.backward()
    assert run.model.uskd.fc.weight.grad is not None
    assert torch.equal(run.model.eval()(x), backbone(x))
    with pytest.raises(ConfigError, match="feature_layer 'layer9' is not a submodule"):
        build_run(dataclasses.replace(cfg, method_args={"feature_layer": "layer9"}), World(), torch.device("cpu"))


def test_lsskd_heads_and_bank_vanish_at_inference():
    cfg = TrainConfig(method="lsskd", model_args={"width": 0.125}).resolved()
    run = build_run(cfg, World(), torch.device("cpu"))
    backbone = run.model.inference_model()
    plain = resnet18(10, width=0.125)
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in plain.parameters())
    assert backbone.state_dict().keys() == plain.state_dict().keys()  # no bank, no heads
    assert len(run.model.heads) == 4 and {"bank.probs", "bank.seen"} <= set(run.model.state_dict())
    assert all(h.fc.out_features == 10 * 4 for h in run.model.heads)  # joint (class x rotation) labels
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    run.method.batch(run.data, torch.arange(4), _no_augmentation(), 0)
    loss, logits = run.method.loss(run.model.train(), x, y)
    loss.backward()
    assert logits.shape == (4, 10) and all(p.grad is not None for p in run.model.parameters())
    assert run.model.bank.seen.tolist()[:5] == [True] * 4 + [False]  # this step's predictions are stored
    torch.testing.assert_close(run.model.bank.probs[:4], torch.softmax(logits.detach(), 1))
    out = run.model.eval()(x)
    assert isinstance(out, torch.Tensor) and torch.equal(out, backbone(x))
    assert not backbone.layers[1]._forward_hooks  # the taps live only inside a training forward


def _no_augmentation():
    from pyfast.data import Augmentation

    n = len(DATASETS.get("digits").builder().y_train)
    return Augmentation(torch.zeros(n, 2, dtype=torch.int64), torch.zeros(n, dtype=torch.bool), 0)


@pytest.mark.parametrize("args, message", [
    ({"layers": ["layers.1", "layer9"]}, "layers 'layer9' is not a submodule of ResNet"),
    ({"layers": []}, "layers must be a non-empty list"),
    ({"layers": ["layers.1", "layers.1"]}, "layers must be a non-empty list of distinct"),
    ({"layers": ["fc"]}, r"layers must name modules with \[B, C, H, W\] outputs"),
    ({"tau": 0}, "tau must be a finite number > 0"),
    ({"alpha_max": 1.5}, r"alpha_max must be in \[0, 1\]"),
    ({"rotations": 5}, "rotations must be an integer in 1..4"),
    ({"kd_weght": 1.0}, "unknown option"),
])
def test_lsskd_bad_method_args_name_the_argument(args, message):
    cfg = TrainConfig(method="lsskd", model_args={"width": 0.125}, method_args=args).resolved()
    with pytest.raises(ConfigError, match=message):
        build_run(cfg, World(), torch.device("cpu"))


def test_lsskd_resume_is_exact_with_the_bank(tmp_path, monkeypatch):
    """8 training images in 2 batches of 4: every epoch visits each image, so epoch 2 learns from the bank's epoch-1
    predictions of all of them (alpha = 0.8), and a resume that lost the bank would train differently."""
    digits = DATASETS.get("digits").builder()
    small = digits.subset(torch.arange(8), torch.arange(20))
    monkeypatch.setitem(DATASETS._entries, "digits", Entry("digits", lambda data_dir=None: small, "8 digits"))

    def cfg(out, **kw):
        return TrainConfig(method="lsskd", model_args={"width": 0.125}, method_args={"layers": ["layers.3", "layers.7"]},
                           epochs=2, batch_size=4, progress=False, out=str(out), **kw)

    quiet = {"log": lambda line: None}
    straight = train(cfg(tmp_path / "a"), **quiet)
    real = pyfast.harness.loop.train_epoch

    def stop_in_epoch_2(run, optimizer, scheduler, scaler, epoch, desc):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(run, optimizer, scheduler, scaler, epoch, desc)

    monkeypatch.setattr(pyfast.harness.loop, "train_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "b"), **quiet)
    monkeypatch.setattr(pyfast.harness.loop, "train_epoch", real)
    first = load_checkpoint(tmp_path / "b" / "last.pt")
    assert first["epoch"] == 1 and bool(first["model"]["bank.seen"].all())
    forgetful = dict(first, model={**first["model"], "bank.seen": torch.zeros(8, dtype=torch.bool)})
    forgetful["checksum"] = checksum(forgetful)  # a deliberate edit, not a corruption
    (tmp_path / "c").mkdir()
    torch.save(forgetful, tmp_path / "c" / "last.pt")
    torch.manual_seed(1234)
    resumed = train(cfg(tmp_path / "b", resume=True), **quiet)
    train(cfg(tmp_path / "c", resume=True), **quiet)
    a, b, c = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in "abc")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["train_loss"] for r in straight] == [r["train_loss"] for r in resumed]
    assert not torch.equal(a["backbone.fc.weight"], c["backbone.fc.weight"])  # the bank is what made them equal


def test_lsskd_ddp_ranks_share_one_bank(tmp_path):
    """Two gloo processes: rank 0's checkpointed bank holds the predictions of both ranks' samples."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pyfast",
           "train", "--method", "lsskd", "--model-arg", "width=0.125", "--epochs", "1", "--batch-size", "16",
           "--max-steps-per-epoch", "2", "--no-progress", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "x 2 processes" in proc.stdout
    bank = load_checkpoint(tmp_path / "last.pt")["model"]
    seen = bank["bank.seen"]
    assert int(seen.sum()) == 2 * 16  # 2 steps of a global batch of 16 (8 a rank): both ranks' samples
    torch.testing.assert_close(bank["bank.probs"][seen].sum(1), torch.ones(int(seen.sum())))


def test_nkd_defaults_are_the_official_cifar100_config():
    # specs/methods-2.md §11: ImageNet T=1, gamma=1.5; the CIFAR-100 config (res34 -> res18) T=3, gamma=3.5.
    nkd = METHODS.get("nkd").builder(TrainConfig(method="nkd", method_args={"teacher": "runs/t"}))
    assert nkd.args["temperature"] == 3.0 and nkd.args["gamma"] == 3.5
    student, teacher, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 3, 9, 1])
    expected = torch.nn.functional.cross_entropy(student, y) + nkd_loss(student, teacher, y, 3.0, 3.5)
    torch.testing.assert_close(nkd.distill_loss(student, teacher, y), expected)
