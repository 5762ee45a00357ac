"""Shared benchmark harness: every op benchmark ``pyfast/bench/<op>.py`` times, measures and reports through this module.

What it gives a benchmark script:

* :func:`time_ms` -- median milliseconds of one call. CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (with
  all of torch's intra-op threads, not the Timer's default of one, so ``at::parallel_for`` kernels are timed as
  users run them). CUDA: ``triton.testing.do_bench`` (median; it flushes L2 between calls and times with events).
* :func:`peak_memory_bytes` -- peak bytes allocated by torch *during* one call, above what was live before it.
  See its docstring for how (CUDA allocator statistics; on CPU the allocator's own reports to the profiler).
* :class:`Row` and :class:`CsvWriter` -- one CSV row per (op, provider, mode, shape, T, dtype, device), written as
  soon as a case is measured so a run cut short by a timeout keeps every finished case.
* :func:`fill_ratios` -- ``ratio_vs_reference`` = reference median / provider median, from the same run (so > 1 is
  faster than the eager reference and the reference row is exactly 1.0).
* :func:`ratio_table` / :func:`memory_table` -- the printed summaries; :func:`progress` / :func:`log` -- a tqdm bar
  over cases whose messages do not tear it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

import torch

from pyfast import _extension
from pyfast.backends import availability

# The directory above the pyfast package: the source checkout (whose git sha a CSV row records), or site-packages.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


# --------------------------------------------------------------------------------------------------------------
# Output: progress bar and messages
# --------------------------------------------------------------------------------------------------------------

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # tqdm is a dependency of pyfast, but the harness must still run without it
    _tqdm = None


def progress(iterable: Iterable, total: int | None = None, desc: str = ""):
    """A tqdm bar over ``iterable`` (on stderr), or the bare iterable when tqdm is missing."""
    if _tqdm is None:
        return iterable
    return _tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)


def log(msg: str) -> None:
    """Print a line to stdout without breaking an active tqdm bar."""
    if _tqdm is not None:
        _tqdm.write(msg, file=sys.stdout)
    else:
        print(msg, flush=True)


_said: set[str] = set()


def log_once(msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        log(msg)


# --------------------------------------------------------------------------------------------------------------
# Environment facts
# --------------------------------------------------------------------------------------------------------------


def git_sha() -> str:
    """Short sha of HEAD, with ``-dirty`` when the working tree has changes; ``unknown`` outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PACKAGE_PARENT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_PARENT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------


