"""Knowledge-distillation methods of ``pyfast train``: offline (``kd``, ``nkd``, ``pld``: a trained teacher
guides a student), online (``bd-kd``: a student and a teacher trained together) and self-distillation (``uskd``,
``lsskd``: no teacher). The losses are in :mod:`pyfast.losses`.

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

from pyfast.harness.build import load_trained_model
from pyfast.losses import (
    EpochTargetBank,
    SADHead,
    USKDLoss,
    bdkd_losses,
    kd_loss,
    lsskd_loss,
    nkd_loss,
    pld_loss,
    rotated_copies,
)
from pyfast.methods.base import Method, ModelMismatchError
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
    model_requirement = "any classifier (the teacher: a pyfast train run on the same data, any model)"
    arg_defaults: ClassVar[dict] = {"teacher": None}

    def check_args(self) -> None:
        if not isinstance(self.args["teacher"], str) or not self.args["teacher"]:
            raise ValueError(f"method_args: teacher must be the run directory of a trained teacher "
                             f"(--method-arg teacher=DIR), got {self.args['teacher']!r}")

    def prepare_model(self, model: nn.Module) -> nn.Module:
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
    """NKD with the official CIFAR-100 config's T=3, gamma=3.5 (yzd-v/cls_KD ``configs/distillers/cifar100``): this
    harness trains CIFAR-scale data. The paper's ImageNet defaults are T=1, gamma=1.5 (``--method-arg temperature=1
    --method-arg gamma=1.5``)."""

    arg_defaults: ClassVar[dict] = {"teacher": None, "temperature": 3.0, "gamma": 3.5}

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
            raise ValueError(f"method_args: teacher_model must be one of {', '.join(MODELS.choices())}, got "
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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _tap_shapes(model: nn.Module, layers: list[str], image_shape: tuple, arg: str) -> list[torch.Size]:
    """Output shapes of the submodules ``layers`` of ``model`` on one zero image (in eval mode); a name that is not a
    submodule is a ModelMismatchError naming the method argument ``arg`` and the model's top-level modules."""
    for layer in layers:
        try:
            model.get_submodule(layer)
        except AttributeError:
            children = ", ".join(name for name, _ in model.named_children())
            raise ModelMismatchError(
                f"method_args: {arg} {layer!r} is not a submodule of {type(model).__name__} (name one from "
                f"model.named_modules(); its top-level modules: {children})") from None
    was_training = model.training
    with torch.no_grad():
        _, outputs = _run_tapped(model.eval(), layers, torch.zeros(1, *image_shape))
    model.train(was_training)
    return [o.shape for o in outputs]


