"""Ghost batch norm converter: :func:`convert_to_ghost_bn` swaps a model's batch norms for
:class:`pyfast.nn.GhostBatchNorm1d` / ``2d`` (the same hyperparameters, parameters and buffers), in place."""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_int
from pyfast.convert.report import Report
from pyfast.nn._checks import check_backend
from pyfast.nn.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d

__all__ = ["convert_to_ghost_bn"]

_GHOSTS = {nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d}


def _ghost_of(bn: nn.Module, ghost_batch_size: int, backend: str) -> nn.Module:
    ghost = _GHOSTS[type(bn)](bn.num_features, ghost_batch_size, bn.eps, bn.momentum, bn.affine,
                              bn.track_running_stats, backend=backend)
    ghost.to(device=next(bn.buffers(), torch.empty(0)).device)
    ghost.load_state_dict(bn.state_dict())
    ghost.train(bn.training)
    return ghost


def _convert(module: nn.Module, ghost_batch_size: int, backend: str, report: Report) -> None:
    for name, child in module.named_children():
        if type(child) in _GHOSTS:
            setattr(module, name, _ghost_of(child, ghost_batch_size, backend))
            report.swap(type(child).__name__)
        elif isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(child, tuple(_GHOSTS.values())):
            # e.g. timm's BatchNormAct2d, which fuses the activation into its forward
            report.leave_kind(type(child).__name__, "a batch-norm subclass with its own forward")
        else:
            _convert(child, ghost_batch_size, backend, report)


def convert_to_ghost_bn(module: nn.Module, ghost_batch_size: int, backend: str = "auto",
                        verbose: bool = False) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d`` in ``module`` (recursively, in place; the module itself too) by the ghost
    version with the same hyperparameters, parameters and buffers; returns the converted module. Subclasses with a
    forward of their own are left (named by ``verbose=True``, which prints one line of what was converted)."""
    check_int("convert_to_ghost_bn", "ghost_batch_size", ghost_batch_size)  # also where module has no batch norm
    check_backend("convert_to_ghost_bn", backend)
    report = Report("convert_to_ghost_bn")
    if type(module) in _GHOSTS:
        module = _ghost_of(module, ghost_batch_size, backend)
        report.swap(type(module).__name__)
    else:
        _convert(module, ghost_batch_size, backend, report)
    if verbose:
        print(report.line(), flush=True)
    return module
