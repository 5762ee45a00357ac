"""Distillation losses: Hinton KD, NKD / USKD, PLD (through the fused ``pld`` op), BD-KD, LSSKD's auxiliary-head
losses, and Dataset Reinforcement's sparse targets and loss."""

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
from pyfast.losses.lsskd import (
    EpochTargetBank,
    LSSKDLoss,
    SADHead,
    lsskd_loss,
    marginal_classes,
    rotated_copies,
    sad_labels,
)

__all__ = [
    "BDKDLoss", "DRLoss", "EpochTargetBank", "KDLoss", "LSSKDLoss", "NKDLoss", "PLDLoss", "SADHead", "Sparse",
    "USKDLoss", "bdkd_losses", "densify", "dr_loss", "kd_loss", "lsskd_loss", "marginal_classes", "nkd_loss",
    "non_target", "pld_loss", "rotated_copies", "sad_labels", "sparsify", "zipf_non_target_labels",
]
