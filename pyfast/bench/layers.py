"""Benchmark of the layer ops of the method suite: CRReLU, ghost batch norm and the multi-sample dropout head.

Providers per op, all computing the same maths on the same inputs (except the peers, see below):

  reference           the readable pure-PyTorch definition (pyfast.reference.*), eager
  reference+compile   the same function under torch.compile (inductor)
  cpp / cuda / triton pyfast's custom ops (cuda and triton need a GPU; the Triton interpreter is not timed on CPU)
  peer                what a user would otherwise run: F.gelu for CRReLU (the activation it replaces: different
                      maths, a cost yardstick), the official per-chunk loop of F.batch_norm for ghost BN, and a
                      Python loop of M (F.dropout -> F.linear -> F.cross_entropy) for multi-sample dropout

Every provider does the whole training-mode step: ghost BN also writes its running statistics (the reference's are
copied into the buffers, so torch.compile cannot drop them as dead code).

Modes: ``fwd`` (training-mode forward under no_grad) and ``fwd+bwd`` (forward, then ``torch.autograd.grad`` of the
output, or loss, w.r.t. every input: x and eps; x, weight and bias; h, weight and bias). Providers are timed in
alternation ``--rounds`` times and the fastest median is kept. The first table gives speedups over the eager
reference; the second puts each pyfast kernel next to reference+compile (the bar: every op beats it on CPU). GB/s
counts the logical traffic (x read and y written in the forward; dy, x read and dx written in the backward).

Examples:
  python -m pyfast.bench.layers --quick
  python -m pyfast.bench.layers --ops crrelu ghost_bn --modes fwd+bwd
  python -m pyfast.bench.layers --device cuda
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from pyfast._dtypes import acc_dtype
from pyfast.bench import harness
from pyfast.ops.crrelu import crrelu
from pyfast.ops.ghost_bn import ghost_batch_norm
from pyfast.ops.msdrop import multi_sample_dropout_loss
from pyfast.reference.crrelu import crrelu_ref
from pyfast.reference.ghost_bn import ghost_batch_norm_loop_ref, ghost_batch_norm_ref
from pyfast.reference.msdrop import msdrop_loss_ref

OPS = ("crrelu", "ghost_bn", "msdrop")
PROVIDERS = ("reference", "reference+compile", "cpp", "cuda", "triton", "peer")
KERNELS = ("cpp", "cuda", "triton")
PEERS = {"crrelu": "F.gelu", "ghost_bn": "per-chunk F.batch_norm loop", "msdrop": "loop of M dropout+linear+CE"}

# crrelu: (shape, per-channel dim or None); ghost_bn: (shape, ghost batch size); msdrop: (B, D, C, M, p).
CASES = {
    "crrelu": [((128, 65, 768), None), ((128, 64, 32, 32), 1)],  # ViT-Tiny MLP hidden (32x32, patch 4); a conv map
    "ghost_bn": [((512, 64, 16, 16), 32), ((1024, 128, 8, 8), 128), ((4096, 512), 128)],
    "msdrop": [(256, 512, 100, 8, 0.5), (1024, 768, 100, 8, 0.5)],
}
QUICK_CASES = {
    "crrelu": [((8, 17, 64), None), ((4, 8, 8, 8), 1)],
    "ghost_bn": [((24, 8, 8, 8), 8)],
    "msdrop": [(16, 32, 10, 4, 0.5)],
}



# Each builder returns (name of the case, inputs that need grad, function of those inputs, bytes of fwd traffic,
# bytes of bwd traffic).


def _crrelu(provider, case, device, dtype):
    shape, dim = case
    x = torch.randn(shape, device=device, dtype=dtype) * 2
    c = 1 if dim is None else shape[dim]
    eps = torch.full((c,), 0.01, device=device, dtype=acc_dtype(dtype))
    d = 1 if dim is None else dim
    if provider == "reference":
        fn = lambda x, e: crrelu_ref(x, e, d)
    elif provider == "reference+compile":
        fn = harness.compiled(lambda x, e: crrelu_ref(x, e, d))
    elif provider == "peer":
        fn = lambda x, e: F.gelu(x)
    else:
        harness.check_provider(provider, device)
        fn = lambda x, e: crrelu(x, e, d, backend=provider)
    name = "x".join(map(str, shape)) + ("" if dim is None else f"/C@{dim}")
    nbytes = x.numel() * x.element_size()
    return name, [x, eps] if provider != "peer" else [x], (lambda *a: fn(*a) if provider != "peer" else fn(a[0], None)), \
        2 * nbytes, 3 * nbytes


def _ghost_bn(provider, case, device, dtype):
    shape, ghost = case
    c = shape[1]
    x = torch.randn(shape, device=device, dtype=dtype) + 0.5
    acc = acc_dtype(dtype)
    w = torch.ones(c, device=device, dtype=acc)
    b = torch.zeros(c, device=device, dtype=acc)
    rm, rv = torch.zeros(c, device=device, dtype=acc), torch.ones(c, device=device, dtype=acc)

    def ref(x, w, b):  # training mode writes the running statistics back, as pyfast and the peer do
        y, new_mean, new_var = ghost_batch_norm_ref(x, rm, rv, w, b, ghost, 0.1, 1e-5)
        with torch.no_grad():
            rm.copy_(new_mean)
            rv.copy_(new_var)
        return y

    if provider == "reference":
        fn = ref
    elif provider == "reference+compile":
        fn = harness.compiled(ref)
    elif provider == "peer":
        fn = lambda x, w, b: ghost_batch_norm_loop_ref(x, rm, rv, w, b, ghost, 0.1, 1e-5)
    else:
        harness.check_provider(provider, device)
        fn = lambda x, w, b: ghost_batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, ghost, backend=provider)
    nbytes = x.numel() * x.element_size()
    return "x".join(map(str, shape)) + f"/B{ghost}", [x, w, b], fn, 2 * nbytes, 3 * nbytes


def _msdrop(provider, case, device, dtype):
    bsz, d, c, m, p = case
    h = torch.randn(bsz, d, device=device, dtype=dtype)
    w = torch.randn(c, d, device=device, dtype=dtype) / d**0.5
    b = torch.zeros(c, device=device, dtype=dtype)
    y = torch.randint(0, c, (bsz,), device=device)
    seed = torch.tensor([12345], device=device)
    if provider == "reference":
        fn = lambda h, w, b: msdrop_loss_ref(h, w, b, y, seed, m, p)[0]
    elif provider == "reference+compile":
        fn = harness.compiled(lambda h, w, b: msdrop_loss_ref(h, w, b, y, seed, m, p)[0])
    elif provider == "peer":
        fn = lambda h, w, b: sum(F.cross_entropy(F.linear(F.dropout(h, p, True), w, b), y) for _ in range(m)) / m
    else:
        harness.check_provider(provider, device)
        fn = lambda h, w, b: multi_sample_dropout_loss(h, w, b, y, m, p, seed=seed, backend=provider)[0]
    nbytes = m * h.numel() * h.element_size()  # the M masked copies of h, written and read by the GEMM
    return f"B{bsz}xD{d}xC{c}/M{m}", [h, w, b], fn, 2 * nbytes, 3 * nbytes


BUILDERS = {"crrelu": _crrelu, "ghost_bn": _ghost_bn, "msdrop": _msdrop}


def _calls(inputs, fn, mode):
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return fn(*inputs)
        return fwd
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grad = torch.randn_like(out)

    def fwd_bwd():
        return torch.autograd.grad(fn(*leaves), leaves, grad)

    return fwd_bwd


def bench_op(op, cases, device, dtype, modes, providers, min_run_time, rounds, memory, sha, writer, builder=None,
             peer=None):
    """Times every provider on every case and mode (``builder`` / ``peer``: the case builder and the peer's name,
    by default this file's for ``op``; other bench scripts pass their own)."""
    builder = builder or BUILDERS[op]
    peer = peer or PEERS[op]
    rows = []
    for case in harness.progress(cases, desc=op):
        for mode in modes:
            calls, traffic, name = {}, {}, None
            for p in providers:
                try:
                    name, inputs, fn, fwd_bytes, bwd_bytes = builder(p, case, device, dtype)
                except harness.Unavailable as err:
                    harness.log_once(f"skip {p}: {err}")
                    continue
                calls[p] = _calls(inputs, fn, mode)
                traffic[p] = fwd_bytes + (bwd_bytes if mode == "fwd+bwd" else 0)
            for call in calls.values():  # warm-up: compilation, oneDNN / MKL primitive caches, first allocations
                call()
                call()
            best = {p: math.inf for p in calls}
            for _ in range(rounds):
                for p, call in calls.items():
                    best[p] = min(best[p], harness.time_ms(call, device, min_run_time))
            case_rows = []
            for p, ms in best.items():
                peak = harness.peak_memory_bytes(calls[p], device) / 2**20 if memory else math.nan
                note = f"peer: {peer}" if p == "peer" else ""
                case_rows.append(harness.Row(op, p, mode, name, 1, harness.dtype_name(dtype), device.type, ms,
                                             GB_per_s=harness.gb_per_s(traffic[p], ms), peak_mem_MB=peak,
                                             git_sha=sha, note=note))
            harness.fill_ratios(case_rows)
            writer.write(case_rows)
            rows += case_rows
    return rows


def compile_table(rows) -> str:
    """Per (op, shape, mode): reference+compile ms, the fastest pyfast kernel, and compile time / kernel time."""
    by_key = {(r.op, r.shape, r.mode, r.provider): r for r in rows}
    header = ["op", "shape", "mode", "compile ms", "pyfast", "pyfast ms", "vs compile", "beats compile"]
    body = []
    for op, shape, mode in dict.fromkeys((r.op, r.shape, r.mode) for r in rows):
        comp = by_key.get((op, shape, mode, "reference+compile"))
        ours = [by_key[k] for k in ((op, shape, mode, p) for p in KERNELS) if k in by_key]
        if comp is None or not ours:
            continue
        best = min(ours, key=lambda r: r.median_ms)
        ratio = comp.median_ms / best.median_ms
        body.append([op, shape, mode, f"{comp.median_ms:.4g}", best.provider, f"{best.median_ms:.4g}",
                     f"{ratio:.2f}x", "yes" if ratio > 1 else "NO"])
    return harness._render(header, body)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--ops", nargs="+", help=f"subset of {', '.join(OPS)} (default all)")
    harness.add_common_args(ap, "layers", PROVIDERS, rounds=2)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    common = harness.resolve_common_args(args, "layers", PROVIDERS, 2)
    device, dtype, providers, modes = common.device, common.dtype, common.providers, common.modes
    ops = harness.parse_list(args.ops) or list(OPS)
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise SystemExit(f"unknown ops {unknown}; known: {', '.join(OPS)}")
    cases = QUICK_CASES if args.quick else CASES
    csv_path = common.csv_path
    sha = harness.git_sha()
    print(f"device: {harness.device_name(device)}, torch {torch.__version__}, git {sha}, dtype {args.dtype}, "
          f"threads {torch.get_num_threads()}")
    rows = []
    with harness.CsvWriter(csv_path) as writer:
        for op in ops:
            rows += bench_op(op, cases[op], device, dtype, modes, providers, common.min_run_time, common.rounds,
                             not args.no_memory, sha, writer)
    ran = [p for p in providers if any(r.provider == p for r in rows)]
    for op in ops:
        op_rows = [r for r in rows if r.op == op]
        print(f"\n{op}: speedup over eager reference (peer: {PEERS[op]})")
        print(harness.ratio_table(op_rows, ran, [p for p in KERNELS if p in ran]))
    print("\npyfast kernel vs reference + torch.compile (time ratio; > 1: pyfast is faster)")
    print(compile_table(rows))
    print(f"\nCSV: {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
