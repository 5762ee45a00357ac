"""Training loop of ``pyfast train``: a recipe (data + model) trained with Adam, checkpointed every epoch.

Reproducibility contract: a run is a function of its :class:`TrainConfig`. The model is initialised from
``seed``; epoch ``e`` visits the training set in an order drawn from a generator seeded by ``(seed, e)`` only; every
epoch ends with an atomic checkpoint ``OUT/last.pt`` (model, optimizer, RNG states, epoch, metrics history). So a
run stopped after any epoch and continued with ``resume=True`` ends with the same parameters, bit for bit, as one
that was never stopped (same machine, same backend, same thread count).

Files written to ``OUT``: ``last.pt`` (see :func:`save_checkpoint`) and ``metrics.json`` (config and one record per
epoch), both replaced atomically, so a crash leaves the previous complete file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pyfast.backends import BACKENDS, resolve
from pyfast.data import Split, load_digits
from pyfast.models import DigitsSNN

CHECKPOINT_FORMAT = 1


class ConfigError(ValueError):
    """A training configuration that cannot run (bad value, or a checkpoint that does not match it)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on. Defaults reach > 90 % test accuracy on snn-digits in about 10 s on 2 CPU cores."""

    model: str = "snn-digits"
    epochs: int = 5
    T: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    out: str = "runs/snn-digits"
    resume: bool = False
    backend: str = "auto"
    device: str = "auto"
    max_steps_per_epoch: int | None = None  # cap on training batches per epoch (smoke tests); None: the whole set
    progress: bool = True  # tqdm bar per epoch


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named training task: how to load its data and build its model from a config."""

    data: Callable[[], Split]
    model: Callable[[TrainConfig], nn.Module]


RECIPES: dict[str, Recipe] = {
    # The split is fixed (seed 0) whatever the training seed, so runs with different seeds share one test set.
    "snn-digits": Recipe(data=lambda: load_digits(seed=0), model=lambda cfg: DigitsSNN(T=cfg.T, backend=cfg.backend)),
}

# Config fields that change the trajectory: a checkpoint resumes only under the same values. epochs may grow, and
# out / device / backend / progress may change (backends compute the same maths).
_RESUME_MUST_MATCH = ("model", "T", "batch_size", "lr", "seed", "max_steps_per_epoch")


def check_config(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first field of ``cfg`` whose value cannot run."""

    def positive_int(name: str, value, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be an integer > 0, got {value!r}")

    if cfg.model not in RECIPES:
        raise ConfigError(f"model must be one of {sorted(RECIPES)}, got {cfg.model!r}")
    positive_int("epochs", cfg.epochs)
    positive_int("T", cfg.T)
    positive_int("batch_size", cfg.batch_size)
    positive_int("max_steps_per_epoch", cfg.max_steps_per_epoch, allow_none=True)
    if isinstance(cfg.lr, bool) or not isinstance(cfg.lr, (int, float)) or not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise ConfigError(f"lr must be a finite number > 0, got {cfg.lr!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {cfg.seed!r}")
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {cfg.backend!r}")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda if available, else cpu; anything else must parse as a torch.device that exists here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be a cpu or cuda device, got {device!r}")
    return dev


# --------------------------------------------------------------------------------------------------------------
# Determinism: RNG states and the per-epoch data order
# --------------------------------------------------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """CPU generator for epoch ``epoch``'s data order, a function of ``(seed, epoch)`` alone."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """Global RNG states as plain types and tensors (loadable with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable) -> None:
    """Write ``path`` so that it is either the old complete file or the new complete file, never a torn one.

    ``write(f)`` fills a temporary file (binary mode) in the same directory; it is flushed, fsync-ed and renamed
    over ``path`` with ``os.replace`` (atomic on POSIX and Windows). If ``write`` raises, the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open rather than tempfile.mkstemp: the file gets the umask's permissions (mkstemp's are 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint(path, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    history: list[dict]) -> None:
    """Atomically save the state after ``epoch`` completed epochs: everything :func:`train` needs to resume."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(cfg),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "history": history,
    }
    atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_resumable(saved: dict, cfg: TrainConfig, path: Path) -> None:
    diffs = [f"{k}={saved.get(k)!r} (now {getattr(cfg, k)!r})" for k in _RESUME_MUST_MATCH
             if saved.get(k) != getattr(cfg, k)]
    if diffs:
        raise ConfigError(f"cannot resume from {path}: it was trained with " + ", ".join(diffs) +
                          "; use the same settings or another --out")


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------


