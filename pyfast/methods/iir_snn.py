"""``iir-snn``: IIR-SNN temporal pruning ("One Timestep is All You Need", Chowdhury et al., arXiv 2110.05929).

A spiking VGG-16 (neurons U_t = leak U_{t-1} + I_t with learnable leak and threshold per layer, soft reset, the
triangle surrogate dS/dz = 0.3 max(0, 1 - |z|), z = U/theta - 1) is trained at T = 5, then retrained from those
weights at T = 4, 3, 2 and 1, one stage each with a fresh optimiser. The paper starts stage T=5 from an ANN converted
to an SNN; here stage 1 trains the SNN from scratch with BatchNorm (the spec's from-scratch threshold init 0.4), and
the weights, leaks and thresholds carry over unchanged from one stage to the next (the official code also rescales
thresholds between stages; learnable thresholds make that a starting point, not a necessity).
"""

from __future__ import annotations

from typing import ClassVar

from pyfast.methods.base import Method, Stage
from pyfast.registry import METHODS


@METHODS.register("iir-snn", "IIR-SNN: spiking VGG-16 trained at T=5, then retrained at T=4..1 (--epochs per stage)")
class IIRSNN(Method):
    default_model = "vgg16-snn"
    model_requirement = "a spiking model with time steps T, vgg16-snn or snn-small"
    supported_models = ("vgg16-snn", "snn-small")
    arg_defaults: ClassVar[dict] = {"timesteps": [5, 4, 3, 2, 1]}

    def check_args(self) -> None:
        ts = self.args["timesteps"]
        if not isinstance(ts, (list, tuple)) or not ts or not all(isinstance(t, int) and t >= 1 for t in ts):
            raise ValueError(f"method_args: timesteps must be a non-empty list of integers >= 1, got {ts!r}")

    def model_options(self) -> dict:
        return {"T": self.args["timesteps"][0]}

    def stages(self) -> list[Stage]:
        return [Stage(f"T={t}", self.cfg.epochs, {"T": t}) for t in self.args["timesteps"]]

    def enter_stage(self, model, stage: Stage) -> None:
        model.T = stage.options["T"]
