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

__all__ = [
    "BDKDLoss", "KDLoss", "NKDLoss", "PLDLoss", "USKDLoss", "bdkd_losses", "kd_loss", "nkd_loss", "non_target",
    "pld_loss", "zipf_non_target_labels",
]
