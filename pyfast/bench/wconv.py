"""Benchmark of the weighted convolution: ``pyfast.nn.WeightedConv2d`` against ``nn.Conv2d`` on the 3x3 conv layers
of CIFAR VGG-16 and ResNet-18 (32x32 input), and a microbenchmark of the density-weight op itself.

Part 1, layers (the issue's target: WeightedConv2d at most 1.03x the time of nn.Conv2d, fwd+bwd, batch 128 fp32).
Providers, all computing the same layer shape with the same input and upstream gradient:

  nn.Conv2d          the plain layer (the denominator of every "x conv" figure)
  pyfast             WeightedConv2d, learnable den (a Parameter), backend auto (cpp on CPU, cuda on GPU)
  pyfast-fixed-den   WeightedConv2d, den a buffer (the paper's non-trainable variant)
  torch-premultiply  the pure-PyTorch formulation of the paper's code v2.0: F.conv2d(x, W * outer(alpha, alpha))
                     with alpha built from a learnable den by torch.cat each call (pyfast.reference.wconv)
  weight-op-only     what pyfast adds to a conv: the learnable layer's W -> W * Phi alone (fwd+bwd: with dW and
                     d(den) through autograd; fwd: the eval-mode cached lookup). Its ratio to nn.Conv2d bounds the
                     overhead without the run-to-run noise of comparing two large convolutions on a shared machine.

Modes: ``fwd+bwd`` = forward, then ``torch.autograd.grad`` of the output w.r.t. x and every trainable parameter
(an inner layer of a training step); ``fwd`` = forward under ``torch.no_grad()`` in eval mode (WeightedConv2d reuses
its cached W * Phi there). Providers are timed in alternation, ``--rounds`` times each, and the fastest median is
kept, so a burst of load on a shared machine does not land on one provider only. "VGG-16 / ResNet-18 (sum)" rows add
the per-layer medians times the number of such layers in the network (1x1 shortcuts are not weighted: not counted).

Part 2, the weight op W -> W * Phi alone (``--op-shapes``): providers reference (eager
:func:`pyfast.reference.wconv.wconv_weight_ref`), reference+compile (``torch.compile`` of it), cpp, cuda, triton;
fwd and fwd+bwd (dW and d(den)); ratios are speedups over the eager reference from the same run; GB/s counts W read
and W~ written (fwd), plus dW~ and W read and dW written (fwd+bwd).

Examples:
  python -m pyfast.bench.wconv --quick
  python -m pyfast.bench.wconv --batch 128 --layers vgg-64x64@32 resnet-512x512@4
  python -m pyfast.bench.wconv --device cuda
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch

import pyfast
from pyfast.bench import harness
from pyfast.nn.wconv import default_den
from pyfast.ops.wconv import pack_den, weight_of_packed_den
from pyfast.reference.wconv import wconv_ref, wconv_weight_ref

# 3x3 conv layers of the CIFAR networks: (C_in, C_out, H, W, stride) -> how many layers of that shape.
VGG16 = {  # cfg 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M; padding 1
    (3, 64, 32, 32, 1): 1, (64, 64, 32, 32, 1): 1, (64, 128, 16, 16, 1): 1, (128, 128, 16, 16, 1): 1,
    (128, 256, 8, 8, 1): 1, (256, 256, 8, 8, 1): 2, (256, 512, 4, 4, 1): 1, (512, 512, 4, 4, 1): 2,
    (512, 512, 2, 2, 1): 3,
}
RESNET18 = {  # stem, 4 stages of 2 BasicBlocks; the first conv of stages 2-4 has stride 2
    (3, 64, 32, 32, 1): 1, (64, 64, 32, 32, 1): 4, (64, 128, 32, 32, 2): 1, (128, 128, 16, 16, 1): 3,
    (128, 256, 16, 16, 2): 1, (256, 256, 8, 8, 1): 3, (256, 512, 8, 8, 2): 1, (512, 512, 4, 4, 1): 3,
}
NETWORKS = {"VGG-16": VGG16, "ResNet-18": RESNET18}
QUICK_LAYERS = [(64, 64, 32, 32, 1), (128, 256, 16, 16, 2), (512, 512, 4, 4, 1)]
LAYER_PROVIDERS = ("nn.Conv2d", "pyfast", "pyfast-fixed-den", "torch-premultiply", "weight-op-only")
OP_PROVIDERS = ("reference", "reference+compile", "cpp", "cuda", "triton")
OP_SHAPES = [(64, 64, 3, 3), (512, 512, 3, 3), (256, 128, 5, 5)]
DEN = [0.7]


def layer_name(shape) -> str:
    cin, cout, h, w, s = shape
    return f"{cin}x{cout}@{h}x{w}" + (f"/s{s}" if s != 1 else "")


def all_layers() -> list[tuple]:
    seen: dict[tuple, None] = {}
    for net in NETWORKS.values():
        for shape in net:
            seen.setdefault(shape, None)
    return list(seen)


# --------------------------------------------------------------------------------------------------------------
# Part 1: layers
# --------------------------------------------------------------------------------------------------------------


def _layer(provider: str, shape, device, dtype, seed=0):
    cin, cout, _, _, stride = shape
    torch.manual_seed(seed)
    kw = {"stride": stride, "padding": 1, "device": device, "dtype": dtype}
    if provider == "nn.Conv2d":
        return torch.nn.Conv2d(cin, cout, 3, **kw)
    if provider in ("pyfast", "pyfast-fixed-den"):
        return pyfast.nn.WeightedConv2d(cin, cout, 3, **kw, den=DEN, learnable_den=provider == "pyfast")
    conv = torch.nn.Conv2d(cin, cout, 3, **kw)
    conv.den = torch.nn.Parameter(torch.tensor(DEN, device=device, dtype=dtype))
    conv.forward = lambda x: wconv_ref(x, conv.weight, conv.den, conv.bias, stride, 1)
    return conv


def _weight_op_call(shape, device, dtype, mode):
    layer = _layer("pyfast", shape, device, dtype)
    if mode == "fwd":
        layer.eval()

        def call():
            with torch.no_grad():
                return layer.weighted_weight()

        return call
    g = torch.randn_like(layer.weight)
    inputs = (layer.weight, layer.den)
    return lambda: torch.autograd.grad(layer.weighted_weight(), inputs, g)


def _layer_call(module, x, grad_out, mode):
    params = [p for p in module.parameters() if p.requires_grad]
    if mode == "fwd":
        module.eval()

        def call():
            with torch.no_grad():
                return module(x)

        return call
    module.train()
    inputs = [x, *params]

    def call():
        return torch.autograd.grad(module(x), inputs, grad_out)

    return call


def bench_layers(layers, batch, device, dtype, modes, providers, min_run_time, rounds, sha, writer):
    rows = []
    for shape in harness.progress(layers, desc="layers"):
        cin, cout, h, w, stride = shape
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch, cin, h, w, generator=gen).to(device, dtype).requires_grad_()
        grad_out = torch.randn(batch, cout, h // stride, w // stride, generator=gen).to(device, dtype)
        for mode in modes:
            calls = {p: _weight_op_call(shape, device, dtype, mode) if p == "weight-op-only"
                     else _layer_call(_layer(p, shape, device, dtype), x, grad_out, mode) for p in providers}
            for call in calls.values():  # warm-up (oneDNN primitive caches, the first allocation)
                call()
            best = {p: math.inf for p in providers}
            for _ in range(rounds):
                for p, call in calls.items():
                    best[p] = min(best[p], harness.time_ms(call, device, min_run_time))
            case = [harness.Row("wconv-layer", p, mode, f"{batch}x{layer_name(shape)}", 1, harness.dtype_name(dtype),
                                device.type, best[p], git_sha=sha) for p in providers]
            harness.fill_ratios(case, reference="nn.Conv2d")  # CSV ratio: nn.Conv2d time / provider time
            writer.write(case)
            rows += case
    return rows


def layer_table(rows, providers, batch, layers) -> str:
    by_key = {(r.shape, r.mode, r.provider): r.median_ms for r in rows}
    modes = list(dict.fromkeys(r.mode for r in rows))
    header = ["layer (Cin x Cout @ HxW)", "mode", "nn.Conv2d ms", *(f"{p} / conv" for p in providers[1:])]
    body = []
    for mode in modes:
        for shape in layers:
            key = f"{batch}x{layer_name(shape)}"
            base = by_key.get((key, mode, providers[0]))
            if base is None:
                continue
            body.append([layer_name(shape), mode, f"{base:.3f}",
                         *(f"{by_key[(key, mode, p)] / base:.3f}x" for p in providers[1:])])
        for net, counts in NETWORKS.items():
            if not all((f"{batch}x{layer_name(s)}", mode, providers[0]) in by_key for s in counts):
                continue
            tot = {p: sum(n * by_key[(f"{batch}x{layer_name(s)}", mode, p)] for s, n in counts.items())
                   for p in providers}
            body.append([f"{net} (sum)", mode, f"{tot[providers[0]]:.3f}",
                         *(f"{tot[p] / tot[providers[0]]:.3f}x" for p in providers[1:])])
        ratios = [by_key[(f"{batch}x{layer_name(s)}", mode, "pyfast")] / by_key[(f"{batch}x{layer_name(s)}", mode,
                  providers[0])] for s in layers if (f"{batch}x{layer_name(s)}", mode, "pyfast") in by_key]
        if ratios and "pyfast" in providers:
            body.append(["median over layers (pyfast)", mode, "", f"{statistics.median(ratios):.3f}x",
                         *([""] * (len(providers) - 2))])
    return harness._render(header, body)


# --------------------------------------------------------------------------------------------------------------
# Part 2: the weight op
# --------------------------------------------------------------------------------------------------------------


def _op_fn(provider, device):
    if provider == "reference":
        return wconv_weight_ref
    if provider == "reference+compile":
        torch._dynamo.reset()
        return torch.compile(wconv_weight_ref)
    harness.check_provider(provider, device)
    return lambda w, d: weight_of_packed_den(w, d, provider)


def bench_op(shapes, device, dtype, providers, min_run_time, sha, writer):
    rows = []
    for shape in harness.progress(shapes, desc="weight op"):
        w = torch.randn(shape, device=device, dtype=dtype)
        g = torch.randn(shape, device=device, dtype=dtype)
        d = pack_den(default_den(shape[2:]), shape[2:]).to(device)
        nbytes = w.numel() * w.element_size()
        case = []
        for provider in providers:
            try:
                fn = _op_fn(provider, device)
            except harness.Unavailable as err:
                harness.log_once(f"skip {provider}: {err}")
                continue
            wl, dl = w.clone().requires_grad_(), d.clone().requires_grad_()

            def fwd(fn=fn, w=w, d=d):
                with torch.no_grad():
                    return fn(w, d)

            def fwd_bwd(fn=fn, wl=wl, dl=dl, g=g):
                return torch.autograd.grad(fn(wl, dl), (wl, dl), g)

            for mode, call, traffic in (("fwd", fwd, 2 * nbytes), ("fwd+bwd", fwd_bwd, 5 * nbytes)):
                call()
                call()
                ms = harness.time_ms(call, device, min_run_time)
                case.append(harness.Row("wconv-weight", provider, mode, "x".join(map(str, shape)), 1,
                                        harness.dtype_name(dtype), device.type, ms,
                                        GB_per_s=harness.gb_per_s(traffic, ms), git_sha=sha))
        harness.fill_ratios(case)
        writer.write(case)
        rows += case
    return rows


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--batch", type=int, help="batch size (default 128; --quick: 8)")
    ap.add_argument("--layers", nargs="+", help="layer names as printed (e.g. 64x64@32x32, 128x256@16x16/s2); "
                                                "default: every VGG-16 / ResNet-18 3x3 layer (--quick: 3 of them)")
    ap.add_argument("--modes", nargs="+", help="fwd+bwd, fwd (default both)")
    ap.add_argument("--providers", nargs="+", help=f"layer providers, subset of {', '.join(LAYER_PROVIDERS)}")
    ap.add_argument("--op-providers", nargs="+", help=f"weight-op providers, subset of {', '.join(OP_PROVIDERS)}")
    ap.add_argument("--op-shapes", nargs="*", help="weight shapes like 512x512x3x3 (default 3 shapes; none: skip)")
    ap.add_argument("--skip-layers", action="store_true", help="weight-op microbenchmark only")
    ap.add_argument("--dtype", default="fp32", help="fp32 (default), bf16, fp16")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default cuda if available else cpu")
    ap.add_argument("--csv", help="output CSV (default bench/results/wconv_<device>.csv)")
    ap.add_argument("--quick", action="store_true", help="batch 8, three layers, short timing (a smoke test)")
    ap.add_argument("--rounds", type=int, help="alternating timing rounds per provider (default 3; --quick: 1)")
    ap.add_argument("--min-run-time", type=float, help="seconds of measurement per timing (default 1; --quick 0.05)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = harness.DTYPES[args.dtype]
    batch = args.batch or (8 if args.quick else 128)
    rounds = args.rounds or (1 if args.quick else 3)
    min_run_time = args.min_run_time or (0.05 if args.quick else 1.0)
    by_name = {layer_name(s): s for s in all_layers()}
    if args.layers:
        unknown = [n for n in args.layers if n not in by_name]
        if unknown:
            raise SystemExit(f"unknown layers {unknown}; known: {sorted(by_name)}")
        layers = [by_name[n] for n in args.layers]
    else:
        layers = QUICK_LAYERS if args.quick else all_layers()
    modes = harness.parse_list(args.modes) or ["fwd+bwd", "fwd"]
    providers = harness.parse_list(args.providers) or list(LAYER_PROVIDERS)
    if providers[0] != "nn.Conv2d":
        providers = ["nn.Conv2d", *[p for p in providers if p != "nn.Conv2d"]]
    if args.op_shapes is None:
        op_shapes = OP_SHAPES[:2] if args.quick else OP_SHAPES
    else:
        op_shapes = [tuple(int(v) for v in s.split("x")) for s in args.op_shapes]
    op_providers = harness.parse_list(args.op_providers) or list(OP_PROVIDERS)
    csv_path = args.csv or harness.default_csv("wconv", device.type)
    sha = harness.git_sha()
    print(f"device: {harness.device_name(device)}, torch {torch.__version__}, git {sha}, dtype {args.dtype}")
    with harness.CsvWriter(csv_path) as writer:
        if not args.skip_layers:
            print(f"\nWeightedConv2d vs nn.Conv2d, 3x3 padding 1, batch {batch} (time / nn.Conv2d time; target "
                  f"fwd+bwd <= 1.03x)")
            rows = bench_layers(layers, batch, device, dtype, modes, providers, min_run_time, rounds, sha, writer)
            print(layer_table(rows, providers, batch, layers))
        if op_shapes:
            rows = bench_op(op_shapes, device, dtype, op_providers, min_run_time, sha, writer)
            print("\nWeight op W -> W * Phi (speedup over eager reference)")
            ran = [p for p in op_providers if any(r.provider == p for r in rows)]
            print(harness.ratio_table(rows, ran, [p for p in ("cpp", "cuda", "triton") if p in ran]))
    print(f"\nCSV: {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
