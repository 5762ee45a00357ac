"""Registered names of the kernel-backed methods whose issues are still open.

``pyfast train --list`` shows them with the issue they wait for, and ``pyfast train --method NAME`` refuses them with
that reason, so the CLI's vocabulary is stable while the kernels land. Each moves to its own module when it ships.
"""

from __future__ import annotations

from pyfast.methods.base import UnavailableMethod
from pyfast.registry import METHODS

_SLOTS = {
    "gcab": ("gated class-attention blocks (GCAB-CFDC)", "issue 4, gated attention"),
    "hag-gr": ("hard-attention gates with gradient routing", "issue 4, gated attention"),
}

for _name, (_what, _issue) in _SLOTS.items():
    METHODS.register(_name, f"{_what} [not available yet: {_issue}]")(
        type(f"Slot_{_name.replace('-', '_')}", (UnavailableMethod,),
             {"reason": f"method {_name!r} ({_what}) is not implemented in this version of pyfast: it lands with "
                        f"{_issue}"})
    )
