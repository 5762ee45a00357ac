"""Distillation method wrappers: teachers from runs, the online pair, the self-distilled model."""

import dataclasses

import pytest
import torch

from pyfast.methods.distill import OnlinePair
from pyfast.registry import DATASETS
from pyfast.train import ConfigError, TrainConfig, World, build_run, load_trained_model, train


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
