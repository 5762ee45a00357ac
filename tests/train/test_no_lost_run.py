"""No lost run: verified checkpoints (a checksum, the previous one kept), non-finite losses stopped or skipped, an
existing run never overwritten by accident, one process per run directory, no file touched by a failed start."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from pyfast.harness import CheckpointError, ConfigError, TrainConfig, load_checkpoint, train
from pyfast.harness.files import OutputError, OutputLock
from pyfast.harness.guard import NonFiniteLossError
from pyfast.methods.base import Method

QUIET = {"log": lambda line: None}


def tiny(out, **kw) -> TrainConfig:
    """A run of about a second an epoch: a small SNN, 3 batches of 16 an epoch."""
    base = {"model": "snn-small", "model_args": {"T": 2}, "batch_size": 16, "max_steps_per_epoch": 3,
            "progress": False, "out": str(out)}
    return TrainConfig(**{**base, **kw})


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pyfast", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def flip_middle_bytes(path) -> bytes:
    """Corrupt a tensor's bytes in the middle of the file (torch.load still reads it); returns the new bytes."""
    data = bytearray(path.read_bytes())
    state = torch.load(path, weights_only=True)
    weight = next(t for t in state["model"].values() if t.is_floating_point() and t.numel() > 16)
    raw = weight.contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at > 0, "the tensor's bytes are stored as written"
    for i in range(at + 8, at + 40):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # still a loadable zip: only the checksum can tell
    return bytes(data)


# --------------------------------------------------------------------------------------------------------------
# Verified checkpoints
# --------------------------------------------------------------------------------------------------------------


def test_each_checkpoint_keeps_the_previous_one_beside_it(tmp_path):
    train(tiny(tmp_path, epochs=2), **QUIET)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert load_checkpoint(tmp_path / "prev.pt")["epoch"] == 1


def test_flipped_bytes_fail_the_checksum_and_resume_refuses_leaving_the_file(tmp_path):
    train(tiny(tmp_path, epochs=2), **QUIET)
    corrupted = flip_middle_bytes(tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="fails its checksum") as err:
        train(tiny(tmp_path, epochs=3, resume=True), **QUIET)
    assert "prev.pt (after epoch 1) verifies" in str(err.value)
    assert (tmp_path / "last.pt").read_bytes() == corrupted  # untouched
    proc = cli("train", "--model", "snn-small", "--model-arg", "T=2", "--batch-size", "16", "--max-steps-per-epoch",
               "3", "--no-progress", "--epochs", "3", "--out", str(tmp_path), "--resume")
    assert proc.returncode == 2 and "fails its checksum" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "last.pt").read_bytes() == corrupted


def test_the_way_back_through_prev_pt_resumes_from_epoch_one(tmp_path):
    train(tiny(tmp_path, epochs=2), **QUIET)
    flip_middle_bytes(tmp_path / "last.pt")
    os.replace(tmp_path / "prev.pt", tmp_path / "last.pt")
    lines = []
    history = train(tiny(tmp_path, epochs=2, resume=True), log=lines.append)
    assert any("resuming" in line and "after epoch 1" in line for line in lines)
    assert [r["epoch"] for r in history] == [1, 2]


def test_checksum_covers_every_part_of_the_checkpoint(tmp_path):
    from pyfast.harness.checkpoints import checksum

    train(tiny(tmp_path, epochs=1), **QUIET)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert checksum(ckpt) == ckpt["checksum"]
    for change in (lambda c: c["history"][0].update(test_acc=0.5), lambda c: c.update(epoch=7),
                   lambda c: c["optimizer"]["param_groups"][0].update(lr=1.0),
                   lambda c: next(iter(c["model"].values())).view(-1)[0].add_(1)):
        changed = load_checkpoint(tmp_path / "last.pt")
        change(changed)
        assert checksum(changed) != ckpt["checksum"]


# --------------------------------------------------------------------------------------------------------------
# Non-finite losses
# --------------------------------------------------------------------------------------------------------------


def nan_loss_from(monkeypatch, epoch: int, every: int = 1) -> None:
    """From epoch ``epoch`` (0-based) on, every ``every``-th step's loss is NaN."""
    real = Method.loss
    steps = []

    def loss(self, model, x, y):
        value, logits = real(self, model, x, y)
        steps.append(1)
        if self._epoch >= epoch and len(steps) % every == 0:
            value = value * float("nan")
        return value, logits

    real_batch = Method.batch

    def batch(self, data, index, augment, e):
        self._epoch = e
        return real_batch(self, data, index, augment, e)

    monkeypatch.setattr(Method, "loss", loss)
    monkeypatch.setattr(Method, "batch", batch)


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_finite_checkpoint(tmp_path, monkeypatch):
    train(tiny(tmp_path, epochs=1), **QUIET)
    before = (tmp_path / "last.pt").read_bytes()
    nan_loss_from(monkeypatch, epoch=1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1 of 3: the loss is NaN or infinite"):
        train(tiny(tmp_path, epochs=2, resume=True), **QUIET)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_skip_drops_the_non_finite_steps_and_counts_them(tmp_path, monkeypatch):
    nan_loss_from(monkeypatch, epoch=0, every=2)
    history = train(tiny(tmp_path, epochs=2, on_nonfinite="skip"), **QUIET)
    assert [r["skipped_steps"] for r in history] == [1, 2]  # steps 2, 4 and 6 of 3 + 3
    state = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)


