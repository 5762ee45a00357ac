"""The benchmark harness and pyfast/bench/lif.py: a --quick CPU run writes a complete, sane CSV."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from pyfast import _extension
from pyfast.bench import harness


def test_parse_list_accepts_spaces_and_commas():
    assert harness.parse_list(["1,4", "8"], int) == [1, 4, 8]
    assert harness.parse_list(None) is None


def test_fill_ratios_is_speedup_over_the_reference_of_the_same_case():
    rows = [
        harness.Row("op", "reference", "fwd", "2x3", 2, "fp32", "cpu", 4.0),
        harness.Row("op", "fast", "fwd", "2x3", 2, "fp32", "cpu", 1.0),
        harness.Row("op", "fast", "fwd", "2x3", 2, "bf16", "cpu", 1.0),  # no reference for bf16
    ]
    harness.fill_ratios(rows)
    assert rows[0].ratio_vs_reference == 1.0
    assert rows[1].ratio_vs_reference == 4.0
    assert math.isnan(rows[2].ratio_vs_reference)


def test_cpu_peak_memory_is_the_peak_not_what_is_left():
    n = 1 << 18  # 1 MiB of float32

    def fn():
        a = torch.ones(n)
        b = a * 2  # 2 MiB live here
        del a
        return b  # 1 MiB left at the end

    # The CPU allocator may round sizes up a little; the peak must see both tensors, the end only one.
    peak = harness.peak_memory_bytes(fn, torch.device("cpu"))
    assert 2 * 4 * n <= peak < 2 * 4 * n + 4096


def test_cpu_peak_memory_of_a_call_that_allocates_nothing_is_zero():
    x = torch.ones(1024)
    assert harness.peak_memory_bytes(lambda: x, torch.device("cpu")) == 0


def test_time_ms_is_positive():
    x = torch.ones(1024)
    assert harness.time_ms(lambda: x * 2, torch.device("cpu"), min_run_time=0.01) > 0


@pytest.mark.slow
def test_time_rounds_interleaves_and_paired_ratio_compares_round_by_round():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    rounds = harness.time_rounds(fns, torch.device("cpu"), min_run_time=0.0, block_s=0.0)
    assert len(rounds["a"]) == len(rounds["b"]) >= 3  # at least three rounds, one block of each per round
    assert all(t > 0 for t in rounds["a"] + rounds["b"])
    timed = order[4:]  # after two warm-up calls each (blocks of one call: block_s = 0)
    assert timed[:2] == ["a", "b"] and timed[2:4] == ["b", "a"]  # each round starts at the next function
    # the median of the per-round ratios: a round where both ran slow counts as that round's ratio
    assert harness.paired_ratio([2.0, 20.0, 4.0], [1.0, 10.0, 1.0]) == 2.0


def test_bench_lif_quick_cpu_csv(run_bench_quick):
    # 'cuda' cannot run on the CPU: it must be skipped with a printed reason, not silently.
    out, rows = run_bench_quick("lif", "--providers", "reference", "cpp", "cuda", "--threads", "1", timeout=300)
    assert "skip cuda:" in out
    assert "speedup over eager reference" in out

    providers = ["reference"] + (["cpp"] if _extension.has_cpp() else [])
    if not _extension.has_cpp():
        assert "skip cpp:" in out
    got = {(r["provider"], r["mode"], int(r["T"]), r["dtype"]) for r in rows}
    want = {(p, m, t, d) for p in providers for m in ("fwd", "fwd+bwd") for t in (1, 4) for d in ("fp32", "bf16")}
    assert got == want
    assert len(rows) == len(want)
    for r in rows:
        assert r["op"] == "lif" and r["device"] == "cpu" and r["shape"] == f"{r['T']}x4096"
        assert float(r["median_ms"]) > 0
        assert float(r["GB_per_s"]) > 0
        assert float(r["peak_mem_MB"]) > 0  # the spikes alone are allocated during every call
        assert r["torch_version"] == torch.__version__
        if r["provider"] == "reference":
            assert float(r["ratio_vs_reference"]) == 1.0
        else:
            assert float(r["ratio_vs_reference"]) > 0
            assert r["note"].startswith("spikes!=ref")


def test_time_rounds_on_cuda_rotates_and_drops_a_warm_up_round(monkeypatch):
    # The CUDA branch's bookkeeping, with time_ms replaced by a clock that counts calls (no GPU needed).
    order = []
    monkeypatch.setattr(harness, "time_ms", lambda fn, device, t: (order.append(fn()), float(len(order)))[1])
    rounds = harness.time_rounds({"a": lambda: "a", "b": lambda: "b"}, torch.device("cuda"), 0.3)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]  # four rounds, each starting one further along
    assert rounds == {"a": [4.0, 5.0, 8.0], "b": [3.0, 6.0, 7.0]}  # round 0 (calls 1 and 2) is not kept


def test_bench_lif_target_table_judges_paired_round_ratios():
    from pyfast.bench import lif as bench_lif

    def row(provider, ms):
        return harness.Row(op="lif", provider=provider, mode="fwd+bwd", shape="8x1024", T=8, dtype="fp32",
                           device="cpu", median_ms=ms)

    rows = [row("reference", 12.0), row("reference+compile", 2.0), row("cpp", 2.2)]
    # cpp: 6x the eager reference round by round; against the compiled reference 0.9x in every round but one.
    rounds = {"reference": [12.0, 12.0, 12.0], "reference+compile": [2.0, 1.8, 9.0], "cpp": [2.0, 2.0, 2.0]}
    table = bench_lif.target_table(rows, {rows[0].case(): rounds}, torch.device("cpu"))
    lines = {line.split("(")[1].split(")")[0]: line for line in table.splitlines()[2:]}
    assert "6.00x" in lines["reference -> cpp"] and lines["reference -> cpp"].endswith("yes")
    assert "1.00x" in lines["reference+compile -> cpp"] and lines["reference+compile -> cpp"].endswith("yes")
    rounds["reference+compile"] = [1.8, 1.8, 9.0]  # the median round ratio is now 0.9x: one slow round does not count
    table = bench_lif.target_table(rows, {rows[0].case(): rounds}, torch.device("cpu"))
    assert "0.90x" in table and table.rstrip().endswith("NO")
    assert bench_lif.target_table(rows, {}, torch.device("cuda")) == ""  # no T=32 fp16 case: no table


def test_bench_mesa_quick_runs_and_meets_the_memory_targets():
    from pyfast.bench import mesa as bench_mesa

    threads = torch.get_num_threads()
    try:
        res = bench_mesa.main(["--quick", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert res["bytes_mesa_fp32"] <= bench_mesa.TARGET_FP32 * res["bytes_base_fp32"]
    assert res["bytes_mesa_bf16"] <= bench_mesa.TARGET_BF16 * res["bytes_base_bf16"]
    assert res["grad_cos_min"] >= bench_mesa.TARGET_COS
    providers = {r.provider for r in res["rows"]}
    assert {"reference", "reference+compile"} <= providers
    assert all(r.median_ms > 0 and not r.note for r in res["rows"])


def test_check_cpp_errors_tells_a_raise_from_a_crash(monkeypatch, capsys):
    # bench/check_cpp_errors.py (a gpu_check.sh stage): the CPU cases raise here; a statement that raises nothing and
    # one that kills its interpreter with SIGSEGV (what errors inside _C did on the GPU machines) are both failures.
    from bench import check_cpp_errors

    # One one-op build (setup.py's flags) of the variants: the others differ in flags or compiler only, and each
    # build costs CI tens of seconds.
    minimal = check_cpp_errors.MINIMAL_CASES
    cases = {name: case for name, case in check_cpp_errors.CASES.items()
             if case[0] == "cpu" and (name not in minimal or name == minimal[0])}
    assert len(cases) == 3 and len(minimal) >= 4
    monkeypatch.setattr(check_cpp_errors, "CASES", cases)
    assert check_cpp_errors.main() == 0
    monkeypatch.setattr(check_cpp_errors, "CASES", {
        "silent": ("cpu", "torch.zeros(1)"),
        "crash": ("cpu", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"),
        "unbuildable": ("cpu", f"print('not built: no compiler')\nraise SystemExit({check_cpp_errors.NOT_BUILT})"),
    })
    assert check_cpp_errors.main() == 1
    out = capsys.readouterr().out
    assert "silent: FAILED (rc 3) no error raised" in out
    assert "crash: FAILED (rc -11)" in out
    assert "unbuildable: not run (not built: no compiler)" in out


def test_gpu_profile_rejects_a_non_positive_call_count(capsys):
    from bench import gpu_profile

    with pytest.raises(SystemExit) as exc:
        gpu_profile.main(["karat", "--providers", "cuda", "--calls-only", "0"])
    assert exc.value.code == 2
    assert "--calls-only must be >= 1" in capsys.readouterr().err


def test_gpu_profile_calls_only_makes_warm_up_and_counted_calls_and_nothing_else(monkeypatch, capsys):
    from bench import gpu_profile

    made = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: made.append("sync"))
    gpu_profile.calls_only("p", lambda: made.append("call"), 2)
    assert made.count("call") == gpu_profile.WARM_UP_CALLS + 2
    assert made[-1] == "sync"
    assert "3 warm-up calls, then 2" in capsys.readouterr().out


@pytest.mark.skipif(not _extension.has_cpp(), reason=f"needs pyfast._C: {_extension.cpp_reason()}")
def test_gpu_profile_karat_cases_cover_every_sequence_length():
    import argparse

    from bench import gpu_profile

    args = argparse.Namespace(tokens=[5, 9], providers=["cpp"], dtype="fp32")
    cases = list(gpu_profile.karat_calls(args, torch.device("cpu")))
    assert [name for name, _ in cases] == ["cpp N=5", "cpp N=9"]
    for (_, call), n in zip(cases, (5, 9)):
        grads = call()
        assert grads[0].shape == (32, 3, n, 64) and all(torch.isfinite(g).all() for g in grads)
