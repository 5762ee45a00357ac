"""The configuration of a run: :class:`TrainConfig`, read from flags and config files, checked before anything runs.

Everything a run depends on is a field of :class:`TrainConfig`; :func:`check_config` names the first field whose value
cannot run, as a :class:`ConfigError` (which the CLI turns into exit status 2 with that message).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import torch

from pyfast.backends import BACKENDS
from pyfast.registry import DATASETS, METHODS, MODELS, RegistryError

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("cosine", "constant")
ON_NONFINITE = ("stop", "skip")


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
    ``out`` that already holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (start over).
    ``on_nonfinite``: a step whose loss is NaN or infinite stops the run (``"stop"``, naming the step; the last
    checkpoint is kept) or is skipped without an optimiser step (``"skip"``, counted in the metrics).
    ``model`` may also be ``timm:NAME`` or ``torchvision:NAME`` (:mod:`pyfast.models.zoo`). ``pretrained``: a local
    weights file (``.pth`` / ``.pt`` state dict, a pyfast ``last.pt``, or ``.safetensors``) loaded into the model
    before the method prepares it, tensors whose shape differs (a head for other classes) left as initialised; a
    resumed run takes its weights from the checkpoint instead.
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
    overwrite: bool = False
    amp: bool = False
    device: str = "auto"
    backend: str = "auto"
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrained: str | None = None
    method_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 500
    on_nonfinite: str = "stop"
    progress: bool = True

    def resolved(self) -> TrainConfig:
        """A copy with ``model``, ``data`` and ``out`` filled in from the method's defaults."""
        method = METHODS.get(self.method).builder
        model = self.model or method.default_model
        data = self.data or method.default_data
        out = self.out or f"runs/{self.method}-{model.replace(':', '-')}-{data}"  # timm:NAME -> timm-NAME
        return dataclasses.replace(self, model=model, data=data, out=out)


# Config fields that may change between a checkpoint and its resumption (epochs may also grow).
RESUME_MAY_CHANGE = {"epochs", "out", "resume", "overwrite", "device", "backend", "progress", "eval_batch_size",
                     "data_dir", "on_nonfinite"}


def _type_name(kind) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping of option names to values"}
    return names[kind]


def _check_type(name: str, value: Any, annotation: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` has the type ``annotation`` of field ``name`` (no coercion: the
    string "no" is not a bool, 1.0 is not an int, a bool is not a number)."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (
        annotation,)
    allowed = [typing.get_origin(o) or o for o in options]
    if value is None and type(None) in allowed:
        return
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind is str and isinstance(value, str):
            return
        if kind is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return
    wanted = " or ".join(_type_name(k) if k is not type(None) else "null" for k in allowed)
    raise ConfigError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a mapping (a parsed YAML/TOML/JSON file, flags, or both): unknown keys and values
    of the wrong type are a :class:`ConfigError` naming the key. The one typed schema is :class:`TrainConfig`'s
    annotations, for flags and files alike."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of option names to values, got {type(values).__name__}")
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(hints))}")
    for name, value in values.items():
        _check_type(name, value, hints[name])
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
        if value is not None:
            try:
                registry.get(value)
            except RegistryError as err:  # its message lists the names, or says where the library lists them
                raise ConfigError(str(err)) from None
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
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume and overwrite exclude each other: continue the run in out, or start it over")
    for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("backend", BACKENDS),
                          ("on_nonfinite", ON_NONFINITE)):
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