def test_a_skipped_step_changes_no_parameter(tmp_path, monkeypatch):
    nan_loss_from(monkeypatch, epoch=0, every=1)  # every step non-finite: nothing may move
    cfg = tiny(tmp_path, epochs=1, on_nonfinite="skip", optimizer="sgd", momentum=0.9, weight_decay=0.1)
    from pyfast.harness import build_run
    from pyfast.harness.distributed import World

    initial = {k: v.clone() for k, v in build_run(cfg.resolved(), World(), torch.device("cpu")).model
               .state_dict().items()}
    history = train(cfg, **QUIET)
    assert history[0]["skipped_steps"] == 3
    final = load_checkpoint(tmp_path / "last.pt")["model"]
    for name, value in initial.items():
        if "running" in name or "num_batches" in name:
            continue  # batch-norm statistics follow the forward passes, not the optimiser
        assert torch.equal(value, final[name]), name


def test_cli_sgd_at_lr_1000_exits_2_naming_the_step(tmp_path):
    proc = cli("train", "--optimizer", "sgd", "--lr", "1000", "--model", "snn-small", "--model-arg", "T=2",
               "--batch-size", "16", "--max-steps-per-epoch", "20", "--epochs", "3", "--no-progress", "--out",
               str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the loss is NaN or infinite" in proc.stderr and "--on-nonfinite skip" in proc.stderr
    assert "Traceback" not in proc.stderr
    if (tmp_path / "last.pt").exists():  # a finite epoch may have been saved before the divergence
        state = load_checkpoint(tmp_path / "last.pt")["model"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_non_finite_model_is_never_saved(tmp_path):
    from pyfast.harness.checkpoints import save_checkpoint

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in weight; not saved"):
        save_checkpoint(tmp_path / "last.pt", tiny(tmp_path), model, opt, sched, torch.amp.GradScaler("cpu",
                        enabled=False), 1, [])
    assert not (tmp_path / "last.pt").exists()


# --------------------------------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------------------------------


def test_an_existing_run_is_refused_without_resume_or_overwrite(tmp_path):
    train(tiny(tmp_path, epochs=1), **QUIET)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(OutputError, match=r"already holds a run of 'standard' after epoch 1.*--resume.*--overwrite"):
        train(tiny(tmp_path, epochs=1), **QUIET)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    with pytest.raises(ConfigError, match="resume and overwrite exclude each other"):
        train(tiny(tmp_path, epochs=1, resume=True, overwrite=True), **QUIET)


def test_overwrite_starts_over_and_leaves_other_files(tmp_path):
    train(tiny(tmp_path, epochs=2), **QUIET)
    (tmp_path / "notes.txt").write_text("mine")
    history = train(tiny(tmp_path, epochs=1, overwrite=True), **QUIET)
    assert len(history) == 1 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert not (tmp_path / "prev.pt").exists()  # the old run's previous checkpoint went with it
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_failed_start_touches_no_file(tmp_path):
    train(tiny(tmp_path, epochs=1), **QUIET)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="backend 'cuda' cannot run on cpu"):
            train(tiny(tmp_path, epochs=2, resume=True, backend="cuda"), **QUIET)
    with pytest.raises(ConfigError):
        train(tiny(tmp_path, epochs=2, resume=True, lr=5.0), **QUIET)  # settings that do not match the checkpoint
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_config_json_is_written_with_the_first_checkpoint(tmp_path, monkeypatch):
    nan_loss_from(monkeypatch, epoch=0)
    with pytest.raises(NonFiniteLossError):
        train(tiny(tmp_path, epochs=1), **QUIET)
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "last.pt").exists()


def test_a_run_directory_in_use_is_refused(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    in_use = rf"--out {tmp_path} is in use by another pyfast process \(pid {os.getpid()}\)"
    with OutputLock(tmp_path, "--out"), pytest.raises(OutputError, match=in_use):
        train(tiny(tmp_path, epochs=1), **QUIET)
    assert train(tiny(tmp_path, epochs=1), **QUIET)  # free again once the holder is gone


def test_a_second_process_on_the_same_out_exits_2(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pyfast.harness.files import OutputLock\n"
        f"with OutputLock({str(tmp_path)!r}, '--out'):\n    print('locked', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = cli("train", "--model", "snn-small", "--out", str(tmp_path), "--epochs", "1", "--no-progress")
        assert proc.returncode == 2 and f"in use by another pyfast process (pid {holder.pid})" in proc.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("make, message", [
    (lambda p: (p.write_text("x"), p)[1], "is a file; it must be a directory"),
    (lambda p: "/proc/pyfast-cannot-be-here", "cannot be created"),
])
def test_out_that_cannot_be_a_run_directory_exits_2(tmp_path, make, message):
    out = make(tmp_path / "out")
    proc = cli("train", "--model", "snn-small", "--out", str(out), "--epochs", "1", "--no-progress")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_resume_rewrites_config_json_for_the_longer_run(tmp_path):
    train(tiny(tmp_path, epochs=1), **QUIET)
    train(dataclasses.replace(tiny(tmp_path, epochs=2), resume=True), **QUIET)
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2
