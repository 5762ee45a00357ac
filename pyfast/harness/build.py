"""From a resolved config to live objects: the dataset, the method, the model (and its DDP wrapper)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from pyfast.data import DatasetFormatError, ImageData
from pyfast.harness.checkpoints import load_checkpoint
from pyfast.harness.config import ConfigError, TrainConfig, config_from_dict
from pyfast.harness.distributed import World
from pyfast.harness.rng import seed_everything
from pyfast.harness.signals import GracefulInterrupt
from pyfast.methods.base import Method, Stage
from pyfast.registry import DATASETS, METHODS, MODELS


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


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def build_model(cfg: TrainConfig, method: Method, data: ImageData) -> nn.Module:
    """The model of a resolved ``cfg`` for ``data``: the registry's builder with the method's and the config's
    options, then the method's :meth:`~pyfast.methods.Method.prepare_model` (on the CPU, freshly initialised)."""
    channels, size, _ = data.image_shape
    options = {**method.model_options(), **cfg.model_args}
    try:
        model = MODELS.get(cfg.model).builder(data.num_classes, in_channels=channels, image_size=size, **options)
    except (TypeError, ValueError) as err:  # an option the builder does not take, or a value it refuses
        raise ConfigError(f"model {cfg.model!r} rejects model_args {options}: {err}") from err
    try:
        return method.prepare_model(model)
    except (ValueError, TypeError) as err:  # e.g. a method_args value that does not fit this model
        raise ConfigError(f"method {cfg.method!r}: {err}") from err


def make_method(cfg: TrainConfig, data: ImageData) -> Method:
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
    model = build_model(cfg, make_method(cfg, data), data)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load_data(name: str, data_dir: str | None) -> ImageData:
    """The registered dataset ``name`` (files under ``data_dir``); a file that is there but malformed is a
    :class:`ConfigError` naming it (a missing one stays a ``DatasetNotFoundError`` saying what to download)."""
    try:
        return DATASETS.get(name).builder(data_dir)
    except DatasetFormatError as err:
        raise ConfigError(f"--data {name}: {err}") from err


def build_run(cfg: TrainConfig, world: World, device: torch.device) -> Run:
    """Data, method and model of a resolved, checked ``cfg`` (the model on ``device``, DDP-wrapped if distributed)."""
    data = load_data(cfg.data, cfg.data_dir)
    method = make_method(cfg, data)
    seed_everything(cfg.seed)
    model = build_model(cfg, method, data).to(device)
    local_batch = cfg.batch_size // world.size
    if local_batch == 1 and any(isinstance(m, _BATCH_NORMS) for m in model.modules()):
        raise ConfigError(f"batch_size {cfg.batch_size} leaves 1 image per process and step, and {cfg.model!r} has "
                          "batch normalisation, which needs at least 2 to train; use a larger batch_size")
    trainer = model
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        trainer = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return Run(cfg, method, data.to(device), model, trainer, device, world, method.stages())
