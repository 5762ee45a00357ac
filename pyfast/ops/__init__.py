"""Public functional ops. Each is backed by ``torch.ops.pyfast.*`` custom ops (see pyfast/ops/<op>.py)."""

from pyfast.ops.crrelu import crrelu
from pyfast.ops.gated import gate_compensation, gated_class_attention, gated_route_
from pyfast.ops.ghost_bn import ghost_batch_norm
from pyfast.ops.karat import karat_attention, karat_basis
from pyfast.ops.lif import lif, lif_decay
from pyfast.ops.mesa import mesa_dequantize, mesa_quantize
from pyfast.ops.msdrop import multi_sample_dropout_loss
from pyfast.ops.pld import pld_rows
from pyfast.ops.wconv import wconv, wconv_weight

__all__ = [
    "crrelu",
    "gate_compensation",
    "gated_class_attention",
    "gated_route_",
    "ghost_batch_norm",
    "karat_attention",
    "karat_basis",
    "lif",
    "lif_decay",
    "mesa_dequantize",
    "mesa_quantize",
    "multi_sample_dropout_loss",
    "pld_rows",
    "wconv",
    "wconv_weight",
]
