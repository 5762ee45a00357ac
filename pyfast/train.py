"""The training harness behind ``pyfast train``: a method (:mod:`pyfast.methods`) trains a model
(:mod:`pyfast.models`) on a dataset (:mod:`pyfast.data`), on one process or several (torchrun + DDP).

Reproducibility contract: a run is a function of its :class:`TrainConfig` (and the world size). The model is
initialised from ``seed``; epoch ``e`` visits the training images in the order of a ``DistributedSampler`` seeded by
``seed`` at epoch ``e``, and draws its augmentation per image from a generator seeded by ``(seed, e)``; dropout and
other global randomness continue from RNG states saved with each checkpoint. So a run stopped after any epoch and
continued with ``resume=True`` ends with the same parameters, bit for bit, as one never stopped (same machine,
backend and thread count). The last incomplete global batch of an epoch is dropped, so every step sees
``batch_size`` images however many processes share them.

Files written to ``OUT`` (rank 0 only, each replaced atomically, so a crash or Ctrl-C leaves the previous complete
file): ``config.json`` (the resolved config), ``last.pt`` (see :func:`save_checkpoint`), ``metrics.jsonl`` and
``metrics.csv`` (one record per epoch) and ``curves.png`` (loss and accuracy curves).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from pyfast.backends import BACKENDS, use_backend
from pyfast.data import Augmentation, ImageData
from pyfast.methods.base import Method, Stage
from pyfast.registry import DATASETS, METHODS, MODELS, RegistryError

CHECKPOINT_FORMAT = 2
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("cosine", "constant")


class ConfigError(ValueError):
    """A training configuration that cannot run (bad value, or a checkpoint that does not match it)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on. ``model`` / ``data`` / ``out`` of ``None`` take the method's defaults.

    The defaults (AdamW, lr 2e-3, weight decay 0.05, cosine schedule, batch 64) train every bundled model from
    scratch; ResNet-18 reaches ~98 % test accuracy on the embedded digits in 3 epochs (about a minute an epoch on
    2 CPU cores).

    ``batch_size`` is the global batch: with N processes each takes ``batch_size / N`` images a step.
    ``epochs`` counts per stage (only multi-stage methods such as iir-snn have more than one).
    """

    method: str = "standard"
    model: str | None = None
    data: str | None = None
    data_dir: str | None = None
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    out: str | None = None
    resume: bool = False
    amp: bool = False
    device: str = "auto"
    backend: str = "auto"
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    method_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 500
    progress: bool = True

    def resolved(self) -> TrainConfig:
        """A copy with ``model``, ``data`` and ``out`` filled in from the method's defaults."""
        method = METHODS.get(self.method).builder
        model = self.model or method.default_model
        data = self.data or method.default_data
        out = self.out or f"runs/{self.method}-{model}-{data}"
        return dataclasses.replace(self, model=model, data=data, out=out)


# Config fields that may change between a checkpoint and its resumption (epochs may also grow).
_RESUME_MAY_CHANGE = {"epochs", "out", "resume", "device", "backend", "progress", "eval_batch_size", "data_dir"}


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a mapping (e.g. a parsed YAML/TOML file); unknown keys are an error."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return TrainConfig(**values)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a config file (``.yaml``/``.yml``, ``.toml`` or ``.json``) into a dict of :class:`TrainConfig` fields
    (dashes in keys become underscores)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror}") from err
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigError(f"config file {path}: TOML needs Python 3.11+; use YAML or JSON") from None
            values = tomllib.loads(text)
        elif suffix == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: unknown format {suffix!r} (use .yaml, .toml or .json)")
    except ConfigError:
        raise
    except Exception as err:  # each parser has its own error type
        raise ConfigError(f"config file {path} does not parse: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options, got {type(values).__name__}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def check_config(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first field of ``cfg`` whose value cannot run."""

    def integer(name: str, minimum: int, allow_none: bool = False) -> None:
        value = getattr(cfg, name)
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")

    def number(name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
        value = getattr(cfg, name)
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low) and value <= high
        if not ok:
            bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high < math.inf else "")
            raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")

    for name, registry in (("method", METHODS), ("model", MODELS), ("data", DATASETS)):
        value = getattr(cfg, name)
        if value is not None and value not in registry:
            raise ConfigError(f"{name} must be one of {', '.join(registry.names())}; got {value!r}")
    integer("epochs", 1)
    integer("batch_size", 1)
    integer("seed", 0)
    integer("eval_batch_size", 1)
    integer("max_steps_per_epoch", 1, allow_none=True)
    number("lr", 0.0, low_open=True)
    number("momentum", 0.0, 1.0)
    number("weight_decay", 0.0)
    number("warmup_epochs", 0.0)
    number("label_smoothing", 0.0, 1.0)
    for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("backend", BACKENDS)):
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {getattr(cfg, name)!r}")
    for name in ("model_args", "method_args"):
        if not isinstance(getattr(cfg, name), dict):
            raise ConfigError(f"{name} must be a mapping of option names to values, got {getattr(cfg, name)!r}")


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
# Distributed: torchrun sets WORLD_SIZE / RANK / LOCAL_RANK
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[World, torch.device, bool]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), or a world of one.

    Returns ``(world, device, owns_group)``; on CUDA each process takes ``cuda:LOCAL_RANK``. ``owns_group`` says
    whether this call created the group (and :func:`train` must destroy it).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 and not dist.is_initialized():
        return World(), device, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank), device, owns