def train_epoch(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                generator: torch.Generator, max_steps: int | None = None, desc: str = "", progress: bool = True
                ) -> tuple[float, float]:
    """One pass over ``x [N, ...]`` / ``y [N]`` in the order drawn from ``generator``. Returns (mean loss, accuracy)."""
    model.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    batches = order.split(batch_size)
    if max_steps is not None:
        batches = batches[:max_steps]
    total_loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    seen = 0
    with tqdm(batches, desc=desc, leave=False, disable=not progress, unit="batch", dynamic_ncols=True) as bar:
        for idx in bar:
            logits = model(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum()
            seen += len(idx)
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return total_loss.item() / seen, correct.item() / seen


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on ``x [N, ...]`` / ``y [N]``."""
    model.eval()
    total_loss, correct = 0.0, 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        logits = model(xb)
        total_loss += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return total_loss / len(x), correct / len(x)


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Train ``cfg.model`` for ``cfg.epochs`` epochs (continuing ``OUT/last.pt`` if ``cfg.resume``).

    Returns the metrics history: one dict per epoch with ``epoch, train_loss, train_acc, test_loss, test_acc,
    seconds``. Raises :class:`ConfigError` for a config that cannot run and
    :class:`pyfast.BackendUnavailableError` for a backend that is missing here.
    """
    check_config(cfg)
    device = resolve_device(cfg.device)
    resolve("lif", cfg.backend, device)  # fail now, not at the first forward, if an explicit backend is missing
    out = Path(cfg.out)
    ckpt_path = out / "last.pt"

    seed_everything(cfg.seed)
    recipe = RECIPES[cfg.model]
    data = Split(*(t.to(device) for t in recipe.data()))
    model = recipe.model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    start, history = 0, []
    if cfg.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"cannot resume from {ckpt_path}: checkpoint format {ckpt.get('format')!r}, "
                              f"this pyfast writes {CHECKPOINT_FORMAT}")
        _check_resumable(ckpt["config"], cfg, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start, history = ckpt["epoch"], ckpt["history"]
        log(f"resuming {ckpt_path} after epoch {start}")
    elif cfg.resume:
        log(f"no checkpoint at {ckpt_path}; starting from scratch")
    if start >= cfg.epochs:
        log(f"{ckpt_path} has already trained {start} epochs (--epochs {cfg.epochs}); nothing to do")
    out.mkdir(parents=True, exist_ok=True)

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        train_loss, train_acc = train_epoch(
            model, optimizer, data.x_train, data.y_train, cfg.batch_size, epoch_generator(cfg.seed, epoch),
            max_steps=cfg.max_steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=cfg.progress,
        )
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                        "test_loss": test_loss, "test_acc": test_acc, "seconds": seconds})
        log(f"epoch {epoch + 1}/{cfg.epochs}  train_loss {train_loss:.4f}  train_acc {train_acc:6.2%}  "
            f"test_loss {test_loss:.4f}  test_acc {test_acc:6.2%}  {seconds:.1f}s")
        save_checkpoint(ckpt_path, cfg, model, optimizer, epoch + 1, history)
        metrics = json.dumps({"config": dataclasses.asdict(cfg), "device": str(device), "history": history}, indent=2)
        atomic_write(out / "metrics.json", lambda f, text=metrics: f.write(text.encode()))
    return history
