"""Gated-attention methods: ``gcab`` (task-incremental training of a GCAB ViT with HAT masks) and ``hag-gr``
(hard-attention gates trained by gradient routing).

``gcab`` (Cotogni et al., arXiv 2211.12292): the classes are split into ``tasks`` contiguous tasks, one stage each.
In stage t every batch keeps its samples of task t's classes (a minimal wrapper: the harness's loader is shared, so
the effective batch is about batch/tasks), the gate scale s is annealed per batch from 1/s_max to s_max, the loss is
cross-entropy on task t's head plus ``sparsity`` (0.05) x the HAT sparsity regulariser, gradients are routed (for
t > 0) before the step and the embeddings clamped to [-6, 6] after it; at the start of stage t the masks of task t-1
are binarised into m_pre. ``train_acc`` is the task-agnostic accuracy of the model on the whole batch (one extra
forward without grad); the test accuracy uses every task's head (no task id).

``hag-gr`` (Roffo et al., arXiv 2407.04400): a sigmoid gate per channel on every residual branch (ViT: attention and
MLP outputs; ResNet: each block's second BN), trained by Adam (``gate_lr``) in a first forward/backward pass; the
harness optimiser then steps every other parameter after a second pass. ``accumulate=true`` keeps the official code's
quirk (main gradients of both passes summed; the GradScaler updates twice), ``false`` zeroes them in between.
Gradient clipping of the official code is not reproduced.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from pyfast.methods.base import Method, ModelMismatchError, Stage
from pyfast.models.resnet import BasicBlock
from pyfast.models.vit import Block
from pyfast.nn.gated import HardAttentionGate
from pyfast.registry import METHODS


def _bare(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel -> the model


def _positive(args: dict, name: str) -> None:
    v = args[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"method_args: {name} must be a finite number > 0, got {v!r}")


@METHODS.register("gcab", "GCAB: task-incremental ViT with gated class-attention and HAT gradient routing")
class GCAB(Method):
    default_model = "gcab-vit"
    model_requirement = "the gcab-vit model (task tokens and gated class-attention)"
    supported_models = ("gcab-vit",)
    arg_defaults: ClassVar[dict] = {"tasks": 5, "sparsity": 0.05, "s_max": 800.0}

    def check_args(self) -> None:
        t = self.args["tasks"]
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"method_args: tasks must be an integer >= 1, got {t!r}")
        _positive(self.args, "s_max")
        if not isinstance(self.args["sparsity"], (int, float)) or not self.args["sparsity"] >= 0:
            raise ValueError(f"method_args: sparsity must be a number >= 0, got {self.args['sparsity']!r}")
        self.task = 0

    def model_options(self) -> dict:
        return {"num_tasks": self.args["tasks"], "s_max": float(self.args["s_max"])}

    def stages(self) -> list[Stage]:
        return [Stage(f"task{t}", self.cfg.epochs, {"task": t}) for t in range(self.args["tasks"])]

    def enter_stage(self, model, stage: Stage) -> None:
        self.task = stage.options["task"]
        block = _bare(model).gcab
        for t in range(block.current_task, self.task):
            block.consolidate(t)

    def train_step(self, model, x, y, optimizer, scaler, progress, autocast):
        net = _bare(model)
        block, t, cpt = net.gcab, self.task, net.classes_per_task
        s = 1 / block.s_max + (block.s_max - 1 / block.s_max) * progress[0] / max(1, progress[1])
        keep = (y // cpt) == t
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            if bool(keep.any()):
                logits_t = net.task_logits(net.features(x[keep]), t, s)
                loss = nn.functional.cross_entropy(logits_t, y[keep] - t * cpt,
                                                   label_smoothing=self.cfg.label_smoothing)
                loss = loss + self.args["sparsity"] * block.sparsity_loss(t, s)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                if t > 0:
                    block.route_gradients(s)
                scaler.step(optimizer)
                scaler.update()
                block.clamp_embeddings()
            else:
                loss = torch.zeros((), device=x.device)
        with torch.no_grad():
            logits = model(x)
        return loss, logits


def add_hard_attention_gates(model: nn.Module) -> nn.Module:
    """Put a :class:`pyfast.nn.HardAttentionGate` on every residual branch: ViT blocks (attention and MLP outputs)
    and ResNet basic blocks (after the second BN). Returns the model; raises ModelMismatchError (a ValueError) if it
    has neither."""
    found = 0
    for m in model.modules():
        if isinstance(m, Block):
            dim = m.norm1.normalized_shape[0]
            m.attn = nn.Sequential(m.attn, HardAttentionGate(dim))
            m.mlp = nn.Sequential(m.mlp, HardAttentionGate(dim))
            found += 1
        elif isinstance(m, BasicBlock):
            m.bn2 = nn.Sequential(m.bn2, HardAttentionGate(m.bn2.num_features, channel_dim=1))
            found += 1
    if not found:
        raise ModelMismatchError(f"{type(model).__name__} has no pyfast.models.vit.Block or "
                                 "pyfast.models.resnet.BasicBlock")
    return model


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.gate for m in model.modules() if isinstance(m, HardAttentionGate)]


@METHODS.register("hag-gr", "hard-attention gates on residual branches, trained by two-pass gradient routing")
class HAGGR(Method):
    default_model = "vit-tiny"
    model_requirement = ("a pyfast model with ViT blocks or ResNet basic blocks (vit-tiny, vit-small, resnet18, "
                         "spectformer)")
    arg_defaults: ClassVar[dict] = {"gate_lr": 0.01, "accumulate": True}

    def check_args(self) -> None:
        _positive(self.args, "gate_lr")
        if not isinstance(self.args["accumulate"], bool):
            raise TypeError(f"method_args: accumulate must be true or false, got {self.args['accumulate']!r}")
        self.gate_optimizer = None

    def prepare_model(self, model):
        return add_hard_attention_gates(model)

    def param_groups(self, model) -> list[dict]:
        gates = {id(p) for p in gate_parameters(model)}
        return [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in gates]}]

    def enter_stage(self, model, stage: Stage) -> None:
        self.gate_optimizer = torch.optim.Adam(gate_parameters(model), lr=self.args["gate_lr"])

    def train_step(self, model, x, y, optimizer, scaler, progress, autocast):
        self.gate_optimizer.zero_grad(set_to_none=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss1, _ = self.loss(model, x, y)
        scaler.scale(loss1).backward()
        scaler.step(self.gate_optimizer)
        scaler.update()
        if not self.args["accumulate"]:
            optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss, logits = self.loss(model, x, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss, logits
