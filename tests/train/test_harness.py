"""The training loop: resume, stages, checkpoints, metrics files, configuration errors."""

import dataclasses
import json
import os

import pytest
import torch

import pyfast.harness.loop
from pyfast.harness import (
    CheckpointError,
    ConfigError,
    TrainConfig,
    config_from_dict,
    load_checkpoint,
    load_config_file,
    train,
)
from pyfast.harness.files import atomic_write
from pyfast.harness.rng import epoch_generator

QUIET = {"log": lambda line: None}


def tiny(out, **kw) -> TrainConfig:
    """A run of about a second an epoch: a small SNN, 3 batches of 16 an epoch."""
    base = {"model": "snn-small", "model_args": {"T": 2}, "batch_size": 16, "max_steps_per_epoch": 3,
            "progress": False, "out": str(out)}
    return TrainConfig(**{**base, **kw})


def same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def timeless(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history]


def test_epoch_generator_depends_on_its_arguments_only():
    perm = [torch.randperm(100, generator=epoch_generator(*a)) for a in ((0, 0), (0, 0), (0, 1), (1, 0), (0, 0, 1))]
    assert torch.equal(perm[0], perm[1])
    assert not any(torch.equal(perm[0], p) for p in perm[2:])


def interrupt_at_epoch(monkeypatch, epoch: int) -> None:
    """Make the next run raise KeyboardInterrupt (Ctrl-C) in the middle of its epoch ``epoch`` (1-based)."""
    calls = []
    real = pyfast.harness.loop.train_epoch

    def train_epoch(run, optimizer, scheduler, scaler, index, desc):
        calls.append(index)
        if index + 1 == epoch:
            raise KeyboardInterrupt
        return real(run, optimizer, scheduler, scaler, index, desc)

    monkeypatch.setattr(pyfast.harness.loop, "train_epoch", train_epoch)


def interrupted_then_resumed(monkeypatch, cfg: TrainConfig, epoch: int) -> list[dict]:
    interrupt_at_epoch(monkeypatch, epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, **QUIET)
    assert load_checkpoint(os.path.join(cfg.out, "last.pt"))["epoch"] == epoch - 1  # the last full epoch survived
    monkeypatch.undo()
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it from the checkpoint
    return train(dataclasses.replace(cfg, resume=True), **QUIET)


def test_resume_after_ctrl_c_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    straight = train(tiny(tmp_path / "a", epochs=2), **QUIET)
    resumed = interrupted_then_resumed(monkeypatch, tiny(tmp_path / "b", epochs=2), epoch=2)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    same_weights(a["model"], b["model"])
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["scheduler"] == b["scheduler"] and torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert timeless(straight) == timeless(resumed) and len(resumed) == 2
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_one_epoch_then_resume_with_more_epochs_equals_two_straight(tmp_path):
    """The issue's form: --epochs 1, then --epochs 2 --resume. With a constant schedule the learning rate does not
    depend on the planned length, so the runs must agree bit for bit (a cosine schedule stretches when epochs grow)."""
    straight = train(tiny(tmp_path / "a", epochs=2, schedule="constant"), **QUIET)
    train(tiny(tmp_path / "b", epochs=1, schedule="constant"), **QUIET)
    torch.manual_seed(99)
    resumed = train(tiny(tmp_path / "b", epochs=2, schedule="constant", resume=True), **QUIET)
    same_weights(load_checkpoint(tmp_path / "a" / "last.pt")["model"],
                 load_checkpoint(tmp_path / "b" / "last.pt")["model"])
    assert timeless(straight) == timeless(resumed)


