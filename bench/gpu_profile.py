"""Kernel-level GPU time of one fwd+bwd call, per provider: where a benchmark's milliseconds go.

For each provider: the GPU time per call of back-to-back calls (CUDA events) beside the host time it takes to issue
one call (when the host time is the larger, a benchmark measures Python and dispatch, not kernels); then, under
``torch.profiler``, the kernels that ran (GPU microseconds per call, share of the call's kernel time) and the host
ops with the most self time.

Cases (the shapes of the issues' GPU targets):
  lif    T=32, 2**22 neurons, fp16 (``--dtype`` to change), providers of bench_lif (cuda triton sj-triton ...)
  karat  ViT-Tiny attention B=32, H=3, D=64, G=3, r=12, N=65 and 197 (``--tokens``), providers of bench_karat

With ``--calls-only N`` it only makes N calls per provider after the warm-up, with no events and no
``torch.profiler``, for an outside profiler (Nsight Compute's CUPTI and torch.profiler's do not share a process):
``bench/gpu_check.sh``'s ncu stages run it under ``ncu`` for each kernel's occupancy, stall reasons and memory
throughput.

Examples:
  python bench/gpu_profile.py lif --providers cuda sj-triton
  python bench/gpu_profile.py karat --providers cuda triton reference+compile
  ncu -k regex:fused_ --launch-skip 9 --launch-count 3 python bench/gpu_profile.py karat --providers cuda \
      --tokens 197 --calls-only 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch
from torch.profiler import ProfilerActivity, profile

from pyfast.bench import harness


def lif_calls(args, device):
    from pyfast.bench import lif as bench_lif

    x = (torch.randn(args.T, args.neurons, device=device) + 1.0).to(harness.DTYPES[args.dtype])
    for name in args.providers:
        try:
            provider = bench_lif.make_provider(name, device)
        except harness.Unavailable as err:
            print(f"skip {name}: {err}")
            continue
        yield name, bench_lif.make_call(provider.prepare(), x, "fwd+bwd")


def karat_calls(args, device):
    from pyfast.bench import karat as bench_karat

    compiled_ref = torch.compile(bench_karat.karat_attention_ref)
    for tokens in args.tokens:
        inputs, g = bench_karat.make_case(32, 3, tokens, 64, 3, 12, harness.DTYPES[args.dtype], device)
        for name in args.providers:
            yield f"{name} N={tokens}", bench_karat.fwd_bwd_step(name, compiled_ref, inputs, g)


WARM_UP_CALLS = 3


def warm_up(call) -> None:
    for _ in range(WARM_UP_CALLS):  # compilation, autotuning, allocator
        call()
    torch.cuda.synchronize()


def calls_only(name: str, call, calls: int) -> None:
    warm_up(call)
    for _ in range(calls):
        call()
    torch.cuda.synchronize()
    print(f"{name}: {WARM_UP_CALLS} warm-up calls, then {calls}")


def profile_call(name: str, call, iters: int) -> None:
    warm_up(call)
    # Back-to-back calls, no profiler: GPU time per call (events) and the CPU time to issue one call. When the CPU
    # time is the larger, the benchmark's number is the host's (Python, dispatch, launches), not the kernels'.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(iters):
        call()
    cpu_us = (time.perf_counter() - t0) * 1e6 / iters
    end.record()
    torch.cuda.synchronize()
    wall_us = start.elapsed_time(end) * 1e3 / iters
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sorted((e for e in events if e.device_time_total > 0 and e.device_type.name == "CUDA"),
                     key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in kernels) / iters
    print(f"\n== {name}: {wall_us:.1f} us per call on the GPU clock, {cpu_us:.1f} us of host time to issue it, "
          f"kernel time {total:.1f} us per call")
    for e in kernels[:10]:
        per_call = e.device_time_total / iters
        print(f"  {per_call:9.1f} us  {100 * per_call / max(total, 1e-9):5.1f}%  x{e.count / iters:<4.3g} {e.key[:100]}")
    host = sorted((e for e in events if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
    print("  host ops by self time (us per call, under the profiler):")
    for e in host[:10]:
        print(f"  {e.self_cpu_time_total / iters:9.1f} us  x{e.count / iters:<4.3g} {e.key[:100]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("op", choices=("lif", "karat"))
    ap.add_argument("--providers", nargs="+", required=True)
    ap.add_argument("--dtype", default=None, help="lif: fp16 (default), bf16, fp32; karat: fp32 (default)")
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--neurons", type=int, default=2**22)
    ap.add_argument("--tokens", type=int, nargs="+", default=[65, 197], help="karat: sequence lengths N")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--calls-only", type=int, default=None, metavar="N",
                    help="after the warm-up, make N calls per provider and nothing else (to run under ncu)")
    args = ap.parse_args(argv)
    if args.calls_only is not None and args.calls_only < 1:
        ap.error(f"--calls-only must be >= 1, got {args.calls_only}")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_profile.py needs a CUDA device")
    args.dtype = args.dtype or ("fp16" if args.op == "lif" else "fp32")
    if args.dtype not in harness.DTYPES:
        ap.error(f"--dtype: unknown {args.dtype!r}; choose from fp32, bf16, fp16")
    device = torch.device("cuda")
    print(f"{args.op} on {torch.cuda.get_device_name(0)}, {args.dtype}")
    calls = lif_calls(args, device) if args.op == "lif" else karat_calls(args, device)
    for name, call in calls:
        try:
            if args.calls_only is None:
                profile_call(name, call, args.iters)
            else:
                calls_only(name, call, args.calls_only)
        except Exception as err:  # noqa: BLE001  (one provider's failure must not hide the others' profiles)
            print(f"FAILED {name}: {type(err).__name__}: {' '.join(str(err).split())[:300]}")


if __name__ == "__main__":
    main()
