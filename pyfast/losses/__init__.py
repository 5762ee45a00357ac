"""Distillation losses (plain PyTorch: each is a handful of fused elementwise ops and one reduction per row)."""

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
    "BDKDLoss", "EpochTargetBank", "KDLoss", "LSSKDLoss", "NKDLoss", "PLDLoss", "SADHead", "USKDLoss", "bdkd_losses",
    "kd_loss", "lsskd_loss", "marginal_classes", "nkd_loss", "non_target", "pld_loss", "rotated_copies", "sad_labels",
    "zipf_non_target_labels",
]
