"""``reinforced``: training on a reinforced dataset (Dataset Reinforcement, apple/ml-dr), the file that
``pyfast reinforce`` wrote from teacher runs on the same data::

    pyfast reinforce --teacher runs/t0 --teacher runs/t1 --out runs/digits.dr
    pyfast train --method reinforced --model-arg width=0.125 --method-arg reinforced=runs/digits.dr

Each image of a batch, with probability ``p_replay``, replays one of its stored augmentations (chosen uniformly) with
the teachers' densified top-k probabilities as its target; otherwise it takes the harness's ordinary crop/flip with a
one-hot target. The loss is ``KL(target || softmax(student))`` (:func:`pyfast.losses.dr_loss`). The choices are
drawn per image index from a generator seeded by ``(seed, epoch)``, so they do not depend on batch size or rank.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from pyfast.data import transforms as T
from pyfast.harness.reinforce import load_reinforced
from pyfast.harness.rng import epoch_generator
from pyfast.losses.dr import DENSIFY_METHODS, densify, dr_loss
from pyfast.methods.base import Method
from pyfast.registry import METHODS

_REPLAY_STREAM = 8  # epoch_generator stream of the replay choices (the harness's crops use stream 1)


@METHODS.register("reinforced", "Dataset Reinforcement: replay stored augmentations with teacher-ensemble soft "
                                "targets (--method-arg reinforced=FILE from `pyfast reinforce`)")
class Reinforced(Method):
    default_model = "resnet18"
    arg_defaults: ClassVar[dict] = {"reinforced": None, "p_replay": 0.99, "densify": "smooth"}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.store = None  # the pyfast.harness.reinforce.ReinforcedData file, loaded by prepare_model
        self._draws = None  # (epoch, replay [N] bool, sample [N] int64) of the current epoch
        self._target = None  # the soft targets [B, C] of the last batch, for loss()

    def check_args(self) -> None:
        path, p, method = self.args["reinforced"], self.args["p_replay"], self.args["densify"]
        if not isinstance(path, str) or not path:
            raise ValueError(f"method_args: reinforced must be the file written by `pyfast reinforce` "
                             f"(--method-arg reinforced=FILE), got {path!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 <= p <= 1:
            raise ValueError(f"method_args: p_replay must be a number in [0, 1], got {p!r}")
        if method not in DENSIFY_METHODS:
            raise ValueError(f"method_args: densify must be one of {', '.join(DENSIFY_METHODS)}, got {method!r}")
        if self.cfg.label_smoothing:
            raise ValueError(f"label_smoothing={self.cfg.label_smoothing} does not apply to the reinforced method "
                             "(its targets are the teachers' probabilities); leave it at 0")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        self.store = load_reinforced(self.args["reinforced"], self.data)
        return model

    def _epoch_draws(self, epoch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._draws is None or self._draws[0] != epoch:
            n = self.store.params.shape[0]
            g = epoch_generator(self.cfg.seed, epoch, _REPLAY_STREAM)
            replay = torch.rand(n, generator=g) < self.args["p_replay"]
            sample = torch.randint(0, self.store.samples, (n,), generator=g)
            self._draws = (epoch, replay.to(device), sample.to(device))
        return self._draws[1], self._draws[2]

    def batch(self, data, index: torch.Tensor, augment, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``index [B]``: replayed ones (stored augmentation, densified teacher target), the others with
        ``augment`` and a one-hot target; keeps the targets ``[B, C]`` for :meth:`loss`. Returns ``(x, labels)``."""
        store = self.store
        if store.params.device != index.device:
            store.params, store.indices, store.probs = (t.to(index.device) for t in (store.params, store.indices,
                                                                                     store.probs))
        replay, sample = self._epoch_draws(epoch, index.device)
        y = data.y_train[index]
        x = augment.apply(data.x_train[index], index)
        target = nn.functional.one_hot(y, data.num_classes).float()
        rows = replay[index].nonzero().squeeze(1)
        if rows.numel():
            img, s = index[rows], sample[index[rows]]
            x[rows] = T.apply(data.x_train[img], store.params[img, s])
            target[rows] = densify((store.probs[img, s], store.indices[img, s]), data.num_classes,
                                   self.args["densify"]).to(target.dtype)
        self._target = target
        return data.normalize(x), y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = self._target
        if target is None or target.shape[0] != x.shape[0]:
            raise RuntimeError("reinforced: loss() needs the targets of the batch that batch() made for x")
        logits = model(x)
        return dr_loss(logits, target), logits
