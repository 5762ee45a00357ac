"""From a resolved config to live objects: the dataset, the method, the model (and its DDP wrapper)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pyfast.data import DatasetFormatError, ImageData
from pyfast.harness.checkpoints import load_checkpoint
from pyfast.harness.config import ConfigError, TrainConfig, config_from_dict
from pyfast.harness.distributed import World
from pyfast.harness.rng import seed_everything
from pyfast.harness.signals import GracefulInterrupt
from pyfast.methods.base import Method, ModelMismatchError, Stage
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


WEIGHTS_HELP = ("weights are never downloaded: fetch them yourself, e.g. timm's from the Hugging Face hub "
                "(huggingface_hub.hf_hub_download('timm/NAME', 'model.safetensors'), https://huggingface.co/timm) or "
                "torchvision's from the URL of the weights enum (https://pytorch.org/vision/stable/models.html), or "
                "pass a pyfast run's last.pt")


def _mismatch(cfg: TrainConfig, method: Method, why: str = "") -> ConfigError:
    return ConfigError(f"method {cfg.method!r} needs {method.model_requirement}, got model {cfg.model!r}"
                       f"{f' ({why})' if why else ''}")


def build_model(cfg: TrainConfig, method: Method, data: ImageData, load_pretrained: bool = False,
                log: Callable[[str], None] = print) -> nn.Module:
    """The model of a resolved ``cfg`` for ``data``: the registry's builder with the method's and the config's
    options, the weights of ``cfg.pretrained`` if ``load_pretrained`` (:func:`load_pretrained_weights`; ``log`` gets
    its one-line summary), then the method's :meth:`~pyfast.methods.Method.prepare_model` (on the CPU). A model the
    method cannot train is a :class:`ConfigError` giving the method's ``model_requirement``."""
    if method.supported_models is not None and cfg.model not in method.supported_models:
        raise _mismatch(cfg, method)
    channels, size, _ = data.image_shape
    options = {**method.model_options(), **cfg.model_args}
    try:
        model = MODELS.get(cfg.model).builder(data.num_classes, in_channels=channels, image_size=size, **options)
    except (TypeError, ValueError) as err:  # an option the builder does not take, or a value it refuses
        raise ConfigError(f"model {cfg.model!r} rejects model_args {options}: {err}") from err
    if load_pretrained and cfg.pretrained is not None:
        log(load_pretrained_weights(model, cfg.pretrained))
    try:
        return method.prepare_model(model)
    except ModelMismatchError as err:
        raise _mismatch(cfg, method, str(err)) from err
    except (ValueError, TypeError) as err:  # e.g. a method_args value that does not fit this model
        raise ConfigError(f"method {cfg.method!r}: {err}") from err


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a ``.safetensors`` file, or a ``torch.save`` of a state dict or of a checkpoint
    holding one under ``"model"`` (pyfast's ``last.pt``) or ``"state_dict"`` (timm's training scripts)."""
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch  # optional: only safetensors files need it

            state = safetensors.torch.load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as err:
        raise ConfigError(f"pretrained {path}: reading .safetensors needs the safetensors package "
                          f"(pip install safetensors): {err}") from None
    except Exception as err:  # each format has its own errors (unpickling, a bad header, a torn file)
        raise ConfigError(f"pretrained {path} is unreadable as a .safetensors / torch.save weights file "
                          f"({type(err).__name__}: {err}); {WEIGHTS_HELP}") from err
    if not isinstance(state, dict):
        state = {}
    state = next((state[k] for k in ("model", "state_dict") if isinstance(state.get(k), dict)), state)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(f"pretrained {path} holds no state dict (a mapping of parameter names to tensors); "
                          f"{WEIGHTS_HELP}")
    return tensors


def _some(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_pretrained_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Load into ``model`` every tensor of the weights file ``path`` whose name and shape fit (see
    :func:`_read_state_dict` for the formats); a tensor whose shape differs, such as a classifier head trained for
    another number of classes, is left as initialised. Returns a one-line summary of what was loaded and what was
    left. A missing or unreadable file, or one with no tensor that fits, is a :class:`ConfigError` naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"pretrained {str(path)!r}: no such file; {WEIGHTS_HELP}")
    state = _read_state_dict(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not fits:
        raise ConfigError(f"pretrained {path}: none of its {len(state)} tensors fits {type(model).__name__} by name "
                          f"and shape (the file has {_some(list(state))}; the model {_some(list(own))}): is it "
                          f"a file of another model? {WEIGHTS_HELP}")
    model.load_state_dict(fits, strict=False)
    left = [f"{k} (file {list(state[k].shape)}, model {list(v.shape)})" if k in state else f"{k} (not in the file)"
            for k, v in own.items() if k not in fits]
    unused = [k for k in state if k not in own]
    return (f"pretrained {path}: loaded {len(fits)} of the model's {len(own)} tensors"
            + (f"; left as initialised: {_some(left)}" if left else "")
            + (f"; unused from the file: {_some(unused)}" if unused else ""))


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
    model = build_model(cfg, make_method(cfg, data), data)  # the checkpoint has the weights: not cfg.pretrained
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load_data(name: str, data_dir: str | None) -> ImageData:
    """The registered dataset ``name`` (files under ``data_dir``); a file that is there but malformed is a
    :class:`ConfigError` naming it (a missing one stays a ``DatasetNotFoundError`` saying what to download)."""
    try:
        return DATASETS.get(name).builder(data_dir)
    except DatasetFormatError as err:
        raise ConfigError(f"--data {name}: {err}") from err


def build_run(cfg: TrainConfig, world: World, device: torch.device, load_pretrained: bool = True,
              log: Callable[[str], None] = print) -> Run:
    """Data, method and model of a resolved, checked ``cfg`` (the model on ``device``, DDP-wrapped if distributed).
    ``load_pretrained``: load ``cfg.pretrained`` (not when resuming: the checkpoint has the weights)."""
    data = load_data(cfg.data, cfg.data_dir)
    method = make_method(cfg, data)
    seed_everything(cfg.seed)
    model = build_model(cfg, method, data, load_pretrained, log).to(device)
    local_batch = cfg.batch_size // world.size
    if local_batch == 1 and any(isinstance(m, _BATCH_NORMS) for m in model.modules()):
        raise ConfigError(f"batch_size {cfg.batch_size} leaves 1 image per process and step, and {cfg.model!r} has "
                          "batch normalisation, which needs at least 2 to train; use a larger batch_size")
    trainer = model
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        trainer = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return Run(cfg, method, data.to(device), model, trainer, device, world, method.stages())
