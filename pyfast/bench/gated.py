"""Benchmark of gated class-attention (``pyfast.ops.gated_class_attention``) and gradient routing.

Class-attention, at the GCAB shape by default (B=128, N+1=65, C=384, H=12; fp32), fwd and fwd+bwd (the backward
reaches x, the gate and every weight), providers:

  reference          the readable pure-PyTorch reference (pyfast.reference.gated: K and V materialised), eager
  reference+compile  the same under ``torch.compile``
  sdpa               the outside peer: UNGATED class-attention, q/k/v/proj Linears and
                     ``F.scaled_dot_product_attention`` on the single query, eager
  sdpa+gates         the same with GCAB's gates added in eager PyTorch (x . m, q/k . m, o . m, y . m)
  sdpa+gates+compile the gated SDPA version under ``torch.compile``
  cpp, cuda, triton  pyfast's kernels (triton is not timed under the CPU interpreter)

Ratios are speedups over the eager reference. The issue's targets, checked and printed: cpp (cuda on a GPU) at least
as fast as sdpa+gates+compile, and at most 1.2x the time of ungated sdpa. Gradient routing: one ``gated_route_``
call over the gated parameters of a GCAB block (q, k, v, proj, fc1, fc2 weights and biases, two embeddings) vs the
reference's per-tensor masks.

Examples:
  python -m pyfast.bench.gated --quick
  python -m pyfast.bench.gated --csv bench/results/gated.csv
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import pyfast
from pyfast import _extension
from pyfast.bench import harness
from pyfast.ops.gated import gated_route_
from pyfast.reference.gated import gated_class_attention_ref, gated_route_ref

TARGET_VS_SDPA = 1.2  # pyfast time / ungated SDPA time


def sdpa_class_attention(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads, gated=True):
    """Class-attention with ``F.scaled_dot_product_attention`` (the peer); ``gated=False`` drops every gate."""
    B, N1, C = x.shape
    D = C // num_heads
    xm = x * gate if gated else x
    q = F.linear(xm[:, :1], wq, bq)
    k = F.linear(xm, wk)
    v = F.linear(xm, wv, bv)
    if gated:
        q, k = q * gate, k * gate
    q = q.reshape(B, 1, num_heads, D).transpose(1, 2)
    k = k.reshape(B, N1, num_heads, D).transpose(1, 2)
    v = v.reshape(B, N1, num_heads, D).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v).reshape(B, C)
    y = F.linear(o * gate if gated else o, wp, bp)
    return y * gate if gated else y


def _providers(device: torch.device) -> list[str]:
    return [*harness.timed_providers(device), "sdpa", "sdpa+gates", "sdpa+gates+compile"]


def _fn(provider: str):
    if provider == "reference":
        return lambda *a: gated_class_attention_ref(*a)[0]
    if provider == "reference+compile":
        return torch.compile(lambda *a: gated_class_attention_ref(*a)[0])
    if provider == "sdpa":
        return lambda *a: sdpa_class_attention(*a, gated=False)
    if provider == "sdpa+gates":
        return sdpa_class_attention
    if provider == "sdpa+gates+compile":
        return torch.compile(sdpa_class_attention)
    return lambda *a: pyfast.ops.gated_class_attention(*a, backend=provider)


def cattn_bench(B, N1, C, H, device, dtype, min_run_time, sha) -> list[harness.Row]:
    torch.manual_seed(0)
    x = torch.randn(B, N1, C, device=device, dtype=dtype, requires_grad=True)
    gate = torch.sigmoid(torch.randn(C, device=device) * 3).to(dtype).requires_grad_()
    params = [(torch.randn(C, C, device=device) * C**-0.5).to(dtype).requires_grad_() for _ in range(4)]
    biases = [(torch.randn(C, device=device) * 0.1).to(dtype).requires_grad_() for _ in range(3)]
    wq, wk, wv, wp = params
    bq, bv, bp = biases
    args = (x, gate, wq, bq, wk, wv, bv, wp, bp, H)
    leaves = [x, gate, *params, *biases]
    y_ref = gated_class_attention_ref(*args)[0].detach()
    gy = torch.randn_like(y_ref)
    shape = f"{B}x{N1}x{C}/H{H}"
    rows = []
    for provider in _providers(device):
        fn = _fn(provider)
        with torch.no_grad():
            y = fn(*args)
        note = ""
        if provider != "sdpa" and not torch.allclose(y.float(), y_ref.float(), rtol=1e-3, atol=1e-4):
            note = f"differs from the reference by {(y.float() - y_ref.float()).abs().max().item():.3g}"

        def fwd(fn=fn):
            with torch.no_grad():
                return fn(*args)

        def fwd_bwd(fn=fn):
            return torch.autograd.grad(fn(*args), leaves, gy, allow_unused=True)

        fwd_bwd()  # compile / warm up outside the timing
        for mode, f in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            ms = harness.time_ms(f, device, min_run_time)
            rows.append(harness.Row("gated_cattn", provider, mode, shape, 1, harness.dtype_name(dtype), device.type,
                                    ms, GB_per_s=harness.gb_per_s(x.numel() * x.element_size(), ms), git_sha=sha,
                                    note=note))
    harness.fill_ratios(rows)
    return rows


def route_bench(C, device, min_run_time, sha) -> list[harness.Row]:
    torch.manual_seed(0)
    hid = 4 * C
    shapes = [((C, C), C, C)] * 4 + [((hid, C), hid, C), ((C, hid), C, hid)]
    grads, m_out, m_in = [], [], []
    for shape, o, i in shapes:
        grads += [torch.randn(shape, device=device), torch.randn(o, device=device)]
        mo, mi = (torch.rand(o, device=device) > 0.5).float(), (torch.rand(i, device=device) > 0.5).float()
        m_out += [mo, mo]
        m_in += [mi, None]
    embs = [torch.randn(C, device=device), torch.randn(hid, device=device)]
    emb_grads = [torch.randn_like(e) for e in embs]
    n = sum(g.numel() for g in grads + emb_grads)
    rows = []
    providers = ["reference"] + (["cpp"] if device.type == "cpu" and _extension.has_cpp() else []) + (
        ["cuda"] if device.type == "cuda" and _extension.has_cuda() else [])
    for provider in providers:
        if provider == "reference":
            def fn():
                return gated_route_ref(grads, m_out, [None if m is None else m for m in m_in], emb_grads, embs,
                                       s=400.0, s_max=800.0)
        else:
            def fn(provider=provider):
                gated_route_(grads, m_out, m_in, emb_grads, embs, s=400.0, s_max=800.0, backend=provider)
        ms = harness.time_ms(fn, device, min_run_time)
        rows.append(harness.Row("gated_route", provider, "step", f"GCAB block C={C}", 1, "fp32", device.type, ms,
                                GB_per_s=harness.gb_per_s(2 * 4 * n, ms), git_sha=sha))
    harness.fill_ratios(rows)
    return rows


def targets_table(rows: list[harness.Row], device: torch.device) -> str:
    ours = "cpp" if device.type == "cpu" else "cuda"
    by = {(r.provider, r.mode): r.median_ms for r in rows}
    body = []
    for mode in ("fwd", "fwd+bwd"):
        if (ours, mode) not in by:
            continue
        t = by[(ours, mode)]
        for peer, limit, what in (("sdpa+gates+compile", 1.0, "gated SDPA under torch.compile"),
                                  ("sdpa", TARGET_VS_SDPA, "ungated SDPA")):
            if (peer, mode) in by:
                r = t / by[(peer, mode)]
                body.append([mode, f"{ours} / {what}", f"{t:.3g} / {by[(peer, mode)]:.3g} ms", f"{r:.2f}x",
                             f"<= {limit}x", "yes" if r <= limit else "NO"])
    return harness._render(["mode", "comparison", "times", "ratio", "target", "met"], body)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and short timings (smoke test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=65, help="N+1, the task token included")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp64", "fp16", "bf16"])
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    ap.add_argument("--csv", default=None, help="write the rows here")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.tokens, args.dim, args.heads, args.min_run_time = 4, 9, 48, 4, 0.05
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    sha = harness.git_sha()
    harness.log(f"gated class-attention B={args.batch} N+1={args.tokens} C={args.dim} H={args.heads} {args.dtype}, "
                f"{harness.device_name(device)}, torch {torch.__version__}, pyfast {pyfast.__version__} ({sha})")
    rows = cattn_bench(args.batch, args.tokens, args.dim, args.heads, device, dtype, args.min_run_time, sha)
    providers = list(dict.fromkeys(r.provider for r in rows))
    harness.log("speedup over the eager reference")
    harness.log(harness.ratio_table(rows, providers, [p for p in providers if p in ("cpp", "cuda", "triton")]))
    harness.log("")
    harness.log(targets_table(rows, device))
    route_rows = route_bench(args.dim, device, args.min_run_time, sha)
    harness.log("")
    harness.log("gradient routing over one GCAB block's gated parameters")
    harness.log(harness.ratio_table(route_rows, [r.provider for r in route_rows],
                                    [r.provider for r in route_rows if r.provider != "reference"]))
    for r in rows:
        if r.note:
            harness.log(f"warning: {r.provider} {r.mode}: {r.note}")
    rows += route_rows
    if args.csv:
        with harness.CsvWriter(args.csv) as w:
            w.write(rows)
    return {"rows": rows}


if __name__ == "__main__":
    main()