def _run_tapped(backbone: nn.Module, layers: list[str], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``backbone(x)`` and the outputs of its submodules ``layers`` in that call (forward hooks that live for this
    call only, so the backbone carries none at inference)."""
    seen = {}
    handles = [backbone.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
               for name in layers]
    try:
        out = backbone(x)
    finally:
        for h in handles:
            h.remove()
    return out, [seen[name] for name in layers]


class SelfDistilled(nn.Module):
    """A backbone whose mid-level features (the output of submodule ``layer``, globally average-pooled) feed USKD's
    weak head. Training ``forward`` returns ``(logits, features [B, channels])``; eval returns the logits alone, and
    :meth:`inference_model` is the backbone without the head."""

    def __init__(self, backbone: nn.Module, layer: str, uskd: USKDLoss):
        super().__init__()
        self.backbone, self.uskd, self.layer = backbone, uskd, layer

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.backbone(x)
        logits, (features,) = _run_tapped(self.backbone, [self.layer], x)
        return logits, features.flatten(2).mean(2) if features.dim() > 2 else features

    def inference_model(self) -> nn.Module:
        return self.backbone


@METHODS.register("uskd", "USKD self-distillation: CE + target, Zipf non-target and weak-head terms (no teacher)")
class USKD(Method):
    default_model = "resnet18"
    model_requirement = ("a model with the submodule --method-arg feature_layer=NAME (default layers.5, a stage of "
                         "resnet18; e.g. layer3 of timm:resnet18)")
    arg_defaults: ClassVar[dict] = {"feature_layer": "layers.5", "alpha": 0.1, "beta": 0.1, "mu": 0.1}

    def check_args(self) -> None:
        for name in ("alpha", "beta", "mu"):
            _number(self.args, name)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        layer = self.args["feature_layer"]
        (shape,) = _tap_shapes(model, [layer], self.data.image_shape, "feature_layer")
        uskd = USKDLoss(shape[1], self.data.num_classes, self.args["alpha"], self.args["beta"], self.args["mu"])
        return SelfDistilled(model, layer, uskd)

    def loss(self, model, x, y):
        logits, features = model(x)
        return nn.functional.cross_entropy(logits, y) + _unwrap(model).uskd(logits, features, y), logits


class LayeredSelfDistilled(nn.Module):
    """A backbone with :class:`~pyfast.losses.SADHead` s on the outputs of its submodules ``layers`` (shallowest
    first) and the PS-KD bank of last epoch's predictions (``bank``, buffers only).

    Training ``forward(x [B, C, H, H])`` passes the M rotated copies of the batch through the backbone at once
    (``[M * B, ...]``, see :func:`~pyfast.losses.rotated_copies`) and returns ``(logits [B, N]`` of the unrotated
    images, ``aux_logits``: L x ``[B, M, N * M]``, ``aux_features``: L x ``[B, M, D])``. Eval returns the backbone's
    logits alone, and :meth:`inference_model` is the backbone without heads or bank.
    """

    def __init__(self, backbone: nn.Module, layers: list[str], heads: nn.ModuleList, bank: EpochTargetBank,
                 n_trans: int):
        super().__init__()
        self.backbone, self.heads, self.bank = backbone, heads, bank
        self.layers, self.n_trans = list(layers), n_trans

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.backbone(x)
        B, M = x.shape[0], self.n_trans
        out, taps = _run_tapped(self.backbone, self.layers, rotated_copies(x, M))
        aux_logits, aux_features = [], []
        for head, f in zip(self.heads, taps):
            a, h = head(f, return_features=True)
            aux_logits.append(a.view(M, B, -1).transpose(0, 1))
            aux_features.append(h.view(M, B, -1).transpose(0, 1))
        return out[:B], aux_logits, aux_features

    def inference_model(self) -> nn.Module:
        return self.backbone


@METHODS.register("lsskd", "LSSKD layered self-distillation: rotation-SAD heads after each stage + PS-KD (no teacher)")
class LSSKD(Method):
    """Layered self-supervised KD (:func:`pyfast.losses.lsskd_loss`, whose docstring says what is reconstructed).

    Options: ``layers`` (the tapped submodules, default the four stage outputs of resnet18), ``tau``, ``sad_weight``,
    ``kd_weight``, ``ens_weight``, ``feat_weight`` (the loss's), ``alpha_max`` (PS-KD's alpha_T) and ``rotations``
    (M, 1..4: the backbone's training batch is M times the data batch). Every head's feature module ends at the channel count of
    the deepest tapped layer, so the feature alignment compares like with like. The bank of last epoch's
    predictions is a buffer of the model (checkpointed, exact on ``--resume``), kept equal on all DDP ranks by
    all-gathering each step's predictions, and excluded from DDP's own buffer broadcast.
    """

    default_model = "resnet18"
    model_requirement = ("a model with the [B, C, H, W]-output submodules --method-arg layers=[...] (default the four "
                         "stages of resnet18; e.g. [layer1, layer2, layer3, layer4] of timm:resnet18)")
    arg_defaults: ClassVar[dict] = {"layers": ["layers.1", "layers.3", "layers.5", "layers.7"], "tau": 3.0,
                                    "sad_weight": 1.0, "kd_weight": 1.0, "ens_weight": 0.0, "feat_weight": 0.0,
                                    "alpha_max": 0.8,
                                    "rotations": 4}

    def __init__(self, cfg):
        super().__init__(cfg)
        self._index, self._epoch = None, 0  # the current batch's sample indices and epoch (set by batch())

    def check_args(self) -> None:
        layers = self.args["layers"]
        if (not isinstance(layers, list) or not layers or not all(isinstance(n, str) and n for n in layers)
                or len(set(layers)) != len(layers)):
            raise ValueError(f"method_args: layers must be a non-empty list of distinct submodule names, got {layers!r}")
        _number(self.args, "tau", strict=True)
        for name in ("sad_weight", "kd_weight", "ens_weight", "feat_weight", "alpha_max"):
            _number(self.args, name)
        if self.args["alpha_max"] > 1:
            raise ValueError(f"method_args: alpha_max must be in [0, 1], got {self.args['alpha_max']!r}")
        m = self.args["rotations"]
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 4:
            raise ValueError(f"method_args: rotations must be an integer in 1..4, got {m!r}")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        _, height, width = self.data.image_shape
        if self.args["rotations"] > 1 and height != width:
            raise ValueError(f"method_args: rotations > 1 needs square images, {self.data.name} has {height}x{width}")
        layers = self.args["layers"]
        shapes = _tap_shapes(model, layers, self.data.image_shape, "layers")
        if any(len(s) != 4 for s in shapes):
            raise ModelMismatchError(f"method_args: layers must name modules with [B, C, H, W] outputs, got shapes "
                                     f"{[tuple(s) for s in shapes]}")
        out_ch = shapes[-1][1]
        heads = nn.ModuleList(SADHead(s[1], self.data.num_classes, self.args["rotations"], out_ch) for s in shapes)
        bank = EpochTargetBank(len(self.data.y_train), self.data.num_classes)
        wrapped = LayeredSelfDistilled(model, layers, heads, bank, self.args["rotations"])
        # The method keeps the bank equal on all ranks (EpochTargetBank.update); DDP need not broadcast it each step.
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            wrapped, [f"bank.{name}" for name, _ in bank.named_buffers()])
        return wrapped

    def batch(self, data, index, augment, epoch):
        self._index, self._epoch = index, epoch
        return super().batch(data, index, augment, epoch)

    def loss(self, model, x, y):
        if self._index is None or len(self._index) != len(y):
            raise RuntimeError("lsskd: loss() needs the batch's sample indices; make the batch with method.batch()")
        logits, aux_logits, aux_features = model(x)
        bank = _unwrap(model).bank
        alpha = EpochTargetBank.alpha(self._epoch, self.cfg.epochs, self.args["alpha_max"])
        targets = bank.targets(self._index, y, alpha)
        a = self.args
        loss = lsskd_loss(logits, aux_logits, targets, y, a["tau"], a["sad_weight"], a["kd_weight"], a["ens_weight"],
                          a["feat_weight"], aux_features)
        bank.update(self._index, torch.softmax(logits.detach().float(), 1))
        self._index = None
        return loss, logits
