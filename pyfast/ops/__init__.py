"""Public functional ops. Each is backed by ``torch.ops.pyfast.*`` custom ops (see pyfast/ops/<op>.py)."""

from pyfast.ops.gated import gate_compensation, gated_class_attention, gated_route_
from pyfast.ops.karat import karat_attention, karat_basis
from pyfast.ops.lif import lif, lif_decay
from pyfast.ops.mesa import mesa_dequantize, mesa_quantize
from pyfast.ops.wconv import wconv, wconv_weight

__all__ = [
    "gate_compensation", "gated_class_attention", "gated_route_", "karat_attention", "karat_basis", "lif", "lif_decay",
    "mesa_dequantize", "mesa_quantize", "wconv", "wconv_weight",
]
