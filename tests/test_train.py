"""Training entry point: digits data, the digits SNN, the training loop (resume, atomic checkpoints), the CLI."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import pyfast
from pyfast import cli
from pyfast.data import load_digits
from pyfast.models import DigitsSNN
from pyfast.train import ConfigError, TrainConfig, atomic_write, epoch_generator, load_checkpoint, train

REPO = Path(__file__).resolve().parent.parent


def tiny(out, **kw) -> TrainConfig:
    """A run of a few seconds: 3 batches an epoch."""
    return TrainConfig(out=str(out), max_steps_per_epoch=3, progress=False, **kw)


# ------------------------------------------------------------------------------------------------------------ data


def test_digits_shapes_range_and_stratified_split():
    s = load_digits(test_fraction=0.2, seed=0)
    assert s.x_train.shape == (1437, 1, 8, 8) and s.x_test.shape == (360, 1, 8, 8)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert s.y_train.shape == (1437,) and s.y_test.shape == (360,)
    assert s.x_train.min() == 0 and s.x_train.max() == 1
    counts = torch.bincount(s.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~20 % of each ~180-image class
    # train and test are disjoint: no test image appears in the train set
    train_rows = {tuple(r.tolist()) for r in s.x_train.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in s.x_test.flatten(1))


def test_digits_split_is_deterministic_per_seed():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a.y_test, c.y_test)


def test_digits_without_sklearn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


def test_digits_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


# ----------------------------------------------------------------------------------------------------------- model


def test_snn_forward_shapes_and_gradients():
    torch.manual_seed(0)
    model = DigitsSNN(T=3, tau=2.0, surrogate="atan", learnable_tau=True)
    x = torch.rand(5, 1, 8, 8)
    logits = model(x)
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    # a [B, ...] input is direct-encoded: the same as passing it repeated over T
    assert torch.allclose(model(x.unsqueeze(0).repeat(3, 1, 1, 1, 1)), logits)
    logits.sum().backward()
    first_conv = model.features[0].body[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0  # surrogate gradient reached layer 1
    taus = [m.w for m in model.modules() if isinstance(m, pyfast.nn.LIF)]
    assert len(taus) == 3 and all(w.grad is not None for w in taus)


def test_snn_bad_arguments():
    with pytest.raises(ValueError, match="T must be"):
        DigitsSNN(T=0)
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        DigitsSNN(T=2)(torch.rand(2, 3, 8, 8))


# -------------------------------------------------------------------------------------------------------- training


def test_epoch_order_depends_on_seed_and_epoch_only():
    perm = [torch.randperm(100, generator=epoch_generator(s, e)) for s, e in ((0, 0), (0, 0), (0, 1), (1, 0))]
    assert torch.equal(perm[0], perm[1])
    assert not torch.equal(perm[0], perm[2]) and not torch.equal(perm[0], perm[3])


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    straight = train(tiny(tmp_path / "a", epochs=3), log=lambda s: None)
    train(tiny(tmp_path / "b", epochs=2), log=lambda s: None)
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it from the checkpoint
    resumed = train(tiny(tmp_path / "b", epochs=3, resume=True), log=lambda s: None)

    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    def timeless(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert timeless(straight) == timeless(resumed) and len(resumed) == 3
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    train(tiny(tmp_path, epochs=1), log=lambda s: None)
    with pytest.raises(ConfigError, match=r"T=4 \(now 2\)"):
        train(tiny(tmp_path, epochs=2, T=2, resume=True), log=lambda s: None)


def test_resume_when_done_or_missing(tmp_path):
    lines = []
    train(tiny(tmp_path / "x", epochs=1, resume=True), log=lines.append)
    assert "starting from scratch" in lines[0]
    assert train(tiny(tmp_path / "x", epochs=1, resume=True), log=lines.append)[0]["epoch"] == 1
    assert "nothing to do" in lines[-1]


def test_checkpoint_is_never_left_half_written(tmp_path, monkeypatch):
    train(tiny(tmp_path, epochs=1), log=lambda s: None)
    before = (tmp_path / "last.pt").read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space left"):
        train(tiny(tmp_path, epochs=2, resume=True), log=lambda s: None)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["history"][-1]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.json"]  # no temporary file left

    monkeypatch.undo()  # and the run continues from epoch 1
    assert [r["epoch"] for r in train(tiny(tmp_path, epochs=2, resume=True), log=lambda s: None)] == [1, 2]


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"old"))
    atomic_write(target, lambda f: f.write(b"new contents"))
    assert target.read_bytes() == b"new contents"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the umask's permissions, not mkstemp's 0600


@pytest.mark.parametrize("field, value", [("epochs", 0), ("T", -1), ("lr", float("nan")), ("lr", 0.0),
                                          ("batch_size", 0), ("model", "nope"), ("backend", "gpu")])
def test_train_rejects_bad_config(tmp_path, field, value):
    with pytest.raises(ConfigError, match=field):
        train(tiny(tmp_path, **{field: value}), log=lambda s: None)


# ------------------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("argv, named", [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "two"], "--epochs"),
    (["--T", "0"], "--T"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "tpu:7"], "--device"),
    (["--backend", "fast"], "--backend"),
])
def test_cli_bad_arguments_name_the_argument(capsys, tmp_path, argv, named):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "snn-digits", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert f"argument {named}" in capsys.readouterr().err
    assert not (tmp_path / "last.pt").exists()


def test_cli_unknown_model(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "resnet-imagenet"])
    assert exc.value.code == 2
    assert "argument model: invalid choice: 'resnet-imagenet'" in capsys.readouterr().err


def test_cli_bench_forwards_to_the_bench_script(tmp_path, monkeypatch, capsys):
    (tmp_path / "helper.py").write_text("GREETING = 'hello from the harness'\n")
    (tmp_path / "bench_fake.py").write_text(
        "import helper\n"
        "def main(argv=None):\n"
        "    print(helper.GREETING, argv)\n"
        "    return 3\n"
    )
    monkeypatch.setattr(cli, "BENCH_DIR", tmp_path)
    assert cli.main(["bench", "fake", "--n", "2", "--dry-run"]) == 3
    assert "hello from the harness ['--n', '2', '--dry-run']" in capsys.readouterr().out
    assert str(tmp_path) not in sys.path

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "nope"])
    assert exc.value.code == 2 and "available: fake" in capsys.readouterr().err

    monkeypatch.setattr(cli, "BENCH_DIR", tmp_path / "missing")
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "lif"])
    assert exc.value.code == 2 and "bench/ directory" in capsys.readouterr().err


def test_cli_info_calls_pyfast_info_main(monkeypatch):
    called = []
    fake = types.ModuleType("pyfast.info")
    fake.main = lambda: called.append(True)
    monkeypatch.setitem(sys.modules, "pyfast.info", fake)
    monkeypatch.setattr(pyfast, "info", fake, raising=False)
    assert cli.main(["info"]) == 0 and called == [True]
    with pytest.raises(SystemExit, match="takes no arguments"):  # never left to parse the `pyfast` argv
        cli.main(["info", "--csv"])


@pytest.mark.slow
def test_cli_end_to_end_learns_digits(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "pyfast", "train", "snn-digits", "--epochs", "2", "--out", str(out), "--seed", "1"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch 2/2" in proc.stdout and "test_acc" in proc.stdout
    assert "epoch 1/2" in proc.stderr  # the tqdm bar
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == 2 and history[-1]["test_acc"] > 0.5, history
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
