"""Benchmark of Fourier-KArAt attention (``pyfast.ops.karat_attention``) against the materialising reference.

Per case (ViT-Tiny attention by default: B=32, H=3, D=64, G=3, r=12, N=65 and N=197, fp32, on --device), every
provider that can run here:

  reference          pyfast.reference.karat.karat_attention_ref, eager (materialises A, cos/sin [B,H,N,N,G+1], sigma)
  reference+compile  the same under torch.compile
  cpp / cuda / triton the fused op (basis generated tile by tile, never stored; backward saves q, k, v and z)
  sdpa               softmax attention, F.scaled_dot_product_attention (the attention KArAt replaces)

and for each: median fwd and fwd+bwd milliseconds (the providers timed in interleaved rounds,
``harness.time_rounds``; fwd+bwd = forward plus ``torch.autograd.grad`` of every input), peak MB of one fwd+bwd
(``harness.peak_memory_bytes``) and the bytes autograd saves for backward in one forward
(``torch.autograd.graph.saved_tensors_hooks``; distinct storages, the coefficient parameters a, b, W excluded; q, k,
v counted). Ratios are speedups over the eager reference; the summary checks the
issue's CPU targets: saved bytes <= 1/5 of the reference's and fwd+bwd >= 2x faster than the compiled reference (the
median of the per-round ratios).

Examples:
  python -m pyfast.bench.karat --quick
  python -m pyfast.bench.karat --device cpu --csv bench/results/karat.csv
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import pyfast
from pyfast.bench import harness
from pyfast.ops.karat import karat_attention
from pyfast.reference.karat import karat_attention_ref

TARGET_SAVED = 0.2  # fused saved bytes / reference saved bytes
TARGET_VS_COMPILED = 2.0  # compiled reference fwd+bwd ms / fused fwd+bwd ms
PROVIDERS = ("reference", "reference+compile", "cpp", "cuda", "triton", "sdpa")


def available(device: torch.device) -> list[str]:
    return [*harness.timed_providers(device), "sdpa"]


def _forward(provider: str, compiled_ref):
    if provider == "reference":
        return lambda q, k, v, a, b, W: karat_attention_ref(q, k, v, a, b, W)
    if provider == "reference+compile":
        return lambda q, k, v, a, b, W: compiled_ref(q, k, v, a, b, W)
    if provider == "sdpa":
        return lambda q, k, v, a, b, W: F.scaled_dot_product_attention(q, k, v)
    return lambda q, k, v, a, b, W: karat_attention(q, k, v, a, b, W, backend=provider)


def make_case(B, H, N, D, G, r, dtype, device) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """``(q, k, v, a, b, W)`` requiring grad (seeded) and an output gradient ``g`` for one attention shape."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    a, b = (torch.randn(H, r, N, G + 1, device=device, requires_grad=True) for _ in range(2))
    W = (torch.randn(H, N, r, device=device) / (N * (r * (G + 1)) ** 0.5)).requires_grad_()
    return (q, k, v, a, b, W), torch.randn(B, H, N, D, device=device, dtype=dtype)


def fwd_bwd_step(provider: str, compiled_ref, inputs, g):
    """One timed fwd+bwd of ``provider``: the forward, then the gradient of every input (q, k, v for SDPA)."""
    fwd = _forward(provider, compiled_ref)
    wrt = inputs[:3] if provider == "sdpa" else inputs
    return lambda: torch.autograd.grad(fwd(*inputs), wrt, g)


def run_case(B, H, N, D, G, r, dtype, device, providers, min_run_time, sha
             ) -> tuple[list[harness.Row], dict, dict[str, list[float]]]:
    """Rows of one shape, the saved-for-backward bytes per provider, and the fwd+bwd milliseconds per provider per
    round (interleaved rounds, ``harness.time_rounds``)."""
    inputs, g = make_case(B, H, N, D, G, r, dtype, device)
    a, b, W = inputs[3:]
    compiled_ref = torch.compile(karat_attention_ref)
    shape = f"{B}x{H}x{N}x{D} G{G} r{r}"
    with torch.no_grad():
        expected = karat_attention_ref(*inputs).float()
    saved, peak, notes, forwards, steps = {}, {}, {}, {}, {}
    for provider in providers:
        fwd = _forward(provider, compiled_ref)
        notes[provider] = []
        if provider != "sdpa":
            with torch.no_grad():
                err = (fwd(*inputs).float() - expected).abs().max().item() / max(expected.abs().max().item(), 1e-30)
            if not err <= (1e-4 if dtype == torch.float32 else 3e-2):
                notes[provider].append(f"max relative error {err:.2e} against the reference")
        steps[provider] = fwd_bwd_step(provider, compiled_ref, inputs, g)
        steps[provider]()  # warm-up (compilation)
        forwards[provider] = lambda fwd=fwd: fwd(*inputs)
        saved[provider] = harness.saved_bytes(forwards[provider], [a, b, W])
        peak[provider] = harness.peak_memory_bytes(steps[provider], device) / 2**20
    # The providers' timings interleave (harness.time_rounds): the ratios are this benchmark's result, and on
    # a shared machine one provider timed after another saw different load.
    with torch.no_grad():
        fwd_rounds = harness.time_rounds(forwards, device, min_run_time)
    step_rounds = harness.time_rounds(steps, device, min_run_time)
    fwd_ms, step_ms = ({p: statistics.median(t) for p, t in rounds.items()} for rounds in (fwd_rounds, step_rounds))
    rows = []
    for provider in providers:
        note = "; ".join([f"saved_MB={saved[provider] / 2**20:.3f}", *notes[provider]])
        for mode, ms in (("fwd", fwd_ms[provider]), ("fwd+bwd", step_ms[provider])):
            rows.append(harness.Row("karat", provider, mode, shape, 1, harness.dtype_name(dtype), device.type, ms,
                                    peak_mem_MB=peak[provider] if mode == "fwd+bwd" else float("nan"), git_sha=sha,
                                    note=note))
    harness.fill_ratios(rows)
    return rows, saved, step_rounds


