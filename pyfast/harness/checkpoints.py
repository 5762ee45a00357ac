"""Training checkpoints: one ``torch.save`` of plain types and tensors (loadable with ``weights_only=True``), written
atomically, holding everything an exact resume needs, with a checksum of all of it.

A run directory holds ``last.pt`` (after the newest epoch) and ``prev.pt`` (the one before it, kept when ``last.pt``
is replaced). The checksum is a sha256 over the checkpoint's content (every tensor's dtype, shape and bytes, every
other value's repr, in order): a file whose bytes changed after it was written (a bad disk, a torn copy) fails it
even where ``torch.load`` still reads it, and resuming from it is refused with the way back to ``prev.pt``. A model
state with a NaN or an infinite value is never written over a checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path

import torch
from torch import nn

from pyfast.harness.config import RESUME_MAY_CHANGE, ConfigError, TrainConfig
from pyfast.harness.files import atomic_write
from pyfast.harness.rng import rng_state

CHECKPOINT_FORMAT = 3  # 3: with "checksum"; format 2 (before checksums) is still read, unverified
LAST, PREVIOUS = "last.pt", "prev.pt"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read, fails its checksum, or does not belong to this run."""


def _update(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            h.update(repr(key).encode())
            _update(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for value in obj:
            _update(h, value)
    else:
        h.update(repr(obj).encode())


def checksum(content: dict) -> str:
    """sha256 of a checkpoint's content (everything but its ``checksum`` entry)."""
    h = hashlib.sha256()
    _update(h, {k: v for k, v in content.items() if k != "checksum"})
    return h.hexdigest()


def _previous_note(path: Path) -> str:
    previous = path.with_name(PREVIOUS)
    if path.name == PREVIOUS or not previous.is_file():
        return "delete it to start over (--overwrite) or pass another --out"
    try:
        epoch = load_checkpoint(previous)["epoch"]
    except CheckpointError:
        return f"{previous} does not verify either; start over with --overwrite or pass another --out"
    return (f"the previous checkpoint {previous} (after epoch {epoch}) verifies: `mv {previous} {path}` and rerun "
            "with --resume to continue from it, or start over with --overwrite")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint`. A truncated, corrupted or foreign file is a
    :class:`CheckpointError` saying so and how to go on (never an unpickling traceback); the file is not touched."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated, corrupted or not a pyfast checkpoint: "
                              f"{type(err).__name__}); {_previous_note(path)}") from err
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise CheckpointError(f"{path} is not a pyfast training checkpoint")
    if ckpt["format"] not in (2, CHECKPOINT_FORMAT):
        raise CheckpointError(f"checkpoint {path} has format {ckpt['format']!r}; this pyfast reads "
                              f"{CHECKPOINT_FORMAT} (it was written by another version)")
    if ckpt["format"] == CHECKPOINT_FORMAT and ckpt.get("checksum") != checksum(ckpt):
        raise CheckpointError(f"checkpoint {path} fails its checksum: its content changed after it was written "
                              f"(a bad disk or copy); {_previous_note(path)}")
    return ckpt


def nonfinite_entries(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point entries of a state dict holding a NaN or an infinite value."""
    return [name for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_checkpoint(path, cfg: TrainConfig, model: nn.Module, optimizer, scheduler, scaler, epoch: int,
                    history: list[dict]) -> None:
    """Atomically save the state after ``epoch`` completed epochs (over all stages): everything a resume needs. The
    checkpoint ``path`` held so far is kept as ``prev.pt`` beside it. A model state with a non-finite value raises a
    :class:`CheckpointError` and writes nothing."""
    state = model.state_dict()
    bad = nonfinite_entries(state)
    if bad:
        raise CheckpointError(f"the model after epoch {epoch} has NaN or infinite values in {', '.join(bad[:5])}"
                              f"{' ...' if len(bad) > 5 else ''}; not saved over {path}")
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(cfg),
        "epoch": epoch,
        "model": state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "history": history,
    }
    ckpt["checksum"] = checksum(ckpt)
    path = Path(path)
    atomic_write(path, lambda f: torch.save(ckpt, f), keep_previous=path.with_name(PREVIOUS))


def describe_checkpoint(path: Path) -> str:
    """One line on what a checkpoint holds (for messages), or why it cannot be read."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        return f"a checkpoint {path.name} that does not verify"
    last = ckpt["history"][-1] if ckpt.get("history") else {}
    acc = last.get("test_acc")
    acc = f", test_acc {acc:.2%}" if isinstance(acc, float) and math.isfinite(acc) else ""
    return f"a run of {ckpt['config'].get('method')!r} after epoch {ckpt['epoch']}{acc}"


def check_resumable(saved: dict, cfg: TrainConfig, path: Path) -> None:
    now = dataclasses.asdict(cfg)
    diffs = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in now
             if k not in RESUME_MAY_CHANGE and saved.get(k) != now[k]]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: it was trained with " + ", ".join(diffs) +
                              "; use the same settings or another --out")
