"""The ``pyfast`` command: train (every method), --list, config files, errors, Ctrl-C, bench, info."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from pyfast import cli
from pyfast.harness import load_checkpoint
from pyfast.registry import METHODS

REPO = Path(__file__).resolve().parents[2]
# Per method: options that keep its default model to a second or two an epoch (same model, smaller width / T).
SMOKE = {
    "standard": ["--model-arg", "width=0.125"],
    "iir-snn": ["--model-arg", "width=0.125", "--method-arg", "timesteps=[2,1]"],
    "mesa": ["--model-arg", "depth=2"],
    "karat": ["--model-arg", "depth=2", "--method-arg", "r=4"],
    "weighted-conv": ["--model-arg", "width=0.125"],
    "kd": ["--model-arg", "width=0.125", "--method-arg", "teacher={teacher}"],
    "nkd": ["--model-arg", "width=0.125", "--method-arg", "teacher={teacher}"],
    "pld": ["--model-arg", "width=0.125", "--method-arg", "teacher={teacher}"],
    "bd-kd": ["--model-arg", "width=0.125", "--method-arg", "teacher_model_args={{width: 0.125}}"],
    "uskd": ["--model-arg", "width=0.125"],
    "lsskd": ["--model-arg", "width=0.125", "--method-arg", "layers=[layers.3, layers.7]"],
    "gcab": ["--model-arg", "dim=32", "--model-arg", "depth=2", "--model-arg", "num_heads=4", "--method-arg",
             "tasks=2"],
    "hag-gr": ["--model-arg", "depth=2"],
    "large-batch": ["--model-arg", "width=0.125", "--method-arg", "ghost_batch_size=4", "--method-arg",
                    "base_batch_size=16"],
    "reinforced": ["--model-arg", "width=0.125", "--method-arg", "reinforced={reinforced}"],
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A (barely) trained teacher run for the offline distillation methods."""
    out = tmp_path_factory.mktemp("teacher")
    assert cli.main(["train", "--model", "resnet18", "--model-arg", "width=0.125", "--epochs", "1", "--batch-size",
                     "16", "--max-steps-per-epoch", "2", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory, teacher) -> Path:
    """A reinforced digits file (one sample per image) from the teacher, for the reinforced method."""
    out = tmp_path_factory.mktemp("reinforced") / "digits.dr"
    assert cli.main(["reinforce", "--teacher", str(teacher), "--samples", "1", "--topk", "3", "--batch-size", "512",
                     "--out", str(out), "--no-progress"]) == 0
    return out


def available_methods() -> list[str]:
    return METHODS.names()


def test_every_available_method_has_a_smoke_run():
    assert set(available_methods()) == set(SMOKE)


@pytest.mark.parametrize("method", sorted(SMOKE))
def test_cli_smoke_run_of_each_method_with_its_default_model(tmp_path, capsys, method, teacher, reinforced):
    argv = ["train", "--method", method, "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "2",
            "--out", str(tmp_path), "--no-progress",
            *(a.format(teacher=teacher, reinforced=reinforced) for a in SMOKE[method])]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    default_model = METHODS.get(method).builder.default_model
    assert f"{method} | {default_model}" in out and "final test_acc" in out and str(tmp_path) in out
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["config"]["model"] == default_model and ckpt["epoch"] >= 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_cli_list_shows_methods_models_and_data(capsys):
    assert cli.main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("standard", "iir-snn", "mesa", "weighted-conv", "gcab", "hag-gr", "karat", "kd", "uskd", "resnet18",
                 "vit-tiny", "vgg16-snn", "digits", "cifar100"):
        assert f"  {name} " in out, name


def test_cli_config_file_then_flags(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: snn-small\nepochs: 1\nbatch_size: 16\nmax_steps_per_epoch: 1\nlr: 0.01\n"
                      f"model_args: {{T: 2}}\nout: {tmp_path / 'run'}\nprogress: false\n")
    assert cli.main(["train", "--config", str(config), "--lr", "0.003", "--model-arg", "hidden=32"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["lr"] == 0.003 and saved["epochs"] == 1 and saved["model_args"] == {"T": 2, "hidden": 32}


@pytest.mark.parametrize("argv, named", [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "two"], "--epochs"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "tpu:7"], "--device"),
    (["--backend", "fast"], "--backend"),
    (["--optimizer", "lion"], "--optimizer"),
    (["--model-arg", "width"], "--model-arg"),
])
def test_cli_bad_arguments_name_the_argument(capsys, tmp_path, argv, named):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert f"argument {named}" in capsys.readouterr().err
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet-imagenet"], "model must be one of"),
    (["--method", "karat", "--method-arg", "G=0"], "G"),
    (["--data", "cifar100", "--data-dir", "/nonexistent"], "cifar-100-python.tar.gz"),
    (["--data", "cifar10"], "needs --data-dir"),
    (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml"),
])
def test_cli_errors_are_one_clear_line(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


def test_ctrl_c_leaves_the_last_checkpoint_intact_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    def cmd(epochs: int) -> list[str]:
        return [sys.executable, "-m", "pyfast", "train", "--model", "snn-small", "--model-arg", "T=2", "--epochs",
                str(epochs), "--batch-size", "16", "--max-steps-per-epoch", "5", "--out", str(out), "--no-progress"]

    proc = subprocess.Popen(cmd(50), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # inside a later epoch, perhaps inside a checkpoint write
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "continue with --resume" in stderr
    done = load_checkpoint(out / "last.pt")["epoch"]
    assert done >= 1 and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    resumed = subprocess.run([*cmd(done + 1), "--resume"], cwd=REPO, capture_output=True,
                             text=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {out / 'last.pt'} after epoch {done}" in resumed.stdout
    assert load_checkpoint(out / "last.pt")["epoch"] == done + 1


def test_cli_bench_runs_each_benchmark_with_csv_and_png(tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("pyfast.bench.fake")

    def main(argv=None):
        csv = argv[argv.index("--csv") + 1]
        with open(csv, "w") as f:
            f.write("op,provider,mode,shape,T,dtype,device,median_ms,ratio_vs_reference\n"
                    "fake,reference,fwd,4,1,fp32,cpu,2.0,1.0\nfake,cpp,fwd,4,1,fp32,cpu,1.0,2.0\n")
        print("fake bench got", argv[:-2])
        return 0

    fake.main = main
    monkeypatch.setitem(sys.modules, "pyfast.bench.fake", fake)
    monkeypatch.setattr(cli, "available_benchmarks", lambda: ["fake"])
    assert cli.main(["bench", "--op", "fake", "--out", str(tmp_path / "res"), "--quick", "--T", "8"]) == 0
    out = capsys.readouterr().out
    assert "fake bench got ['--quick', '--T', '8']" in out
    assert (tmp_path / "res" / "fake.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--op", "nope"])
    assert exc.value.code == 2 and "available: fake" in capsys.readouterr().err


def test_every_op_family_has_a_benchmark_module():
    assert cli.available_benchmarks() == ["gated", "karat", "layers", "lif", "mesa", "pld", "wconv"]


def test_cli_bench_lif_quick_for_real(tmp_path, capsys):
    assert cli.main(["bench", "--op", "lif", "--out", str(tmp_path), "--quick", "--device", "cpu",
                     "--providers", "reference", "cpp", "--T", "2", "--modes", "fwd"]) == 0
    assert (tmp_path / "lif.csv").is_file() and (tmp_path / "lif.png").is_file()
    assert "speedup over eager reference" in capsys.readouterr().out


def test_cli_info_calls_pyfast_info_main(monkeypatch):
    called = []
    fake = types.ModuleType("pyfast.info")
    fake.main = lambda argv: called.append(argv)
    monkeypatch.setattr(cli, "info", fake)
    assert cli.main(["info"]) == 0 and called == [[]]  # never left to parse the `pyfast` argv
    assert cli.main(["info", "--names"]) == 0 and called[-1] == ["--names"]


def test_cli_info_names_and_bad_flag(capsys):
    assert cli.main(["info", "--names"]) == 0
    out = capsys.readouterr().out
    assert "gated: " in out and "gated_cattn_fwd" in out and "gated_class_attention" in out and "--method gcab" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["info", "--csv"])
    assert exc.value.code == 2 and "--csv" in capsys.readouterr().err


def test_python_m_pyfast_train_help_is_readable():
    proc = subprocess.run([sys.executable, "-m", "pyfast", "train", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True, env={**os.environ, "COLUMNS": "120"})
    assert "--method" in proc.stdout and "--resume" in proc.stdout and "torchrun" in proc.stdout
