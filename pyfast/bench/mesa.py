"""Benchmark of Mesa 8-bit activation storage (``pyfast.mesa``, ``pyfast.ops.mesa_quantize``).

Block measurements, one ViT block with timm naming (``pyfast.models.vit.Block``), default ViT-Small: B=64, N=65,
C=384, 6 heads, fp32 parameters, on --device:

  saved bytes   every tensor autograd saves during one forward (counted with
                ``torch.autograd.graph.saved_tensors_hooks``; a storage saved twice counts once; parameters excluded:
                tensors whose storage is a parameter's), for the unquantized block in fp32 and under bf16 autocast, and
                for the Mesa block (``pyfast.mesa.convert``, all six layer kinds, 6 groups) in both settings;
  grad cosine   cosine similarity of every parameter gradient of the Mesa block against the unquantized block's, on
                the same input and output gradient (the first batch: running estimates = this batch's ranges);
                the table shows the smallest;
  time          median fwd+bwd milliseconds of the unquantized and the Mesa block (``harness.time_ms``).

Quantize microbenchmark: ``mesa_quantize`` (stochastic, 6 groups on the last axis) and ``mesa_dequantize`` of an
activation of the block's [B, N, C] size, for every provider that can run here: reference (eager),
reference+compile (``torch.compile`` of the reference), cpp, cuda, triton; ratios are speedups over the reference.

Examples:
  python -m pyfast.bench.mesa --quick
  python -m pyfast.bench.mesa --device cpu --csv bench/results/mesa.csv
"""

from __future__ import annotations

import argparse
import copy

import torch

import pyfast
import pyfast.convert.mesa
from pyfast.bench import harness
from pyfast.models.vit import Block
from pyfast.ops.mesa import dequantize_fn, quantize_fn
from pyfast.reference.mesa import mesa_dequantize_ref, mesa_quantize_ref

# Targets of the issue, checked and printed with the figures.
TARGET_FP32 = 0.30  # Mesa saved bytes / fp32 baseline
TARGET_BF16 = 0.55  # Mesa saved bytes / bf16-autocast baseline
TARGET_COS = 0.99
TARGET_TIME_CPU = 1.5



