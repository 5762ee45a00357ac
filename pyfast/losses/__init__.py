"""Distillation losses (plain PyTorch: each is a handful of fused elementwise ops and one reduction per row) and
Dataset Reinforcement's sparse targets and loss."""

from pyfast.losses.dr import DRLoss, Sparse, densify, dr_loss, sparsify
from pyfast.losses.kd import (
                              BDKDLoss,
                              KDLoss,
                              NKDLoss,
                              PLDLoss,
                              USKDLoss,
                              bdkd_losses,
                              kd_loss,
                              nkd_loss,
                              non_target,
                              pld_loss,
                              zipf_non_target_labels,
)

__all__ = [
    "BDKDLoss", "DRLoss", "KDLoss", "NKDLoss", "PLDLoss", "Sparse", "USKDLoss", "bdkd_losses", "densify", "dr_loss",
    "kd_loss", "nkd_loss", "non_target", "pld_loss", "sparsify", "zipf_non_target_labels",
]