def summary_table(rows, saved_by_shape: dict, rounds_by_shape: dict, fused: str) -> str:
    """The issue's targets per shape. The speedup over the compiled reference is the median over interleaved rounds
    of the round's ratio (``harness.paired_ratio``), which a shared machine's drifting load moves far less than the
    ratio of the two medians; the values column shows the medians."""
    body = []
    by_key = {(r.shape, r.mode, r.provider): r for r in rows}
    for shape, saved in saved_by_shape.items():
        rounds = rounds_by_shape[shape]
        ref, comp = by_key.get((shape, "fwd+bwd", "reference")), by_key.get((shape, "fwd+bwd", "reference+compile"))
        ours, sdpa = by_key.get((shape, "fwd+bwd", fused)), by_key.get((shape, "fwd+bwd", "sdpa"))
        if ours is None or ref is None:
            continue
        frac = saved[fused] / saved["reference"]
        body.append([shape, "saved MB (ref -> fused)", f"{saved['reference'] / 2**20:.2f} -> {saved[fused] / 2**20:.2f}",
                     f"{frac:.3f}", f"<= {TARGET_SAVED}", "yes" if frac <= TARGET_SAVED else "NO"])
        if comp is not None:
            sp = harness.paired_ratio(rounds["reference+compile"], rounds[fused])
            body.append([shape, "fwd+bwd ms (compiled ref -> fused)", f"{comp.median_ms:.1f} -> {ours.median_ms:.1f}",
                         f"{sp:.2f}x", f">= {TARGET_VS_COMPILED}x", "yes" if sp >= TARGET_VS_COMPILED else "NO"])
        if sdpa is not None:
            body.append([shape, "fwd+bwd ms (softmax sdpa -> fused)", f"{sdpa.median_ms:.1f} -> {ours.median_ms:.1f}",
                         f"{ours.median_ms / sdpa.median_ms:.2f}x slower", "-", "-"])
    return harness._render(["case", "measure", "values", "ratio", "target", "met"], body)


def main(argv=None) -> list[harness.Row]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and short timings (smoke test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--tokens", nargs="+", default=None, help="sequence lengths N (default 65 197)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--G", type=int, default=3)
    ap.add_argument("--r", type=int, default=12)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--providers", nargs="+", default=None, help=f"subset of {PROVIDERS}")
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    ap.add_argument("--csv", default=None, help="write one row per (case, provider, mode) here")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args(argv)
    tokens = harness.parse_list(args.tokens, int) or [65, 197]
    if args.quick:
        args.batch, args.head_dim, args.r, args.min_run_time = 2, 16, 4, 0.05
        tokens = [17] if args.tokens is None else tokens
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    providers = [p for p in available(device) if args.providers is None or p in args.providers]
    unknown = set(args.providers or ()) - set(PROVIDERS)
    if unknown:
        ap.error(f"--providers: unknown {sorted(unknown)}; choose from {PROVIDERS}")
    sha = harness.git_sha()
    harness.log(f"Fourier-KArAt attention, {harness.device_name(device)}, torch {torch.__version__}, "
                f"pyfast {pyfast.__version__} ({sha}), {torch.get_num_threads()} threads")
    rows, saved_by_shape, rounds_by_shape = [], {}, {}
    for N in tokens:
        case_rows, saved, rounds = run_case(args.batch, args.heads, N, args.head_dim, args.G, args.r, dtype, device,
                                    providers, args.min_run_time, sha)
        rows += case_rows
        saved_by_shape[case_rows[0].shape] = saved
        rounds_by_shape[case_rows[0].shape] = rounds
    harness.log("speedup over the eager reference (B x H x N x D, G harmonics, rank r)")
    harness.log(harness.ratio_table(rows, providers, [p for p in providers if p in ("cpp", "cuda", "triton")]))
    harness.log("")
    harness.log("peak MB of one fwd+bwd")
    harness.log(harness.memory_table(rows, providers, "fwd+bwd"))
    harness.log("")
    harness.log("saved-for-backward MB of one forward (parameters excluded)")
    harness.log(harness._render(["case", *providers], [[s, *(f"{saved[p] / 2**20:.3f}" for p in providers)]
                                                      for s, saved in saved_by_shape.items()]))
    fused = next((p for p in ("cuda", "cpp", "triton") if p in providers), None)
    if fused is not None:
        harness.log("")
        harness.log(summary_table(rows, saved_by_shape, rounds_by_shape, fused))
    for r in rows:
        if "error" in r.note and r.mode == "fwd":
            harness.log(f"warning: {r.provider} {r.shape}: {r.note}")
    if args.csv:
        with harness.CsvWriter(args.csv) as w:
            w.write(rows)
    return rows


if __name__ == "__main__":
    main()