def _autocast(device: torch.device, on: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def block_measurements(B, N, C, H, device, min_run_time, time_it=True) -> dict:
    torch.manual_seed(0)
    base = Block(C, H).to(device)
    mesa = pyfast.convert.mesa.convert(copy.deepcopy(base))
    x = torch.randn(B, N, C, device=device, requires_grad=True)
    gy = torch.randn(B, N, C, device=device)
    res = {}

    # Gradient fidelity first, while the Mesa block's estimates are uninitialized (set by this batch).
    grads = []
    for m in (base, mesa):
        m.zero_grad(set_to_none=True)
        m(x).backward(gy)
        grads.append([p.grad.flatten().double() for p in m.parameters()])
    cos = [torch.nn.functional.cosine_similarity(a, b, dim=0).item() for a, b in zip(*grads)]
    names = [n for n, _ in base.named_parameters()]
    res["grad_cos_min"], res["grad_cos_worst"] = min(zip(cos, names))

    for label, m in (("base", base), ("mesa", mesa)):
        for amp in (False, True):
            def run(m=m, amp=amp):
                with _autocast(device, amp):
                    return m(x)

            res[f"bytes_{label}_{'bf16' if amp else 'fp32'}"] = harness.saved_bytes(run, list(m.parameters()))

    if time_it:
        for label, m in (("base", base), ("mesa", mesa)):
            def step(m=m):
                m(x).backward(gy)

            res[f"ms_{label}"] = harness.time_ms(step, device, min_run_time)
    return res


def _providers(device: torch.device) -> list[str]:
    return harness.timed_providers(device)


def quantize_microbench(B, N, C, G, device, min_run_time, sha) -> list[harness.Row]:
    torch.manual_seed(0)
    x = torch.randn(B, N, C, device=device)
    state = (torch.ones(G, device=device), torch.zeros(G, device=device), torch.tensor([True], device=device))
    seed = torch.tensor([12345], device=device)
    q_ref, c, s = mesa_quantize_ref(x, *state, seed, -1, 256, 0.9, True, True)
    compiled_q = torch.compile(mesa_quantize_ref)
    compiled_d = torch.compile(mesa_dequantize_ref)
    rows = []
    for provider in _providers(device):
        if provider == "reference":
            qf, df = mesa_quantize_ref, mesa_dequantize_ref
        elif provider == "reference+compile":
            qf, df = compiled_q, compiled_d
        else:
            qf, df = quantize_fn(provider), dequantize_fn(provider)
        q = qf(x, *state, seed, -1, 256, 0.9, True, True)[0]
        note = "" if torch.equal(q, q_ref) else "codes differ from the reference"
        for mode, fn, nbytes in (
            ("quantize", lambda qf=qf: qf(x, *state, seed, -1, 256, 0.9, True, True), 2 * x.numel() * 4 + x.numel()),
            ("dequantize", lambda df=df: df(q_ref, c, s, -1, 256, torch.float32), x.numel() * 5),
        ):
            ms = harness.time_ms(fn, device, min_run_time)
            rows.append(harness.Row("mesa", provider, mode, "x".join(map(str, x.shape)), 1, "fp32", device.type, ms,
                                    GB_per_s=harness.gb_per_s(nbytes, ms), git_sha=sha, note=note))
    harness.fill_ratios(rows)
    return rows


def block_table(res: dict, device: torch.device) -> str:
    mb = 1 / 2**20
    f32, b16 = res["bytes_mesa_fp32"] / res["bytes_base_fp32"], res["bytes_mesa_bf16"] / res["bytes_base_bf16"]
    body = [
        ["saved MB, fp32", f"{res['bytes_base_fp32'] * mb:.2f}", f"{res['bytes_mesa_fp32'] * mb:.2f}",
         f"{f32:.1%}", f"<= {TARGET_FP32:.0%}", "yes" if f32 <= TARGET_FP32 else "NO"],
        ["saved MB, bf16 autocast", f"{res['bytes_base_bf16'] * mb:.2f}", f"{res['bytes_mesa_bf16'] * mb:.2f}",
         f"{b16:.1%}", f"<= {TARGET_BF16:.0%}", "yes" if b16 <= TARGET_BF16 else "NO"],
        ["grad cosine (min over params)", "1", f"{res['grad_cos_min']:.5f}", res["grad_cos_worst"],
         f">= {TARGET_COS}", "yes" if res["grad_cos_min"] >= TARGET_COS else "NO"],
    ]
    if "ms_base" in res:
        t = res["ms_mesa"] / res["ms_base"]
        target = TARGET_TIME_CPU if device.type == "cpu" else 1.15
        body.append([f"fwd+bwd ms ({device.type})", f"{res['ms_base']:.1f}", f"{res['ms_mesa']:.1f}", f"{t:.2f}x",
                     f"<= {target}x", "yes" if t <= target else "NO"])
    return harness._render(["measure", "unquantized", "mesa", "ratio", "target", "met"], body)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and short timings (smoke test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=65)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    ap.add_argument("--csv", default=None, help="write the quantize microbenchmark rows here")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (torch.set_num_threads); on a loaded machine 1 gives steadier ratios")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.tokens, args.dim, args.heads, args.min_run_time = 4, 9, 48, 6, 0.05
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sha = harness.git_sha()
    harness.log(f"Mesa, one ViT block B={args.batch} N={args.tokens} C={args.dim} heads={args.heads}, "
                f"{harness.device_name(device)}, torch {torch.__version__}, pyfast {pyfast.__version__} ({sha})")
    res = block_measurements(args.batch, args.tokens, args.dim, args.heads, device, args.min_run_time)
    harness.log(block_table(res, device))
    rows = quantize_microbench(args.batch, args.tokens, args.dim, args.heads, device, args.min_run_time, sha)
    providers = list(dict.fromkeys(r.provider for r in rows))
    harness.log("")
    harness.log("quantize / dequantize of one [B, N, C] activation: speedup over the eager reference")
    harness.log(harness.ratio_table(rows, providers, [p for p in providers if not p.startswith("reference")]))
    for r in rows:
        if r.note:
            harness.log(f"warning: {r.provider} {r.mode}: {r.note}")
    if args.csv:
        with harness.CsvWriter(args.csv) as w:
            w.write(rows)
    res["rows"] = rows
    return res


if __name__ == "__main__":
    main()
