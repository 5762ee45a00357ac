"""Public functional ops. Each is backed by ``torch.ops.pyfast.*`` custom ops (see pyfast/ops/<op>.py)."""

from pyfast.ops.crrelu import crrelu
from pyfast.ops.ghost_bn import ghost_batch_norm
from pyfast.ops.lif import lif, lif_decay
from pyfast.ops.mesa import mesa_dequantize, mesa_quantize
from pyfast.ops.msdrop import multi_sample_dropout_loss
from pyfast.ops.wconv import wconv, wconv_weight

__all__ = [
    "crrelu",
    "ghost_batch_norm",
    "lif",
    "lif_decay",
    "mesa_dequantize",
    "mesa_quantize",
    "multi_sample_dropout_loss",
    "wconv",
    "wconv_weight",
]
