"""Benchmark of the multi-step LIF neuron (``pyfast.ops.lif``): forward and forward+backward, every provider.

Providers (columns of the printed table; each one that cannot run here is skipped with a one-line reason):

  reference          eager ``pyfast.ops.lif(backend="reference")`` (the ``lif_ref`` step loop); the ratio denominator
  reference+compile  ``torch.compile(lif_ref)`` (default inductor mode), recompiled for every case and warmed up
                     before timing; in fwd+bwd its backward is the AOTAutograd-compiled graph
  cpp / cuda / triton  ``pyfast.ops.lif(backend=...)``
  sj-torch / sj-cuda / sj-triton  SpikingJelly's multi-step LIF with its Torch, native CUDA and Triton
                     implementations (sj-cuda is what was the 'cupy' backend before SpikingJelly 2.0), if installed

Every provider computes the same neuron: tau=2, v_threshold=1, hard reset to 0, decay_input=True, sigmoid
surrogate with alpha=4, detach_reset=False, v0 = 0. Input x: [T, N], N = --neurons (default 2**20), mean 1,
std 1 (about a quarter of the neurons fire at each step).

Modes:
  fwd      forward only, under ``torch.no_grad()`` (no membrane history saved).
  fwd+bwd  forward, then the gradient of ``spikes.sum()`` w.r.t. x. It is taken as
           ``torch.autograd.grad(spikes, x, ones)`` with a contiguous ``ones`` made once per case: the same gradient,
           without the broadcast ``expand`` that ``sum().backward()`` hands to the op and that a kernel would have
           to materialise on every call.

GB/s counts the traffic of a fused kernel, the same bytes for every provider (so it is an effective bandwidth):
fwd = x read + spikes written = 2*T*N*elem; fwd+bwd = forward (x read, spikes and h written) + backward
(grad_spikes and h read, grad_x written) = 6*T*N*elem.

Each provider's first call (warm-up, compilation) is checked against the reference: the CSV's ``note`` holds the
fraction of spikes that differ and, in fwd+bwd, the largest |grad_x - reference grad_x|. In fp32 any spike
difference is printed as a warning; in bf16/fp16 the eager reference itself computes in that dtype, so small
differences near the threshold are expected. Then the providers of a case are timed in interleaved rounds
(``harness.time_rounds``; the CSV holds each one's median) and, where the run covers the foundation issue's target
case (CPU: T=8 fp32 fwd+bwd; GPU: T=32 fp16 fwd+bwd), a last table checks its targets (``target_table``).

--sj-model (instead of the neuron cases): a small SpikingJelly conv SNN (:func:`sj_model`: conv-BN-LIF,
conv-BN-PLIF, max-pool, conv-BN-IF, pool, linear-LIF; input [T, 16, 3, 32, 32], --quick [T, 2, 3, 8, 8]; default T=4
fp32 fwd+bwd) against its ``pyfast.convert.convert_spikingjelly`` copy, side by side in interleaved rounds. A call is
one training step's worth: ``functional.reset_net``, forward, and in fwd+bwd the backward of the spikes' sum into
every parameter. The CSV rows (op ``lif-sj-model``) take SpikingJelly as the ratio's reference; the converted
copy's note holds its spike mismatch and the largest difference in the first convolution's weight gradient.

Examples:
  python -m pyfast.bench.lif --quick --device cpu
  python -m pyfast.bench.lif --device cuda --T 1 4 8 32 --dtype fp32 bf16 fp16 --neurons 4194304
  python -m pyfast.bench.lif --sj-model --device cpu
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import statistics
import sys
from collections.abc import Callable

import torch
from torch import nn

import pyfast
from pyfast.backends import availability
from pyfast.bench import harness
from pyfast.reference.lif import lif_ref

OP = "lif"
ALL_PROVIDERS = ("reference", "reference+compile", "cpp", "cuda", "triton", "sj-torch", "sj-cuda", "sj-triton")
PYFAST_PROVIDERS = ("cpp", "cuda", "triton")
MODES = ("fwd", "fwd+bwd")
# The foundation issue's targets (target_table): (baseline provider, minimum speedup of pyfast's fastest over it).
TARGETS_CPU = (("reference", 5.0), ("reference+compile", 1.0))
TARGETS_GPU = (("sj-triton", 1.3),)
TARGET_BANDWIDTH = 0.7  # GPU: fraction of the measured device-to-device copy bandwidth
# The neuron every provider computes (SpikingJelly's LIFNode defaults, with the sigmoid surrogate's alpha spelled out).
LIF_KW = {"tau": 2.0, "v_threshold": 1.0, "v_reset": 0.0, "decay_input": True, "surrogate": "sigmoid", "alpha": 4.0,
          "detach_reset": False}


@dataclasses.dataclass
class Provider:
    name: str
    # Called once per case and mode, right before that provider is measured; returns forward(x) -> spikes.
    prepare: Callable[[], Callable[[torch.Tensor], torch.Tensor]]


# --------------------------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------------------------


def _pyfast_provider(name: str, device: torch.device) -> Provider:
    if name == "triton" and device.type == "cpu":
        raise harness.Unavailable("Triton runs on the CPU only in its interpreter (TRITON_INTERPRET=1); not worth timing")
    reason = availability(name, device) if name != "reference" else ""
    if reason:
        raise harness.Unavailable(reason)
    if name == "triton":
        import importlib.util

        try:
            found = importlib.util.find_spec("pyfast._triton.lif") is not None
        except ImportError:
            found = False
        if not found:
            raise harness.Unavailable("pyfast._triton.lif is not importable (kernels/lif.py missing or pyfast not installed)")

    def forward(x):
        return pyfast.ops.lif(x, backend=name, **LIF_KW)

    return Provider(name, lambda: forward)


def _compile_provider(device: torch.device) -> Provider:
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            raise harness.Unavailable("torch.compile on CUDA needs triton (pip install triton)")

    def prepare():
        # A fresh compilation per case: shapes and dtypes change between cases, and reusing one compiled function
        # would pile up recompilations until dynamo's recompile limit silently falls back to eager.
        torch._dynamo.reset()
        return torch.compile(lambda x: lif_ref(x, **LIF_KW)[0])

    return Provider("reference+compile", prepare)


def _sj_provider(name: str, device: torch.device) -> Provider:
    impl = name.removeprefix("sj-")
    if impl != "torch" and device.type != "cuda":
        raise harness.Unavailable(f"SpikingJelly's {impl} implementation runs on CUDA tensors; this run is on {device}")
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError as err:
        raise harness.Unavailable(f"spikingjelly is not importable ({err}); pip install spikingjelly") from err
    surrogate_fn = surrogate.Sigmoid(alpha=LIF_KW["alpha"])

    if "backend" in inspect.signature(neuron.LIFNode.__init__).parameters:
        # SpikingJelly < 2.0: LIFNode(backend=...) with 'torch', 'cupy' and (later versions) 'triton'.
        backend = {"torch": "torch", "cuda": "cupy", "triton": "triton"}[impl]
        node = neuron.LIFNode(tau=LIF_KW["tau"], v_threshold=LIF_KW["v_threshold"], v_reset=LIF_KW["v_reset"],
                              decay_input=LIF_KW["decay_input"], surrogate_function=surrogate_fn,
                              detach_reset=LIF_KW["detach_reset"], step_mode="m", backend="torch").to(device)
        if backend not in node.supported_backends:
            raise harness.Unavailable(f"this SpikingJelly's LIFNode supports backends {node.supported_backends}, not {backend}")
        node.backend = backend

        def forward_old(x):
            node.reset()  # v back to v_reset: every call starts from the same state
            return node(x)

        return Provider(name, lambda: forward_old)

    # SpikingJelly >= 2.0. LIFNode(step_mode="m").forward is materialize_states() + functional.lif_multi_step(). We
    # call the latter with a float32 v0 of zeros (what reset() + materialize_states() produce for fp32 input), made
    # on every call as the module does. LIFNode itself materialises the state in x's dtype, and in 2.0 a non-fp32
    # state drops to SpikingJelly's Torch reference loop (or raises when an implementation is forced), which would
    # understate SpikingJelly in bf16/fp16. For fp32 both paths run the same kernels.
    from spikingjelly.activation_based import functional

    def forward(x):
        v0 = torch.zeros(x.shape[1:], dtype=torch.float32, device=x.device)
        return functional.lif_multi_step(
            x, v0, LIF_KW["tau"], LIF_KW["decay_input"], LIF_KW["v_threshold"], LIF_KW["v_reset"], surrogate_fn,
            LIF_KW["detach_reset"], False,
        )[0]

    def prepare():
        if device.type == "cuda":
            _sj_select(impl, device)
        return forward

    if device.type == "cuda":
        _sj_select(impl, device)  # fail early with SpikingJelly's reason (e.g. native CUDA ops not built)
    return Provider(name, prepare)


def _sj_select(impl: str, device: torch.device) -> None:
    """Make SpikingJelly 2.0 run LIF on CUDA with ``impl`` ('cuda' native, 'triton' or 'torch').

    SpikingJelly reads SJ_LIF_CUDA_IMPLEMENTATION once, at import, and caches its choice per device. To time all of
    its implementations in one process, set what that variable would have set and drop the cached choice; then ask
    SpikingJelly which implementation it now uses, so a silent fallback cannot be mislabelled.
    """
    try:
        from spikingjelly._ops import lif as sj_lif

        selection = sj_lif._selection
        selection._requested = impl
        selection._selections.clear()
        selection._compiled_selections.clear()
    except (ImportError, AttributeError) as err:
        raise harness.Unavailable(f"cannot select SpikingJelly's LIF implementation in this version ({err})") from err
    try:
        got = selection.diagnostics(device)["implementation"]
    except (RuntimeError, ImportError, OSError) as err:
        raise harness.Unavailable(" ".join(str(err).split())[:300]) from err
    if got != impl:
        raise harness.Unavailable(f"SpikingJelly selected its {got!r} implementation when asked for {impl!r}")


def make_provider(name: str, device: torch.device) -> Provider:
    if name in ("reference", "cpp", "cuda", "triton"):
        return _pyfast_provider(name, device)
    if name == "reference+compile":
        return _compile_provider(device)
    if name.startswith("sj-"):
        return _sj_provider(name, device)
    raise ValueError(f"unknown provider {name!r}; choose from {ALL_PROVIDERS}")


# --------------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------------


def make_call(forward, x: torch.Tensor, mode: str):
    """The timed callable: returns (spikes, grad_x or None)."""
    if mode == "fwd":
        x_in = x.detach()

        def call():
            with torch.no_grad():
                return forward(x_in), None

        return call
    x_in = x.detach().requires_grad_(True)
    grad_spikes = torch.ones_like(x_in, memory_format=torch.contiguous_format)

    def call():
        spikes = forward(x_in)
        (grad_x,) = torch.autograd.grad(spikes, x_in, grad_spikes)
        return spikes, grad_x

    return call


def compare(out, ref, grad_name: str = "dx") -> tuple[str, float]:
    """Note for the CSV and the fraction of spikes that differ from the reference; ``out`` and ``ref`` are
    (spikes, gradient or None), the gradient named ``grad_name`` in the note."""
    spikes, grad = out
    ref_spikes, ref_grad = ref
    mismatch = (spikes.float() != ref_spikes.float()).float().mean().item()
    note = f"spikes!=ref {mismatch:.4%}"
    if grad is not None and ref_grad is not None:
        note += f"; max|{grad_name}-{grad_name}_ref| {(grad.float() - ref_grad.float()).abs().max().item():.3g}"
    return note, mismatch


def bytes_moved(mode: str, t: int, n: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return (2 if mode == "fwd" else 6) * t * n * elem


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def run_case(providers, x, mode, device, min_run_time, sha, failures) -> tuple[list[harness.Row], dict]:
    """Rows of one case and every provider's milliseconds per round. Each provider is first called once (warm-up,
    compilation; its output checked against the reference's), then all are timed in interleaved rounds
    (``harness.time_rounds``), then each one's peak memory is taken."""
    t, n = x.shape
    dt = harness.dtype_name(x.dtype)
    case = f"T={t} {dt} {mode}"
    calls, notes, ref_out = {}, {}, None
    for p in list(providers):
        try:
            call = make_call(p.prepare(), x, mode)
            out = call()  # warm-up: compilation, autotuning, lazy imports; also the correctness probe
            harness.synchronize(device)
        except harness.Unavailable as err:
            harness.log(f"skip {p.name}: {err}")
            providers.remove(p)
            continue
        except Exception as err:  # noqa: BLE001  (a provider's failure must not stop the others)
            harness.log(f"FAILED {p.name} ({case}): {_short(err)}")
            failures.append(f"{p.name} ({case}): {_short(err)}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        if p.name == "reference":
            ref_out, note = out, ""
        elif ref_out is not None:
            note, mismatch = compare(out, ref_out)
            if mismatch > 0 and x.dtype == torch.float32:
                harness.log(f"WARNING {p.name} ({case}): {note} in fp32")
        else:
            note = "no reference output to compare"
        del out
        calls[p.name], notes[p.name] = call, note
    del ref_out
    try:
        rounds = harness.time_rounds(calls, device, min_run_time)
    except Exception as err:  # noqa: BLE001
        harness.log(f"FAILED timing ({case}): {_short(err)}")
        failures.append(f"timing ({case}): {_short(err)}")
        return [], {}
    rows = []
    for name, call in calls.items():
        median = statistics.median(rounds[name])
        rows.append(harness.Row(
            op=OP, provider=name, mode=mode, shape="x".join(map(str, x.shape)), T=t, dtype=dt, device=device.type,
            median_ms=median, GB_per_s=harness.gb_per_s(bytes_moved(mode, t, n, x.dtype), median),
            peak_mem_MB=harness.peak_memory_bytes(call, device) / 2**20, git_sha=sha, note=notes[name],
        ))
    harness.fill_ratios(rows)
    return rows, rounds


def target_table(rows: list[harness.Row], rounds_by_case: dict, device: torch.device) -> str:
    """The foundation issue's targets, where this run measured their case. CPU, T=8 fp32 fwd+bwd: cpp at least 5x
    faster than the eager reference and at least as fast as the compiled one. GPU, T=32 fp16 fwd+bwd: the faster of
    cuda / triton at least 1.3x faster than SpikingJelly's Triton backend, at more than 70% of the device-to-device
    copy bandwidth measured here (the spec sheet's figure is higher). Speedups are medians of per-round ratios
    (``harness.paired_ratio``); the values column shows the medians."""
    body = []
    want_t, want_dtype, goals = (8, "fp32", TARGETS_CPU) if device.type == "cpu" else (32, "fp16", TARGETS_GPU)
    for r in rows:
        if (r.T, r.dtype, r.mode, r.provider) != (want_t, want_dtype, "fwd+bwd", "reference"):
            continue
        rounds = rounds_by_case[r.case()]
        case = f"{r.shape} {r.dtype}"
        ours = [p for p in PYFAST_PROVIDERS if p in rounds]
        if not ours:
            continue
        best = min(ours, key=lambda p: statistics.median(rounds[p]))
        for baseline, goal in goals:
            if baseline not in rounds:
                continue
            speedup = harness.paired_ratio(rounds[baseline], rounds[best])
            body.append([case, f"fwd+bwd ms ({baseline} -> {best})",
                         f"{statistics.median(rounds[baseline]):.3g} -> {statistics.median(rounds[best]):.3g}",
                         f"{speedup:.2f}x", f">= {goal}x", "yes" if speedup >= goal else "NO"])
        if device.type == "cuda":
            gbs = next(row.GB_per_s for row in rows if row.case() == r.case() and row.provider == best)
            copy = harness.copy_bandwidth_gb_s(device)
            body.append([case, f"{best} GB/s of the device copy's", f"{gbs:.0f} of {copy:.0f}", f"{gbs / copy:.0%}",
                         f"> {TARGET_BANDWIDTH:.0%}", "yes" if gbs / copy > TARGET_BANDWIDTH else "NO"])
    return harness._render(["case", "measure", "values", "ratio", "target", "met"], body) if body else ""


# --------------------------------------------------------------------------------------------------------------
# --sj-model: a SpikingJelly conv SNN against its convert_spikingjelly copy
# --------------------------------------------------------------------------------------------------------------

SJ_MODEL_OP = "lif-sj-model"
# (batch, channels of the first convolution, image side) of the --sj-model input [T, batch, 3, side, side].
SJ_MODEL_SIZE = (16, 32, 32)
SJ_MODEL_QUICK_SIZE = (2, 4, 8)


def sj_model(channels: int) -> nn.Sequential:
    """A small multi-step SpikingJelly conv SNN, [T, B, 3, H, W] -> spikes [T, B, 10]: conv-BN-LIF (tau 2),
    conv-BN-PLIF (init tau 2), 2x2 max-pool, conv-BN-IF, global average pool, linear-LIF; sigmoid surrogate
    (alpha 4), hard reset to 0. Raises :class:`harness.Unavailable` without SpikingJelly."""
    try:
        from spikingjelly.activation_based import layer, neuron, surrogate
    except ImportError as err:
        raise harness.Unavailable(f"spikingjelly is not importable ({err}); pip install -r requirements/peers.txt") \
            from err

    def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
        return [layer.Conv2d(c_in, c_out, 3, padding=1, bias=False, step_mode="m"),
                layer.BatchNorm2d(c_out, step_mode="m")]

    node = {"surrogate_function": surrogate.Sigmoid(alpha=4.0), "step_mode": "m"}
    return nn.Sequential(
        *conv_bn(3, channels), neuron.LIFNode(tau=2.0, **node),
        *conv_bn(channels, 2 * channels), neuron.ParametricLIFNode(init_tau=2.0, **node),
        layer.MaxPool2d(2, step_mode="m"),
        *conv_bn(2 * channels, 2 * channels), neuron.IFNode(**node),
        layer.AdaptiveAvgPool2d(1, step_mode="m"), layer.Flatten(step_mode="m"),
        layer.Linear(2 * channels, 10, step_mode="m"), neuron.LIFNode(tau=2.0, **node),
    )


def sj_model_call(net: nn.Module, x: torch.Tensor, mode: str):
    """The timed callable of --sj-model: a new sequence (``functional.reset_net``), the forward, and in fwd+bwd the
    backward of the spikes' sum into every parameter. Returns (spikes, the first convolution's weight gradient or
    None)."""
    from spikingjelly.activation_based import functional  # importable: sj_model() made the net

    if mode == "fwd":
        def call():
            functional.reset_net(net)
            with torch.no_grad():
                return net(x), None

        return call

    def call():
        functional.reset_net(net)
        net.zero_grad(set_to_none=True)
        spikes = net(x)
        spikes.sum().backward()
        return spikes, net[0].weight.grad

    return call


def run_sj_model(args, device: torch.device, sha: str) -> int:
    """--sj-model: every (T, dtype, mode) case, SpikingJelly's model against its converted copy; prints the speedups
    and writes the CSV rows. Returns the exit status."""
    batch, channels, side = SJ_MODEL_QUICK_SIZE if args.quick else SJ_MODEL_SIZE
    try:
        base = sj_model(channels).to(device)
    except harness.Unavailable as err:
        print(f"--sj-model: {err}")
        return 1
    gen = torch.Generator(device=device).manual_seed(args.seed)
    rows, body = [], []
    with harness.CsvWriter(args.csv) as writer:
        for t in args.T:
            for dt in args.dtype:
                nets = {"spikingjelly": copy.deepcopy(base).to(dt)}
                first = (t, dt) == (args.T[0], args.dtype[0])  # its one-line summary once
                nets["pyfast"] = pyfast.convert.convert_spikingjelly(copy.deepcopy(nets["spikingjelly"]), verbose=first)
                x = torch.rand((t, batch, 3, side, side), generator=gen, device=device).to(dt)
                for mode in args.modes:
                    calls = {name: sj_model_call(net, x, mode) for name, net in nets.items()}
                    want = calls["spikingjelly"]()
                    note, mismatch = compare(calls["pyfast"](), want, grad_name="dW")
                    if mismatch > 0 and dt == torch.float32:
                        harness.log(f"WARNING pyfast (T={t} fp32 {mode}): {note}")
                    del want
                    rounds = harness.time_rounds(calls, device, args.min_run_time)
                    case_rows = [harness.Row(
                        op=SJ_MODEL_OP, provider=name, mode=mode, shape="x".join(map(str, x.shape)), T=t,
                        dtype=harness.dtype_name(dt), device=device.type, median_ms=statistics.median(rounds[name]),
                        peak_mem_MB=harness.peak_memory_bytes(call, device) / 2**20, git_sha=sha,
                        note=note if name == "pyfast" else "",
                    ) for name, call in calls.items()]
                    harness.fill_ratios(case_rows, reference="spikingjelly")
                    writer.write(case_rows)
                    rows += case_rows
                    sj_ms, pf_ms = (r.median_ms for r in case_rows)
                    body.append([case_rows[0].shape, harness.dtype_name(dt), mode, f"{sj_ms:.4g}", f"{pf_ms:.4g}",
                                 f"{harness.paired_ratio(rounds['spikingjelly'], rounds['pyfast']):.2f}x", note])
    print(f"\nSpikingJelly conv SNN against its convert_spikingjelly copy, device={device.type} (speedup: median of "
          "per-round ratios, >1: the converted copy is faster)")
    print(harness._render(["shape", "dtype", "mode", "spikingjelly ms", "pyfast ms", "speedup", "pyfast vs sj"], body))
    print(f"\nCSV: {args.csv} ({len(rows)} rows)")
    return 0


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--T", nargs="+", help="time steps (default 1 4 8 32; --quick: 1 4)")
    ap.add_argument("--dtype", nargs="+", help="fp32, bf16, fp16 (default fp32 bf16)")
    ap.add_argument("--neurons", type=int, help="N, neurons per time step (default 2**20; --quick: 4096)")
    ap.add_argument("--providers", nargs="+", help=f"subset of {', '.join(ALL_PROVIDERS)} (default: all)")
    ap.add_argument("--modes", nargs="+", help="fwd, fwd+bwd (default both)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default cuda if available else cpu")
    ap.add_argument("--csv", help="output CSV (default bench/results/lif_<device>.csv)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke-test sizes and short timing")
    ap.add_argument("--min-run-time", type=float,
                    help="seconds of measurement per timing (CPU default 0.5, CUDA 0.1; --quick: 0.02)")
    ap.add_argument("--threads", type=int,
                    help="CPU: torch.set_num_threads (default torch's choice). On a loaded machine, OpenMP regions of "
                         "more threads than free cores stall at their barriers and dominate small cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sj-model", action="store_true",
                    help="time a small SpikingJelly conv SNN against its convert_spikingjelly copy instead of the neuron "
                         "cases (default T=4, fp32, fwd+bwd; CSV bench/results/lif-sj-model_<device>.csv)")
    args = ap.parse_args(argv)

    args.T = harness.parse_list(args.T, int) or ([4] if args.sj_model else [1, 4] if args.quick else [1, 4, 8, 32])
    dtypes = harness.parse_list(args.dtype) or (["fp32"] if args.sj_model else ["fp32", "bf16"])
    bad = [d for d in dtypes if d not in harness.DTYPES]
    if bad:
        ap.error(f"--dtype: unknown {bad}; choose from fp32, bf16, fp16")
    args.dtype = [harness.DTYPES[d] for d in dtypes]
    args.neurons = args.neurons or (4096 if args.quick else 2**20)
    args.providers = harness.parse_list(args.providers) or list(ALL_PROVIDERS)
    bad = [p for p in args.providers if p not in ALL_PROVIDERS]
    if bad:
        ap.error(f"--providers: unknown {bad}; choose from {', '.join(ALL_PROVIDERS)}")
    if "reference" not in args.providers:
        args.providers.insert(0, "reference")  # every ratio is taken against it
    else:
        args.providers.insert(0, args.providers.pop(args.providers.index("reference")))
    args.modes = harness.parse_list(args.modes) or (["fwd+bwd"] if args.sj_model else list(MODES))
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        ap.error(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    if min(args.T) < 1 or args.neurons < 1:
        ap.error("--T and --neurons must be >= 1")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to torch")
    if args.min_run_time is None:
        args.min_run_time = 0.02 if args.quick else (0.1 if args.device == "cuda" else 0.5)
    args.csv = args.csv or harness.default_csv(SJ_MODEL_OP if args.sj_model else "lif", args.device)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sha = harness.git_sha()
    print(f"pyfast bench: {SJ_MODEL_OP if args.sj_model else OP} on {harness.device_name(device)}; torch "
          f"{torch.__version__}; git {sha}")
    if args.sj_model:
        return run_sj_model(args, device, sha)
    print(f"N={args.neurons} T={args.T} dtypes={[harness.dtype_name(d) for d in args.dtype]} modes={args.modes} "
          f"min_run_time={args.min_run_time}")

    providers = []
    for name in args.providers:
        try:
            providers.append(make_provider(name, device))
        except harness.Unavailable as err:
            print(f"skip {name}: {err}")
    print(f"providers: {', '.join(p.name for p in providers)}", flush=True)
    names = [p.name for p in providers]

    gen = torch.Generator(device=device).manual_seed(args.seed)
    all_rows, failures, rounds_by_case = [], [], {}
    cases = [(t, dt) for t in args.T for dt in args.dtype]
    bar = harness.progress(range(len(cases) * len(args.modes)), desc="lif")
    bar_iter = iter(bar)
    with harness.CsvWriter(args.csv) as writer:
        for t, dt in cases:
            x = torch.randn((t, args.neurons), generator=gen, device=device, dtype=torch.float32).add_(1.0).to(dt)
            for mode in args.modes:
                rows, rounds = run_case(providers, x, mode, device, args.min_run_time, sha, failures)
                writer.write(rows)
                all_rows += rows
                if rows:
                    rounds_by_case[rows[0].case()] = rounds
                next(bar_iter, None)
            del x
    if hasattr(bar, "close"):
        bar.close()

    shown = [n for n in names if any(r.provider == n for r in all_rows)]
    print(f"\nspeedup over eager reference (ratio_vs_reference; >1 is faster), device={args.device}")
    print(harness.ratio_table(all_rows, shown, fastest_of=PYFAST_PROVIDERS))
    if "fwd+bwd" in args.modes:
        print("\npeak memory during one fwd+bwd (MB above what was live before the call)")
        print(harness.memory_table(all_rows, shown, "fwd+bwd"))
    targets = target_table(all_rows, rounds_by_case, device)
    if targets:
        print("\ntargets (speedups: medians of per-round ratios, the providers timed in interleaved rounds)")
        print(targets)
    print(f"\nCSV: {args.csv} ({len(all_rows)} rows)")
    if failures:
        print(f"{len(failures)} provider run(s) FAILED:")
        for f in failures:
            print(f"  {f}")
        return 1
    if not all_rows:
        print("no measurement was made")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