def time_ms(fn: Callable[[], object], device: torch.device, min_run_time: float) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    CPU: ``blocked_autorange(min_run_time=min_run_time)`` seconds of measurement (its block-size estimate doubles as
    warm-up). CUDA: ``triton.testing.do_bench`` with ``rep = 1000 * min_run_time`` ms of measurement after 25 ms of
    warm-up, median of the per-call event timings.
    """
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=max(1, round(1000 * min_run_time)), return_mode="median"))
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def time_rounds(fns: dict[str, Callable[[], object]], device: torch.device, min_run_time: float,
                block_s: float = 0.05) -> dict[str, list[float]]:
    """Per-call wall times in milliseconds of every ``fns[name]()``, one value per round, measured interleaved.

    CPU: each round times one block (about ``block_s`` seconds of calls) of every function, starting at a different
    one each round, until ``min_run_time`` seconds per function have been spent (at least three rounds). CUDA: three
    rounds of :func:`time_ms` (a third of ``min_run_time`` each) per function, the order rotating, after one such
    round that is not kept: a GPU's first case can run several times slower for every provider, as if still warming
    up (bench/RESULTS.md, "Launch choices"). On a shared machine whose speed drifts (CPU load; GPU clocks, a
    neighbour's work), the functions of one round see the same conditions: compare them round by round
    (:func:`paired_ratio`) or by their medians.
    """
    names = list(fns)

    def in_turn(rnd: int) -> list[str]:  # round rnd starts rnd names further along
        return names[rnd % len(names):] + names[:rnd % len(names)]

    if device.type == "cuda":
        per_round = {name: [] for name in names}
        for rnd in range(4):  # round 0: warm-up, not kept
            for name in in_turn(rnd):
                ms = time_ms(fns[name], device, min_run_time / 3)
                if rnd > 0:
                    per_round[name].append(ms)
        return per_round
    calls = {}
    for name in names:  # warm-up, and the calls per block
        fns[name]()
        start = time.perf_counter()
        fns[name]()
        calls[name] = max(1, round(block_s / max(time.perf_counter() - start, 1e-9)))
    per_call: dict[str, list[float]] = {name: [] for name in names}
    spent = 0.0
    rnd = 0
    while spent < min_run_time * len(names) or rnd < 3:
        for name in in_turn(rnd):
            start = time.perf_counter()
            for _ in range(calls[name]):
                fns[name]()
            elapsed = time.perf_counter() - start
            per_call[name].append(elapsed / calls[name] * 1e3)
            spent += elapsed
        rnd += 1
    return per_call


def copy_bandwidth_gb_s(device: torch.device, nbytes: int = 1 << 28) -> float:
    """GB/s (bytes read + written) of a device-to-device copy of ``nbytes``: what a memory-bound kernel's effective
    bandwidth is judged against, measured on the machine beside the spec sheet's figure."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, 0.2)
    return gb_per_s(2 * nbytes, ms)


def paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median over rounds of ``slow[i] / fast[i]``: the speedup of one interleaved function over another
    (:func:`time_rounds`), each round's load cancelling out of its own ratio."""
    return statistics.median(s / f for s, f in zip(slow, fast))


# --------------------------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------------------------

# Kineto writes these to the process's stderr (fd 2) on every profiler start/stop; they carry no information here.
_KINETO_NOISE = re.compile(r"USDT:|SyncActivityProfilerHandler|gpuGetDeviceCount|DeviceProperties\.cpp|^\s*$")


@contextlib.contextmanager
def _filtered_stderr():
    """Capture fd 2 (C++ code writes there directly), then re-emit every line that is not Kineto start/stop noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if not _KINETO_NOISE.search(line):
                    print(line, file=sys.stderr)


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _filtered_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
        del out
    # One "[memory]" event per allocation (+bytes) and per free (-bytes) in the CPU allocator, from every thread.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes that torch held during one call of ``fn()``, above the bytes live when the call started.

    Everything allocated inside the call counts, including the outputs it returns (they are still alive at the
    end), tensors saved for backward, and temporaries allocated *inside* kernels or compiled graphs.

    CUDA: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated() - memory_allocated()`` taken before
    the call (allocated bytes, not the caching allocator's reserved pool).

    CPU: torch has no allocator statistics for the CPU, so this runs ``fn`` once under
    ``torch.profiler.profile(profile_memory=True)``. With memory profiling on, torch's CPU allocator reports every
    allocation and free (size and timestamp) to the profiler; the running sum of those, in time order, is the live
    byte count and its maximum is the peak. Unlike a ``TorchDispatchMode`` that watches op outputs, this also sees
    temporaries that C++ kernels and inductor-generated code allocate without going through the dispatcher. Frees
    of memory allocated before the call make the running sum dip below zero; those dips never raise the peak. The
    profiler slows the one measured call, which does not matter: only bytes are read from it, never time.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return peak
    return _cpu_peak_bytes(fn)


# --------------------------------------------------------------------------------------------------------------
# Rows, CSV
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One measurement. ``ratio_vs_reference`` is filled by :func:`fill_ratios` once the case's reference is known."""

    op: str
    provider: str
    mode: str  # "fwd", "bwd" or "fwd+bwd"
    shape: str  # the input's full shape, e.g. "8x1048576"
    T: int
    dtype: str
    device: str
    median_ms: float
    ratio_vs_reference: float = math.nan
    GB_per_s: float = math.nan
    peak_mem_MB: float = math.nan
    torch_version: str = torch.__version__
    git_sha: str = ""
    note: str = ""  # free text: cross-checks against the reference, why a figure is missing

    def case(self) -> tuple:
        """Rows of one case share this key; their ratios are taken against the case's reference row."""
        return self.op, self.mode, self.shape, self.T, self.dtype, self.device


COLUMNS = [f.name for f in dataclasses.fields(Row)]


def fill_ratios(rows: Sequence[Row], reference: str = "reference") -> None:
    """Set ``ratio_vs_reference = t_reference / t_provider`` for every row whose case has a reference row."""
    ref_ms = {r.case(): r.median_ms for r in rows if r.provider == reference}
    for r in rows:
        t_ref = ref_ms.get(r.case())
        r.ratio_vs_reference = t_ref / r.median_ms if t_ref is not None and r.median_ms > 0 else math.nan


def gb_per_s(nbytes: float, median_ms: float) -> float:
    return nbytes / (median_ms * 1e-3) / 1e9 if median_ms > 0 else math.nan


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class CsvWriter:
    """Writes the header at once and appends rows as they come (flushed), so a killed run keeps finished cases."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, "w", newline="")  # noqa: SIM115  (closed in close())
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)
        self._file.flush()

    def write(self, rows: Iterable[Row]) -> None:
        for r in rows:
            self._writer.writerow([_fmt(getattr(r, c)) for c in COLUMNS])
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------------------
# Printed tables
# --------------------------------------------------------------------------------------------------------------


def _render(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def _cases(rows: Sequence[Row]) -> list[tuple]:
    seen: dict[tuple, None] = {}
    for r in rows:
        seen.setdefault((r.shape, r.T, r.dtype, r.mode), None)
    return list(seen)


def ratio_table(rows: Sequence[Row], providers: Sequence[str], fastest_of: Sequence[str],
                reference: str = "reference") -> str:
    """Rows = (shape, T, dtype, mode); columns = providers, cell = speedup over the eager reference (``-`` if not
    measured); then the reference's median ms and the GB/s of the fastest provider in ``fastest_of``."""
    by_key = {(r.shape, r.T, r.dtype, r.mode, r.provider): r for r in rows}
    header = ["shape", "T", "dtype", "mode", *providers, f"{reference} ms", "fastest pyfast", "GB/s"]
    body = []
    for shape, t, dt, mode in _cases(rows):
        cells = [shape, str(t), dt, mode]
        for p in providers:
            r = by_key.get((shape, t, dt, mode, p))
            cells.append("-" if r is None or math.isnan(r.ratio_vs_reference) else f"{r.ratio_vs_reference:.2f}x")
        ref = by_key.get((shape, t, dt, mode, reference))
        cells.append("-" if ref is None else f"{ref.median_ms:.4g}")
        ours = [by_key[k] for k in ((shape, t, dt, mode, p) for p in fastest_of) if k in by_key]
        best = min(ours, key=lambda r: r.median_ms) if ours else None
        cells += ["-", "-"] if best is None else [best.provider, f"{best.GB_per_s:.1f}"]
        body.append(cells)
    return _render(header, body)


def memory_table(rows: Sequence[Row], providers: Sequence[str], mode: str) -> str:
    """Peak MB per provider (columns) for each (shape, T, dtype) of ``mode``."""
    by_key = {(r.shape, r.T, r.dtype, r.provider): r for r in rows if r.mode == mode}
    header = ["shape", "T", "dtype", *providers]
    body = []
    for shape, t, dt, m in _cases(rows):
        if m != mode:
            continue
        cells = [shape, str(t), dt]
        for p in providers:
            r = by_key.get((shape, t, dt, p))
            cells.append("-" if r is None or math.isnan(r.peak_mem_MB) else f"{r.peak_mem_MB:.4g}")
        body.append(cells)
    return _render(header, body)


def parse_list(values: Sequence[str] | None, cast=str) -> list | None:
    """``--T 1 4 8`` and ``--T 1,4,8`` (or a mix) both give [1, 4, 8]."""
    if values is None:
        return None
    return [cast(v) for item in values for v in str(item).split(",") if v.strip()]


# --------------------------------------------------------------------------------------------------------------
# PNG bar chart
# --------------------------------------------------------------------------------------------------------------


def plot_ratio_bars(csv_rows: Sequence[dict], path: str, title: str = "") -> bool:
    """Grouped bar chart of ``ratio_vs_reference`` (one group per case, one bar per provider) from rows read back
    with :func:`read_csv`; log scale, a line at 1x. Returns False (and writes nothing) without matplotlib or rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in csv_rows if r.get("ratio_vs_reference") not in ("", None)]
    if not rows:
        return False
    cases = list(dict.fromkeys(" ".join(str(r[k]) for k in ("mode", "shape", "dtype")) for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    ratio = {(" ".join(str(r[k]) for k in ("mode", "shape", "dtype")), r["provider"]): float(r["ratio_vs_reference"])
             for r in rows}
    width = 0.8 / len(providers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cases) * max(1, len(providers)) / 3), 4.5))
    for i, p in enumerate(providers):
        xs = [c + (i - (len(providers) - 1) / 2) * width for c in range(len(cases))]
        ax.bar(xs, [ratio.get((case, p), 0.0) for case in cases], width, label=p)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)), cases, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("speedup over the eager reference (x)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


@dataclasses.dataclass
class CommonArgs:
    """The settings every op benchmark resolves the same way (see :func:`add_common_args`)."""

    device: torch.device
    dtype: torch.dtype
    providers: list[str]  # always includes "reference" (the ratios' baseline)
    modes: list[str]
    rounds: int
    min_run_time: float
    csv_path: str


def add_common_args(ap, name: str, providers: Sequence[str], rounds: int) -> None:
    """The options shared by the op benchmarks (providers, modes, dtype, device, CSV, quick, timing, memory,
    threads); ``name`` names the default CSV ``bench/results/<name>_<device>.csv``."""
    ap.add_argument("--providers", nargs="+", help=f"subset of {', '.join(providers)} (default all)")
    ap.add_argument("--modes", nargs="+", help="fwd+bwd, fwd (default both)")
    ap.add_argument("--dtype", default="fp32", help="fp32 (default), bf16, fp16")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default cuda if available else cpu")
    ap.add_argument("--csv", help=f"output CSV (default bench/results/{name}_<device>.csv)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, short timing (a smoke test)")
    ap.add_argument("--rounds", type=int, help=f"alternating timing rounds per provider (default {rounds}; --quick: 1)")
    ap.add_argument("--min-run-time", type=float, help="seconds of measurement per timing (default 0.5; --quick 0.02)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")


def default_csv(name: str, device_type: str) -> str:
    """Where a benchmark writes its CSV unless ``--csv`` says otherwise: ``bench/results/<name>_<device>.csv`` under
    the current directory."""
    return os.path.join("bench", "results", f"{name}_{device_type}.csv")


def resolve_common_args(args, name: str, providers: Sequence[str], rounds: int) -> CommonArgs:
    """Apply ``--threads`` and resolve the options of :func:`add_common_args`; unknown providers exit with a message."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen = parse_list(args.providers) or list(providers)
    unknown = [p for p in chosen if p not in providers]
    if unknown:
        raise SystemExit(f"unknown providers {unknown}; known: {', '.join(providers)}")
    if "reference" not in chosen:
        chosen = ["reference", *chosen]
    return CommonArgs(device, DTYPES[args.dtype], chosen, parse_list(args.modes) or ["fwd+bwd", "fwd"],
                      args.rounds or (1 if args.quick else rounds),
                      args.min_run_time or (0.02 if args.quick else 0.5),
                      args.csv or default_csv(name, device.type))


# --------------------------------------------------------------------------------------------------------------
# Providers: availability, compilation, saved bytes
# --------------------------------------------------------------------------------------------------------------


class Unavailable(Exception):
    """A provider cannot run here: it is skipped with this reason."""


def check_provider(provider: str, device: torch.device) -> None:
    """Raise :class:`Unavailable` (with the reason) unless pyfast's backend ``provider`` can be timed on ``device``:
    the Triton interpreter on a CPU is a correctness tool, not a timing target."""
    if provider == "triton" and device.type == "cpu":
        raise Unavailable("the Triton interpreter on CPU is a correctness tool, not a timing target")
    reason = availability(provider, device)
    if not reason and provider == "cuda" and not _extension.has_cuda():
        reason = _extension.cuda_reason()
    if reason:
        raise Unavailable(reason)


def timed_providers(device: torch.device) -> list[str]:
    """The pyfast providers a benchmark times on ``device``: the eager and compiled reference, then each backend
    built here (Triton not in the CPU interpreter, a correctness tool)."""
    out = ["reference", "reference+compile"]
    if device.type == "cpu" and _extension.has_cpp():
        out.append("cpp")
    if device.type == "cuda" and _extension.has_cuda():
        out.append("cuda")
    if _extension.has_triton(device) and (device.type == "cuda" or not _extension.triton_interpret()):
        out.append("triton")
    return out


def compiled(fn):
    """``torch.compile(fn)`` after a dynamo reset, so each provider compiles afresh (no cache from another case)."""
    torch._dynamo.reset()
    return torch.compile(fn)


def saved_bytes(fn, params) -> int:
    """Bytes of the distinct non-parameter storages autograd saves while ``fn()`` runs (the graph is kept alive
    until the count is done, then freed)."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())
