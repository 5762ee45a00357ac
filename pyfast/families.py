"""Every op family under each of the names it has in the layers of the package, in one table.

A family has a short name used for its files (``csrc/<name>/``, ``kernels/<name>.py``, ``pyfast/reference/<name>.py``,
``pyfast/ops/<name>.py``) and for ``pyfast info`` and ``pyfast bench --op``; its custom ops, public functions,
modules, ``pyfast train`` methods and benchmark are named for what they do at their layer (the op
``gated_cattn_fwd`` serves the function ``gated_class_attention``, which the method ``gcab`` trains). ``pyfast info
--names`` prints this table, and tests check that every name in it exists and that every ``torch.ops.pyfast`` op is
in it. Methods without kernels of their own (most of ``pyfast train --list``) are not listed; ``DATASET_REINFORCEMENT``
maps the one command and method that carry two names.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # files, pyfast info, pyfast bench --op
    what: str
    ops: tuple[str, ...]  # torch.ops.pyfast.* (the Triton twins add the suffix _triton)
    functions: tuple[str, ...]  # pyfast.ops.*
    modules: tuple[str, ...]  # under pyfast: modules, converters, losses
    methods: tuple[str, ...]  # pyfast train --method
    bench: str  # pyfast.bench.<bench>, pyfast bench --op <bench>


FAMILIES = (
    Family("lif", "LIF / IF spiking neurons, surrogate-gradient BPTT", ("lif_fwd", "lif_bwd"),
           ("lif", "lif_decay"), ("nn.LIF", "nn.IF"), ("iir-snn",), "lif"),
    Family("mesa", "Mesa 8-bit activation storage", ("mesa_quantize", "mesa_dequantize", "mesa_linear", "mesa_gelu",
           "mesa_softmax", "mesa_layer_norm", "mesa_matmul", "mesa_conv2d"), ("mesa_quantize", "mesa_dequantize"),
           ("nn.mesa.Linear", "nn.mesa.Attention", "convert.mesa.convert"), ("mesa",), "mesa"),
    Family("wconv", "weighted convolution (kernel x learnable density)", ("wconv_weight_fwd", "wconv_weight_bwd"),
           ("wconv", "wconv_weight"), ("nn.WeightedConv2d", "convert.wconv.convert"), ("weighted-conv",), "wconv"),
    Family("gated", "gated class-attention (GCAB) and hard-attention gates with gradient routing",
           ("gated_cattn_fwd", "gated_cattn_bwd", "gated_route"), ("gated_class_attention", "gated_route_"),
           ("nn.GatedClassAttention", "nn.HardAttentionGate", "nn.GradientRouting"), ("gcab", "hag-gr"), "gated"),
    Family("karat", "Fourier-KArAt attention", ("karat_fwd", "karat_bwd", "karat_attention", "karat_attention_fwd",
           "karat_attention_bwd"), ("karat_attention", "karat_basis"), ("nn.FourierKArAtAttention",), ("karat",),
           "karat"),
    Family("crrelu", "CRReLU activation", ("crrelu_fwd", "crrelu_bwd"), ("crrelu",), ("nn.CRReLU",), (), "layers"),
    Family("ghost_bn", "ghost batch normalisation", ("ghost_bn_fwd", "ghost_bn_bwd"), ("ghost_batch_norm",),
           ("nn.GhostBatchNorm2d", "convert.convert_to_ghost_bn"), ("large-batch",), "layers"),
    Family("msdrop", "multi-sample dropout head and loss", ("msdrop_fwd", "msdrop_bwd"),
           ("multi_sample_dropout_loss",), ("nn.MultiSampleDropoutHead",), (), "layers"),
    Family("pld", "Plackett-Luce distillation loss", ("pld_fwd", "pld_bwd"), ("pld_rows",), ("losses.pld_loss",),
           ("pld",), "pld"),
)

# `pyfast reinforce` (the offline step, pyfast.harness.reinforce) writes the file that `--method reinforced` trains on.
DATASET_REINFORCEMENT = {"command": "reinforce", "method": "reinforced", "module": "harness.reinforce",
                         "loss": "losses.DRLoss"}


def family_of_op(op: str) -> Family:
    """The family of a ``torch.ops.pyfast`` op name (a Triton twin's ``_triton`` suffix dropped)."""
    base = op.removesuffix("_triton")
    for family in FAMILIES:
        if base in family.ops:
            return family
    raise KeyError(f"torch.ops.pyfast.{op} belongs to no family of pyfast.families.FAMILIES")


def names_table() -> str:
    """The families as ``pyfast info --names`` prints them: one block of lines per family."""
    lines = []
    for f in FAMILIES:
        lines += [f"{f.name}: {f.what}",
                  f"  torch.ops.pyfast  {', '.join(f.ops)} (Triton twins: NAME_triton)",
                  f"  pyfast.ops        {', '.join(f.functions)}",
                  f"  pyfast.*          {', '.join(f.modules)}",
                  f"  pyfast train      {', '.join(f'--method {m}' for m in f.methods) or '-'}",
                  f"  pyfast bench      --op {f.bench}"]
    d = DATASET_REINFORCEMENT
    lines.append(f"Dataset Reinforcement: `pyfast {d['command']}` (pyfast.{d['module']}) writes the file that "
                 f"`pyfast train --method {d['method']}` trains on with pyfast.{d['loss']}")
    return "\n".join(lines)
