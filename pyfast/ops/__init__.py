"""Public functional ops. Each is backed by ``torch.ops.pyfast.*`` custom ops (see pyfast/ops/<op>.py)."""

from pyfast.ops.lif import lif, lif_decay
from pyfast.ops.wconv import wconv, wconv_weight

__all__ = ["lif", "lif_decay", "wconv", "wconv_weight"]
