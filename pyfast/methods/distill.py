"""Knowledge-distillation methods of ``pyfast train``: offline (``kd``, ``nkd``, ``pld``: a trained teacher
guides a student), online (``bd-kd``: a student and a teacher trained together) and self-distillation (``uskd``:
no teacher). The losses are in :mod:`pyfast.losses`.

Offline teacher: ``--method-arg teacher=DIR``, a run directory (or its ``last.pt``) that ``pyfast train`` wrote on the
same dataset, e.g.::

    pyfast train --method standard --model resnet18 --out runs/teacher
    pyfast train --method kd --model resnet18 --model-arg width=0.25 --method-arg teacher=runs/teacher

The teacher is rebuilt from its checkpoint's config, kept in eval mode without gradients, and is not part of the
student's checkpoint (resuming reloads it from ``teacher``).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import nn

from pyfast.losses import USKDLoss, bdkd_losses, kd_loss, nkd_loss, pld_loss
from pyfast.methods.base import Method
from pyfast.registry import METHODS, MODELS


def _number(args: dict, name: str, low: float = 0.0, strict: bool = False) -> None:
    v = args[name]
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and (v > low if strict else
                                                                                           v >= low)
    if not ok:
        raise ValueError(f"method_args: {name} must be a finite number {'>' if strict else '>='} {low}, got {v!r}")


class OfflineDistillation(Method, abc.ABC):
    """A student trained against a frozen teacher's logits; subclasses define :meth:`distill_loss`."""

    default_model = "resnet18"
    arg_defaults: ClassVar[dict] = {"teacher": None}

    def check_args(self) -> None:
        if not isinstance(self.args["teacher"], str) or not self.args["teacher"]:
            raise ValueError(f"method_args: teacher must be the run directory of a trained teacher "
                             f"(--method-arg teacher=DIR), got {self.args['teacher']!r}")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        from pyfast.train import load_trained_model

        self.teacher = load_trained_model(self.args["teacher"], self.data).requires_grad_(False)
        return model

    def loss(self, model, x, y):
        if next(self.teacher.parameters()).device != x.device:
            self.teacher.to(x.device)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = model(x)
        return self.distill_loss(logits, teacher_logits, y), logits

    @abc.abstractmethod
    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of student logits [B, C] given the teacher's [B, C] and the labels [B]."""


