"""The training-method interface of ``pyfast train --method NAME``.

A method wraps the standard supervised loop at a few hooks; everything else (data, augmentation, optimiser, schedule,
AMP, DDP, checkpoints) is the harness's (:mod:`pyfast.harness`). A run is a list of :class:`Stage` s trained one after
the other on the same model; each stage gets a fresh optimiser and learning-rate schedule.

To add a method: subclass :class:`Method`, override what differs, and register it::

    @METHODS.register("my-method", "one line for `pyfast train --list`")
    class MyMethod(Method):
        default_model = "resnet18"
        model_requirement = "any classifier with Linear layers"
        def prepare_model(self, model): ...
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn


class ModelMismatchError(ValueError):
    """Raised by :meth:`Method.prepare_model` for a model without what the method needs (the harness's message adds
    the method's ``model_requirement``)."""


def require_modules(model: nn.Module, kinds: type | tuple[type, ...], what: str) -> nn.Module:
    """``model`` if one of its modules is an instance of ``kinds``; else a :class:`ModelMismatchError` saying that
    it has no ``what``."""
    if not any(isinstance(m, kinds) for m in model.modules()):
        raise ModelMismatchError(f"{type(model).__name__} has no {what}")
    return model


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run: ``epochs`` epochs with a fresh optimiser; ``options`` are method-specific (e.g. T)."""

    name: str
    epochs: int
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


class Method:
    """Plain supervised training with cross-entropy (optionally label-smoothed). Subclasses override the hooks.

    ``cfg`` is the run's :class:`pyfast.harness.TrainConfig`; ``cfg.method_args`` holds the method's own options (from
    ``--method-arg KEY=VALUE`` or the config file), validated by :meth:`check_args`. ``self.data`` (the run's
    :class:`pyfast.data.ImageData`, on the CPU) is set by the harness before :meth:`prepare_model` is called.
    """

    default_model = "resnet18"
    default_data = "digits"
    arg_defaults: ClassVar[dict[str, Any]] = {}  # the method's options and their defaults
    # What the method needs of a model: one phrase for `pyfast train --list` and for the error of a model it cannot
    # train. The harness refuses a model not in supported_models (when set) before building it, e.g. for a method
    # whose model_options only its own models take; prepare_model raises ModelMismatchError for a built model that
    # lacks what the method needs (see require_modules).
    model_requirement: ClassVar[str] = "any classifier"
    supported_models: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, cfg):
        self.cfg = cfg
        unknown = sorted(set(cfg.method_args) - set(self.arg_defaults))
        if unknown:
            known = ", ".join(sorted(self.arg_defaults)) or "none"
            raise ValueError(f"method_args: unknown option(s) {', '.join(unknown)} for this method; known: {known}")
        self.args = {**self.arg_defaults, **cfg.method_args}
        self.data = None
        self.check_args()

    def check_args(self) -> None:
        """Raise ValueError (or TypeError) naming a bad ``self.args`` entry."""

    def model_options(self) -> dict[str, Any]:
        """Extra keyword arguments for the model builder (``--model-arg`` values override them)."""
        return {}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Transform the freshly built model (e.g. swap layers); called once, before the weights are loaded."""
        return model

    def stages(self) -> list[Stage]:
        """The run's stages; the default is one stage of ``cfg.epochs`` epochs."""
        return [Stage("train", self.cfg.epochs)]

    def enter_stage(self, model: nn.Module, stage: Stage) -> None:
        """Adapt ``model`` (the unwrapped module) to ``stage``; called at the start of each stage and on resume."""

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Optimiser parameter groups (default: one group of every parameter that requires grad)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def batch(self, data, index: torch.Tensor, augment, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training inputs of the images ``index [B]`` (int64, on the training device) in epoch ``epoch`` (0-based, counted over the whole run):
        ``(x [B, C, H, W] float32, y [B] int64)``. ``data`` is the run's :class:`pyfast.data.ImageData` on the
        training device and ``augment`` the epoch's :class:`pyfast.data.Augmentation` (its random choices are drawn
        per image index). The default crops/flips with ``augment`` and normalises. Override it to keep per-sample
        state keyed by ``index`` (e.g. a bank of last epoch's predictions) or to build other inputs and targets
        (e.g. replayed augmentations with stored soft labels); ``y`` is what the epoch's accuracy is counted
        against."""
        return data.normalize(augment.apply(data.x_train[index], index)), data.y_train[index]

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits)`` of one training batch ``x [B, C, H, W]`` (normalised, augmented), ``y [B]``."""
        logits = model(x)
        return nn.functional.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing), logits

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer, scaler,
                   progress: tuple[int, int], autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a batch; returns ``(loss, logits)`` for the epoch's statistics. ``progress`` is
        ``(batch index, batches per epoch)``; ``autocast()`` gives the run's autocast context. The default is
        :meth:`loss`, backward through ``scaler``, one ``optimizer`` step; methods with their own update (two passes,
        gradient masks before the step) override it."""
        with autocast():
            loss, logits = self.loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss, logits
