"""Training checkpoints: one ``torch.save`` of plain types and tensors (loadable with ``weights_only=True``), written
atomically, holding everything an exact resume needs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from pyfast.harness.config import RESUME_MAY_CHANGE, ConfigError, TrainConfig
from pyfast.harness.files import atomic_write
from pyfast.harness.rng import rng_state

CHECKPOINT_FORMAT = 2


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read or does not belong to this run."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; a truncated or foreign file is a :class:`CheckpointError`
    saying so (never an unpickling traceback)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated, corrupted or not a pyfast checkpoint: "
                              f"{type(err).__name__}); delete it to start over or pass another --out") from err
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise CheckpointError(f"{path} is not a pyfast training checkpoint")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {ckpt['format']!r}; this pyfast reads "
                              f"{CHECKPOINT_FORMAT} (it was written by another version)")
    return ckpt


def save_checkpoint(path, cfg: TrainConfig, model: nn.Module, optimizer, scheduler, scaler, epoch: int,
                    history: list[dict]) -> None:
    """Atomically save the state after ``epoch`` completed epochs (over all stages): everything a resume needs."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(cfg),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "history": history,
    }
    atomic_write(path, lambda f: torch.save(ckpt, f))


def check_resumable(saved: dict, cfg: TrainConfig, path: Path) -> None:
    now = dataclasses.asdict(cfg)
    diffs = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in now
             if k not in RESUME_MAY_CHANGE and saved.get(k) != now[k]]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: it was trained with " + ", ".join(diffs) +
                              "; use the same settings or another --out")