def _all_reduce_sum(values: list[float], device: torch.device, world: World) -> list[float]:
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------------------------------------------
# Determinism: RNG states and per-epoch generators
# --------------------------------------------------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """CPU generator for epoch ``epoch``'s random choices of kind ``stream``, a function of its arguments alone."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
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
# Atomic files and checkpoints
# --------------------------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable) -> None:
    """Write ``path`` so that it is either the old complete file or the new complete file, never a torn one.

    ``write(f)`` fills a temporary file (binary mode) in the same directory; it is flushed, fsync-ed and renamed
    over ``path`` with ``os.replace`` (atomic on POSIX and Windows). If ``write`` raises (or Ctrl-C arrives), the
    temporary file is removed and ``path`` is untouched.
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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


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


def _check_resumable(saved: dict, cfg: TrainConfig, path: Path) -> None:
    now = dataclasses.asdict(cfg)
    diffs = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in now
             if k not in _RESUME_MAY_CHANGE and saved.get(k) != now[k]]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: it was trained with " + ", ".join(diffs) +
                              "; use the same settings or another --out")


# --------------------------------------------------------------------------------------------------------------
# Metrics files
# --------------------------------------------------------------------------------------------------------------


def write_metrics(out: Path, history: list[dict]) -> None:
    """``metrics.jsonl``, ``metrics.csv`` and ``curves.png`` from the whole history (rewritten atomically)."""
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    plot_curves(out / "curves.png", history)


def plot_curves(path: Path, history: list[dict]) -> bool:
    """Loss and accuracy against epoch as a PNG; returns False (and writes nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", label=split)
        ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return True


class GracefulInterrupt:
    """Ctrl-C at a safe point. Inside ``with GracefulInterrupt() as stop:``, the first SIGINT only sets a flag, and
    :meth:`check` (called by the loop after every step) raises KeyboardInterrupt there. A KeyboardInterrupt raised
    wherever the signal lands can be swallowed (inside a weakref callback or ``__del__``, Python prints "Exception
    ignored" and carries on training); a checked flag cannot. A second Ctrl-C interrupts at once. Outside the main
    thread (where Python delivers no signals) this does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> GracefulInterrupt:  # noqa: PYI034  (typing.Self needs Python 3.11)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --------------------------------------------------------------------------------------------------------------
# Optimiser and schedule
# --------------------------------------------------------------------------------------------------------------


def make_optimizer(cfg: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int, epochs: int):
    """Per-step schedule over one stage: linear warm-up for ``warmup_epochs``, then cosine to 0 (or constant)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """The live objects of a run (what :func:`train` builds; tests and methods may inspect them)."""

    cfg: TrainConfig
    method: Method
    data: ImageData
    model: nn.Module  # the bare model (state_dict keys without a DDP prefix)
    trainer: nn.Module  # what the loop calls: the model, or its DistributedDataParallel wrapper
    device: torch.device
    world: World
    stages: list[Stage]
    interrupt: GracefulInterrupt = dataclasses.field(default_factory=GracefulInterrupt)


def build_model(cfg: TrainConfig, method: Method, data: ImageData) -> nn.Module:
    """The model of a resolved ``cfg`` for ``data``: the registry's builder with the method's and the config's
    options, then the method's :meth:`~pyfast.methods.Method.prepare_model` (on the CPU, freshly initialised)."""
    channels, size, _ = data.image_shape
    options = {**method.model_options(), **cfg.model_args}
    try:
        model = MODELS.get(cfg.model).builder(data.num_classes, in_channels=channels, image_size=size, **options)
    except TypeError as err:  # an option the builder does not take
        raise ConfigError(f"model {cfg.model!r} rejects model_args {options}: {err}") from err
    try:
        return method.prepare_model(model)
    except (ValueError, TypeError) as err:  # e.g. a method_args value that does not fit this model
        raise ConfigError(f"method {cfg.method!r}: {err}") from err


def _make_method(cfg: TrainConfig, data: ImageData) -> Method:
    try:
        method = METHODS.get(cfg.method).builder(cfg)
    except (ValueError, TypeError) as err:  # a bad method_args value: the method's message names it
        raise ConfigError(str(err)) from err
    method.data = data
    return method


def load_trained_model(path: str | os.PathLike, data: ImageData) -> nn.Module:
    """A model trained by ``pyfast train``, rebuilt from its checkpoint's config (method, model and their options)
    with the checkpoint's weights, in eval mode on the CPU. ``path``: a run directory or its ``last.pt``. The run
    must have trained on the same dataset as ``data`` (e.g. a distillation teacher)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path} (train one with `pyfast train --out DIR`, then pass DIR)")
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    if cfg.data != data.name:
        raise ConfigError(f"{path} was trained on {cfg.data!r}, this run uses {data.name!r}")
    model = build_model(cfg, _make_method(cfg, data), data)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def build_run(cfg: TrainConfig, world: World, device: torch.device) -> Run:
    """Data, method and model of a resolved, checked ``cfg`` (the model on ``device``, DDP-wrapped if distributed)."""
    data = DATASETS.get(cfg.data).builder(cfg.data_dir)
    method = _make_method(cfg, data)
    seed_everything(cfg.seed)
    model = build_model(cfg, method, data).to(device)
    trainer = model
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        trainer = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return Run(cfg, method, data.to(device), model, trainer, device, world, method.stages())


def steps_per_epoch(cfg: TrainConfig, num_train: int) -> int:
    steps = num_train // cfg.batch_size
    if steps == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({num_train} images)")
    return min(steps, cfg.max_steps_per_epoch or steps)


def _autocast(cfg: TrainConfig, device: torch.device):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=cfg.amp)


def train_epoch(run: Run, optimizer, scheduler, scaler, epoch: int, desc: str) -> tuple[float, float]:
    """One epoch over this rank's share of the training set. Returns (mean loss, accuracy) over all ranks."""
    cfg, data, world = run.cfg, run.data, run.world
    n = len(data.y_train)
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world.size, rank=world.rank, shuffle=True,
                                                  seed=cfg.seed, drop_last=False)
    sampler.set_epoch(epoch)
    local_batch = cfg.batch_size // world.size
    steps = steps_per_epoch(cfg, n)
    order = torch.tensor(list(sampler), dtype=torch.int64)[: steps * local_batch].to(run.device)
    augment = Augmentation.draw(n, data.crop_padding, data.hflip, epoch_generator(cfg.seed, epoch, 1)).to(run.device)
    run.trainer.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    t0 = time.perf_counter()
    with tqdm(order.split(local_batch), desc=desc, leave=False, disable=not (cfg.progress and world.is_main),
              unit="batch", dynamic_ncols=True) as bar:
        for step, idx in enumerate(bar):
            x, y = run.method.batch(data, idx, augment, epoch)
            loss, logits = run.method.train_step(run.trainer, x, y, optimizer, scaler, (step, steps),
                                                 lambda: _autocast(cfg, run.device))
            scheduler.step()
            run.interrupt.check()
            total_loss += loss.detach().double() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            if bar.disable:
                continue
            seconds = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct.item() / ((step + 1) * len(idx)):.1%}",
                            img_s=f"{(step + 1) * cfg.batch_size / seconds:.0f}", refresh=False)
    loss_sum, correct_sum, count = _all_reduce_sum([total_loss.item(), correct.item(), len(order)], run.device, world)
    return loss_sum / count, correct_sum / count


