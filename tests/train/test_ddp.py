"""torchrun + DistributedDataParallel (gloo, 2 CPU processes) trains what one process trains on the same batches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pyfast.harness import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
# A BatchNorm-free model without dropout: per-rank batch statistics and dropout masks are the only things DDP
# legitimately changes, so with neither the two runs differ by float summation order alone.
RUN = ["train", "--model", "vit-tiny", "--model-arg", "depth=2", "--model-arg", "dim=32", "--model-arg",
       "num_heads=2", "--epochs", "2", "--batch-size", "32", "--max-steps-per-epoch", "4", "--no-progress"]


def run(cmd: list[str], out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, *RUN, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    run([sys.executable, "-m", "pyfast"], tmp_path / "single")
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pyfast"],
              tmp_path / "ddp")
    assert "x 2 processes" in ddp.stdout and ddp.stdout.count("epoch 2/2") == 1  # rank 0 alone logs
    a, b = load_checkpoint(tmp_path / "single" / "last.pt"), load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert a["model"].keys() == b["model"].keys() and not any(k.startswith("module.") for k in b["model"])
    for name in a["model"]:
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["batch_size"] == 32  # global: 16 a process
    for ra, rb in zip(a["history"], b["history"]):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4 and abs(ra["test_acc"] - rb["test_acc"]) < 1e-9
    assert a["history"][1]["train_loss"] != a["history"][0]["train_loss"]  # it did train