@METHODS.register("kd", "Hinton KD from a trained teacher (--method-arg teacher=DIR): ce_weight CE + kd_weight KD")
class KD(OfflineDistillation):
    arg_defaults: ClassVar[dict] = {"teacher": None, "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}

    def check_args(self) -> None:
        super().check_args()
        _number(self.args, "temperature", strict=True)
        _number(self.args, "ce_weight")
        _number(self.args, "kd_weight")

    def distill_loss(self, student, teacher, y):
        ce = nn.functional.cross_entropy(student, y)
        return self.args["ce_weight"] * ce + self.args["kd_weight"] * kd_loss(student, teacher, self.args["temperature"])


@METHODS.register("nkd", "NKD: CE + normalised KD (target and non-target terms) from a trained teacher")
class NKD(OfflineDistillation):
    arg_defaults: ClassVar[dict] = {"teacher": None, "temperature": 1.0, "gamma": 1.5}

    def check_args(self) -> None:
        super().check_args()
        _number(self.args, "temperature", strict=True)
        _number(self.args, "gamma")

    def distill_loss(self, student, teacher, y):
        return nn.functional.cross_entropy(student, y) + nkd_loss(student, teacher, y, self.args["temperature"],
                                                                  self.args["gamma"])


@METHODS.register("pld", "Plackett-Luce distillation (replaces CE + KD) from a trained teacher")
class PLD(OfflineDistillation):
    arg_defaults: ClassVar[dict] = {"teacher": None, "tau_t": 1.0}

    def check_args(self) -> None:
        super().check_args()
        _number(self.args, "tau_t", strict=True)

    def distill_loss(self, student, teacher, y):
        return pld_loss(student, teacher, y, self.args["tau_t"])


class OnlinePair(nn.Module):
    """A student and a teacher trained together: in training ``forward`` returns both logits ``([B, C], [B, C])``
    (one call, so DistributedDataParallel syncs both), in eval the student's logits only (the model that ships)."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student, self.teacher = student, teacher

    def forward(self, x: torch.Tensor):
        if self.training:
            return self.student(x), self.teacher(x)
        return self.student(x)


@METHODS.register("bd-kd", "BD-KD online distillation: student (--model) and teacher (teacher_model) trained together")
class BDKD(Method):
    default_model = "resnet18"
    arg_defaults: ClassVar[dict] = {"teacher_model": "resnet18", "teacher_model_args": {}, "temperature": 4.0,
                                    "w_high": 1.0, "w_low": 0.5}

    def check_args(self) -> None:
        if self.args["teacher_model"] not in MODELS:
            raise ValueError(f"method_args: teacher_model must be one of {', '.join(MODELS.names())}, got "
                             f"{self.args['teacher_model']!r}")
        if not isinstance(self.args["teacher_model_args"], dict):
            raise TypeError("method_args: teacher_model_args must be a mapping of model options")
        _number(self.args, "temperature", strict=True)
        _number(self.args, "w_high")
        _number(self.args, "w_low")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        channels, size, _ = self.data.image_shape
        teacher = MODELS.get(self.args["teacher_model"]).builder(
            self.data.num_classes, in_channels=channels, image_size=size, **self.args["teacher_model_args"])
        return OnlinePair(model, teacher)

    def loss(self, model, x, y):
        student, teacher = model(x)
        loss_s, loss_t = bdkd_losses(student, teacher, y, self.args["temperature"], self.args["w_high"],
                                     self.args["w_low"])
        return loss_s + loss_t, student


class SelfDistilled(nn.Module):
    """A backbone whose mid-level features (the output of submodule ``layer``, globally average-pooled) feed USKD's
    weak head. Training ``forward`` returns ``(logits, features [B, channels])``; eval returns the logits alone, and
    :meth:`inference_model` is the backbone without the head."""

    def __init__(self, backbone: nn.Module, layer: str, uskd: USKDLoss):
        super().__init__()
        self.backbone, self.uskd, self.layer = backbone, uskd, layer
        self._features = None
        backbone.get_submodule(layer).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._features = output

    def forward(self, x: torch.Tensor):
        logits = self.backbone(x)
        features, self._features = self._features, None
        if not self.training:
            return logits
        return logits, features.flatten(2).mean(2) if features.dim() > 2 else features

    def inference_model(self) -> nn.Module:
        return self.backbone


@METHODS.register("uskd", "USKD self-distillation: CE + target, Zipf non-target and weak-head terms (no teacher)")
class USKD(Method):
    default_model = "resnet18"
    arg_defaults: ClassVar[dict] = {"feature_layer": "layers.5", "alpha": 0.1, "beta": 0.1, "mu": 0.1}

    def check_args(self) -> None:
        for name in ("alpha", "beta", "mu"):
            _number(self.args, name)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        layer = self.args["feature_layer"]
        try:
            tap = model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"method_args: feature_layer {layer!r} is not a submodule of {type(model).__name__} "
                             "(name one from model.named_modules(), e.g. layers.5 for resnet18)") from None
        seen = []
        handle = tap.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
        with torch.no_grad():
            was_training = model.training
            model.eval()(torch.zeros(1, *self.data.image_shape))
            model.train(was_training)
        handle.remove()
        uskd = USKDLoss(seen[0], self.data.num_classes, self.args["alpha"], self.args["beta"], self.args["mu"])
        return SelfDistilled(model, layer, uskd)

    def loss(self, model, x, y):
        logits, features = model(x)
        core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        return nn.functional.cross_entropy(logits, y) + core.uskd(logits, features, y), logits
