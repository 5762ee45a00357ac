"""Benchmark of Plackett-Luce distillation (pyfast.losses.pld_loss): the fused op against the reference, eager and
under torch.compile.

Providers, all through ``pld_loss(student, teacher, y, tau_t=1)`` (mean over the batch) on the same inputs:

  reference           the readable pure-PyTorch definition (pyfast.reference.pld: softmax, argsort, gather, reverse
                      logcumsumexp, weighted sum), eager
  reference+compile   the same under torch.compile (inductor)
  cpp / cuda / triton pyfast's fused op (cuda and triton need a GPU; the Triton interpreter is not timed on CPU)
  peer                what PLD replaces: F.cross_entropy + Hinton KD at T = 4 (different maths, a cost yardstick)

Modes: ``fwd`` (under no_grad) and ``fwd+bwd`` (forward, then ``torch.autograd.grad`` of the loss w.r.t. the
student's logits; pld_loss detaches the teacher). Cases: B = 256 rows of C = 100 and C = 1000 classes (CIFAR-100- and
ImageNet-sized heads), float32 by default. Providers are timed in alternation ``--rounds`` times and the fastest median
is kept. The first table gives speedups over the eager reference, the second puts the pyfast kernel next to
reference+compile (the bar: the kernel beats it). GB/s counts the logical traffic: student and teacher read in the
forward; student and teacher read and the gradient written in the backward.

Examples:
  python -m pyfast.bench.pld --quick
  python -m pyfast.bench.pld --modes fwd+bwd --rounds 5
  python -m pyfast.bench.pld --device cuda
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from pyfast.bench import harness
from pyfast.bench.layers import KERNELS, bench_op, compile_table
from pyfast.losses import kd_loss, pld_loss

PROVIDERS = ("reference", "reference+compile", "cpp", "cuda", "triton", "peer")
PEER = "F.cross_entropy + KD (T = 4)"
TAU = 1.0
CASES = [(256, 100), (256, 1000)]  # (B, C)
QUICK_CASES = [(16, 10), (8, 40)]


def _pld(provider, case, device, dtype):
    """(name of the case, inputs that need grad, function of those inputs, bytes of fwd traffic, of bwd traffic)."""
    bsz, c = case
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(bsz, c, generator=g) * 2).to(device=device, dtype=dtype)
    t = (torch.randn(bsz, c, generator=g) * 2).to(device=device, dtype=dtype)
    y = torch.randint(0, c, (bsz,), generator=g).to(device)
    if provider == "reference":
        fn = lambda s: pld_loss(s, t, y, TAU, backend="reference")
    elif provider == "reference+compile":
        fn = harness.compiled(lambda s: pld_loss(s, t, y, TAU, backend="reference"))
    elif provider == "peer":
        fn = lambda s: F.cross_entropy(s, y) + kd_loss(s, t, 4.0)
    elif provider in KERNELS:
        harness.check_provider(provider, device)
        fn = lambda s: pld_loss(s, t, y, TAU, backend=provider)
    else:
        raise harness.Unavailable(f"unknown provider {provider!r}")
    nbytes = s.numel() * s.element_size()
    return f"B{bsz}xC{c}", [s], fn, 2 * nbytes, 3 * nbytes


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--C", nargs="+", help="class counts at B = 256 (default 100 1000)")
    harness.add_common_args(ap, "pld", PROVIDERS, rounds=3)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    common = harness.resolve_common_args(args, "pld", PROVIDERS, 3)
    device, dtype, providers, modes = common.device, common.dtype, common.providers, common.modes
    classes = harness.parse_list(args.C, int)
    cases = QUICK_CASES if args.quick else ([(256, c) for c in classes] if classes else CASES)
    csv_path = common.csv_path
    sha = harness.git_sha()
    print(f"device: {harness.device_name(device)}, torch {torch.__version__}, git {sha}, dtype {args.dtype}, "
          f"threads {torch.get_num_threads()}, tau_t {TAU}")
    with harness.CsvWriter(csv_path) as writer:
        rows = bench_op("pld", cases, device, dtype, modes, providers, common.min_run_time, common.rounds,
                        not args.no_memory, sha, writer, builder=_pld, peer=PEER)
    ran = [p for p in providers if any(r.provider == p for r in rows)]
    print(f"\npld: speedup over eager reference (peer: {PEER})")
    print(harness.ratio_table(rows, ran, [p for p in KERNELS if p in ran]))
    if not args.no_memory:
        for mode in modes:
            print(f"\npeak memory MB, {mode}")
            print(harness.memory_table(rows, ran, mode))
    print("\npyfast kernel vs reference + torch.compile (time ratio; > 1: pyfast is faster)")
    print(compile_table(rows))
    print(f"\nCSV: {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