@torch.no_grad()
def evaluate(run: Run) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the test set in eval mode; each rank takes every world-size-th image."""
    data, world = run.data, run.world
    run.model.eval()
    index = torch.arange(world.rank, len(data.y_test), world.size, device=run.device)
    loss_sum, correct = 0.0, 0
    for idx in index.split(run.cfg.eval_batch_size):
        with _autocast(run.cfg, run.device):
            logits = run.model(data.normalize(data.x_test[idx])).float()
        loss_sum += nn.functional.cross_entropy(logits, data.y_test[idx], reduction="sum").item()
        correct += (logits.argmax(1) == data.y_test[idx]).sum().item()
    loss_sum, correct, count = _all_reduce_sum([loss_sum, correct, len(index)], run.device, world)
    return loss_sum / count, correct / count


def _stage_at(stages: list[Stage], epoch: int) -> tuple[int, int]:
    """(stage index, first global epoch of that stage) of global epoch ``epoch`` (0-based)."""
    first = 0
    for i, stage in enumerate(stages):
        if epoch < first + stage.epochs:
            return i, first
        first += stage.epochs
    return len(stages) - 1, first - stages[-1].epochs


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Run ``cfg`` to the end of its last stage (continuing ``OUT/last.pt`` if ``cfg.resume``).

    Returns the metrics history: one dict per epoch with ``epoch, stage, lr, train_loss, train_acc, test_loss,
    test_acc, seconds, images_per_s``. Raises :class:`ConfigError` for a config (or checkpoint) that cannot run and
    :class:`pyfast.BackendUnavailableError` for an explicit backend that is missing here. Under torchrun, every rank
    calls this; only rank 0 logs and writes files.
    """
    check_config(cfg)
    try:
        cfg = cfg.resolved()
    except RegistryError as err:
        raise ConfigError(str(err)) from err
    check_config(cfg)
    device = resolve_device(cfg.device)
    world, device, owns_group = init_distributed(device)
    if cfg.batch_size % world.size:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world.size})")
    say = log if world.is_main else (lambda line: None)
    try:
        with use_backend(cfg.backend), GracefulInterrupt() as interrupt:
            history = _train(cfg, world, device, say, interrupt)
        if owns_group:
            # Every rank done (rank 0 writes the last checkpoint) before any rank tears the group down. One CI run saw
            # rank 1 abort in its teardown ("terminate called without an active exception"); not reproduced in 25
            # runs since. The barrier makes the ranks leave together, so none tears down while another still works.
            dist.barrier()
        return history
    finally:
        if owns_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, world: World, device: torch.device, say: Callable[[str], None],
           interrupt: GracefulInterrupt) -> list[dict]:
    out = Path(cfg.out)
    ckpt_path = out / "last.pt"
    run = build_run(cfg, world, device)
    run.interrupt = interrupt
    steps = steps_per_epoch(cfg, len(run.data.y_train))
    total_epochs = sum(s.epochs for s in run.stages)

    start, history, ckpt = 0, [], None
    if cfg.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_resumable(ckpt["config"], cfg, ckpt_path)
        start, history = ckpt["epoch"], ckpt["history"]
        say(f"resuming {ckpt_path} after epoch {start}")
    elif cfg.resume:
        say(f"no checkpoint at {ckpt_path}; starting from scratch")
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    n_params = sum(p.numel() for p in run.model.parameters())
    say(f"{cfg.method} | {cfg.model} ({n_params / 1e6:.2f}M parameters) | {cfg.data} "
        f"({len(run.data.y_train)} train / {len(run.data.y_test)} test) | {device}"
        f"{f' x {world.size} processes' if world.size > 1 else ''} | {total_epochs} epochs of {steps} steps")
    if start >= total_epochs:
        say(f"{ckpt_path} has already trained {start} epochs (of {total_epochs}); nothing to do")
        return history

    stage_index, stage_first = _stage_at(run.stages, start)
    optimizer = scheduler = None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    for epoch in range(start, total_epochs):
        stage_index, stage_first = _stage_at(run.stages, epoch)
        stage = run.stages[stage_index]
        if optimizer is None or epoch == stage_first:  # a new stage (or the resumed one): fresh optimiser
            run.method.enter_stage(run.model, stage)
            optimizer = make_optimizer(cfg, run.method.param_groups(run.model))
            scheduler = make_scheduler(cfg, optimizer, steps, stage.epochs)
            if ckpt is not None:  # weights always carry over; the optimiser only within the stage
                run.model.load_state_dict(ckpt["model"])
                if epoch != stage_first:
                    optimizer.load_state_dict(ckpt["optimizer"])
                    scheduler.load_state_dict(ckpt["scheduler"])
                    scaler.load_state_dict(ckpt["scaler"])
                set_rng_state(ckpt["rng"])
                ckpt = None
            if len(run.stages) > 1:
                say(f"stage {stage_index + 1}/{len(run.stages)}: {stage.name}, {stage.epochs} epochs")
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_epoch(run, optimizer, scheduler, scaler, epoch,
                                            desc=f"epoch {epoch + 1}/{total_epochs}")
        train_seconds = time.perf_counter() - t0
        test_loss, test_acc = evaluate(run)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "stage": stage.name, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                  "test_loss": test_loss, "test_acc": test_acc, "seconds": round(seconds, 3),
                  "images_per_s": round(steps * cfg.batch_size / train_seconds, 1)}
        history.append(record)
        say(f"epoch {epoch + 1}/{total_epochs}{f' [{stage.name}]' if len(run.stages) > 1 else ''}  "
            f"train_loss {train_loss:.4f}  train_acc {train_acc:6.2%}  test_loss {test_loss:.4f}  "
            f"test_acc {test_acc:6.2%}  {seconds:.1f}s ({record['images_per_s']:.0f} img/s)")
        if world.is_main:
            save_checkpoint(ckpt_path, cfg, run.model, optimizer, scheduler, scaler, epoch + 1, history)
            write_metrics(out, history)
        interrupt.check()  # a Ctrl-C during evaluation or the writes stops here, after them
    return history
