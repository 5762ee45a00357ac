"""Steps whose loss is NaN or infinite: stopped, or skipped, never trained on silently.

Every method's step goes through the run's gradient scaler (``scaler.scale(loss).backward()``, then
``scaler.step(optimizer)``), so the harness hands methods a :class:`StepGuard` in its place: it notes whether each
loss it scales is finite, and at the next ``step`` either steps as usual, or (a non-finite loss) raises
:class:`NonFiniteLossError` naming the step (``on_nonfinite="stop"``) or skips the update (``"skip"``: the gradients
are dropped, so the optimiser leaves every parameter and its state as they were). Reading the flag costs one
device synchronisation per step.
"""

from __future__ import annotations

import torch


class NonFiniteLossError(RuntimeError):
    """A training step's loss was NaN or infinite and the run stops (``on_nonfinite="stop"``)."""


class StepGuard:
    """A ``torch.amp.GradScaler`` as methods use it, with the non-finite check of the module docstring.

    ``where`` (set by the loop before each step, e.g. ``"epoch 2, step 17"``) names the step in the error;
    ``skipped`` counts the skipped updates and ``last_skipped`` says whether the latest step was one.
    """

    def __init__(self, scaler: torch.amp.GradScaler, policy: str):
        if policy not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {policy!r}")
        self.scaler = scaler
        self.policy = policy
        self.where = ""
        self.skipped = 0
        self.last_skipped = False
        self._finite: torch.Tensor | None = None  # all losses scaled since the last step were finite (on device)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite
        return self.scaler.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, *args, **kwargs):
        finite = self._finite is None or bool(self._finite)
        self._finite = None
        self.last_skipped = not finite
        if not finite:
            if self.policy == "stop":
                raise NonFiniteLossError(f"{self.where}: the loss is NaN or infinite; the run stops here (the last "
                                         "checkpoint is kept). Lower --lr, or pass --on-nonfinite skip to skip such "
                                         "steps")
            self.skipped += 1
            # No gradient, no update: optimisers skip parameters whose .grad is None, and the scaler's own
            # bookkeeping (its inf checks of this iteration) still runs, on no gradients.
            optimizer.zero_grad(set_to_none=True)
        return self.scaler.step(optimizer, *args, **kwargs)

    def update(self, *args, **kwargs) -> None:
        self.scaler.update(*args, **kwargs)

    def is_enabled(self) -> bool:
        return self.scaler.is_enabled()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state)