def test_amp_on_cpu_trains_in_bfloat16(tmp_path, monkeypatch):
    seen = []
    real = torch.nn.Conv2d.forward

    def spy(self, x):
        out = real(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
    history = train(tiny(tmp_path, epochs=1, amp=True, model="resnet18", model_args={"width": 0.125}), **QUIET)
    assert torch.bfloat16 in seen and history[0]["train_loss"] < 10
    assert all(v.dtype == torch.float32 for v in load_checkpoint(tmp_path / "last.pt")["model"].values()
               if v.is_floating_point())  # fp32 master weights


@pytest.mark.parametrize("stop", [3, 4])  # at the boundary between the stages, and inside the second one
def test_multi_stage_resume(tmp_path, monkeypatch, stop):
    cfg = {"method": "iir-snn", "model_args": {}, "method_args": {"timesteps": [3, 1]}, "optimizer": "adam",
           "lr": 1e-3, "epochs": 2}
    straight = train(tiny(tmp_path / "a", **cfg), **QUIET)
    assert [r["stage"] for r in straight] == ["T=3", "T=3", "T=1", "T=1"]
    assert straight[2]["lr"] == straight[0]["lr"]  # a fresh schedule for each stage
    resumed = interrupted_then_resumed(monkeypatch, tiny(tmp_path / "b", **cfg), epoch=stop)
    assert timeless(resumed) == timeless(straight)
    same_weights(load_checkpoint(tmp_path / "a" / "last.pt")["model"],
                 load_checkpoint(tmp_path / "b" / "last.pt")["model"])


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    train(tiny(tmp_path, epochs=1), **QUIET)
    with pytest.raises(ConfigError, match=r"lr=0.002 \(now 0.1\)"):
        train(tiny(tmp_path, epochs=2, lr=0.1, resume=True), **QUIET)


def test_resume_when_done_or_missing(tmp_path):
    lines = []
    train(tiny(tmp_path / "x", epochs=1, resume=True), log=lines.append)
    assert any("starting from scratch" in line for line in lines)
    assert train(tiny(tmp_path / "x", epochs=1, resume=True), log=lines.append)[0]["epoch"] == 1
    assert "nothing to do" in lines[-1]


def test_a_corrupted_checkpoint_is_a_clear_error(tmp_path):
    train(tiny(tmp_path, epochs=1), **QUIET)
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable.*truncated, corrupted"):
        train(tiny(tmp_path, epochs=2, resume=True), **QUIET)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="not a pyfast training checkpoint"):
        train(tiny(tmp_path, epochs=2, resume=True), **QUIET)


def test_checkpoint_is_never_left_half_written(tmp_path, monkeypatch):
    train(tiny(tmp_path, epochs=1), **QUIET)
    before = (tmp_path / "last.pt").read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space left"):
        train(tiny(tmp_path, epochs=2, resume=True), **QUIET)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    monkeypatch.undo()  # and the run continues from epoch 1
    assert [r["epoch"] for r in train(tiny(tmp_path, epochs=2, resume=True), **QUIET)] == [1, 2]


def test_run_files(tmp_path):
    history = train(tiny(tmp_path, epochs=2, label_smoothing=0.1), **QUIET)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == "snn-small" and config["data"] == "digits" and config["label_smoothing"] == 0.1
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,stage,lr,train_loss") and len(csv_lines) == 3
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert history[1]["lr"] < history[0]["lr"]  # cosine schedule


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"old"))
    atomic_write(target, lambda f: f.write(b"new contents"))
    assert target.read_bytes() == b"new contents"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the umask's permissions, not mkstemp's 0600


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("lr", float("nan")), ("lr", 0.0), ("batch_size", 0), ("model", "nope"), ("backend", "gpu"),
    ("method", "magic"), ("data", "imagenet"), ("optimizer", "lion"), ("momentum", 1.5), ("label_smoothing", -0.1),
    ("model_args", [1]), ("batch_size", 5000),
])
def test_train_rejects_bad_config(tmp_path, field, value):
    with pytest.raises(ConfigError, match=field):
        train(tiny(tmp_path, **{field: value}), **QUIET)
    assert not (tmp_path / "last.pt").exists()


def test_bad_model_and_method_options_are_named(tmp_path):
    with pytest.raises(ConfigError, match="model_args.*depth"):
        train(tiny(tmp_path, model_args={"depth": 3}), **QUIET)
    with pytest.raises(ConfigError, match="method_args: unknown option.*warp"):
        train(tiny(tmp_path, method="iir-snn", method_args={"warp": 1}), **QUIET)
    with pytest.raises(ConfigError, match="timesteps"):
        train(tiny(tmp_path, method="iir-snn", method_args={"timesteps": [0]}), **QUIET)


def test_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 3\nbatch-size: 32\nmodel_args: {width: 0.5}\n")
    (tmp_path / "a.toml").write_text("epochs = 3\nbatch_size = 32\n[model_args]\nwidth = 0.5\n")
    (tmp_path / "a.json").write_text('{"epochs": 3, "batch_size": 32, "model_args": {"width": 0.5}}')
    for name in ("a.yaml", "a.toml", "a.json"):
        cfg = config_from_dict(load_config_file(tmp_path / name))
        assert (cfg.epochs, cfg.batch_size, cfg.model_args) == (3, 32, {"width": 0.5}), name
    (tmp_path / "bad.yaml").write_text("epochs: [3\n")
    with pytest.raises(ConfigError, match="does not parse"):
        load_config_file(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="unknown config key.*epoch_count"):
        config_from_dict({"epoch_count": 3})
    with pytest.raises(ConfigError, match="unknown format"):
        load_config_file(tmp_path / "a.ini") if (tmp_path / "a.ini").write_text("x") else None


def test_method_wrappers_transform_the_model_and_its_optimiser_groups():
    from pyfast.harness import build_run
    from pyfast.harness.distributed import World

    cfg = TrainConfig(method="weighted-conv", model_args={"width": 0.125}).resolved()
    run = build_run(cfg, World(), torch.device("cpu"))
    weighted = [m for m in run.model.modules() if isinstance(m, pyfast.nn.WeightedConv2d)]
    assert len(weighted) == 17  # every 3x3 conv of ResNet-18; the three 1x1 shortcuts stay plain
    groups = run.method.param_groups(run.model)
    assert groups[-1]["lr"] == 1e-2 and all(p.requires_grad for p in groups[-1]["params"])
    assert len(groups[-1]["params"]) == 17

    cfg = TrainConfig(method="mesa", model_args={"depth": 1}).resolved()
    run = build_run(cfg, World(), torch.device("cpu"))
    kinds = {type(m).__module__ + "." + type(m).__name__ for m in run.model.modules()}
    assert "pyfast.nn.mesa.Linear" in kinds and "pyfast.nn.mesa.Attention" in kinds, kinds


def test_ctrl_c_is_deferred_to_the_next_step_and_a_second_one_is_immediate():
    import signal

    from pyfast.harness.signals import GracefulInterrupt

    before = signal.getsignal(signal.SIGINT)
    with GracefulInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first: only a flag, nothing raised here
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            stop.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
    assert signal.getsignal(signal.SIGINT) is before


def test_the_method_makes_each_batch_from_the_sampled_indices(tmp_path, monkeypatch):
    """Method.batch gets every epoch's sampled image indices (each image at most once an epoch) and the loss is
    computed on what it returns."""
    from pyfast.methods.base import Method

    seen, made, trained_on, real, real_loss = [], [], [], Method.batch, Method.loss

    def spy(self, data, index, augment, epoch):
        x, y = real(self, data, index, augment, epoch)
        assert torch.equal(y, data.y_train[index]) and x.dtype == torch.float32 and x.shape[0] == len(index)
        seen.append((epoch, index.clone()))
        made.append((y + 1) % data.num_classes)
        return x, made[-1]

    def loss_spy(self, model, x, y):
        trained_on.append(y)
        return real_loss(self, model, x, y)

    monkeypatch.setattr(Method, "batch", spy)
    monkeypatch.setattr(Method, "loss", loss_spy)
    history = train(tiny(tmp_path, epochs=2), **QUIET)
    assert [e for e, _ in seen] == [0, 0, 0, 1, 1, 1]
    for epoch in (0, 1):
        drawn = torch.cat([i for e, i in seen if e == epoch])
        assert len(drawn) == 48 and len(drawn.unique()) == 48
    assert not torch.equal(seen[0][1], seen[3][1])  # reshuffled each epoch
    assert len(trained_on) == 6 and all(a is b for a, b in zip(made, trained_on))
    assert len(history) == 2
