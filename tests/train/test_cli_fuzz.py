"""Fuzz of `pyfast train`'s flags and config-file values: every draw ends with exit status 0 (it trained) or 2 (a
message naming what is wrong), never another status and never a traceback.

The runs are in-process (``pyfast.cli.main``) and tiny (the small SNN at T=1, one step of 8 images), and the example
counts are bounded so the tier stays within CI's time.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfast import cli

BASE = ["train", "--model", "snn-small", "--model-arg", "T=1", "--max-steps-per-epoch", "1", "--epochs", "1",
        "--batch-size", "8", "--no-progress"]
TINY = {"model": "snn-small", "model_args": {"T": 1}, "max_steps_per_epoch": 1, "epochs": 1, "batch_size": 8,
        "progress": False}  # what a config file's draw starts from (its own values override these)
_runs = itertools.count()

NUMBERS = st.sampled_from(["0", "-1", "1", "2", "0.5", "1e-3", "1e9", "nan", "inf", "-inf", "x", "", "1,2", "[1]"])
FLAGS = {
    "--epochs": NUMBERS, "--batch-size": NUMBERS, "--lr": NUMBERS, "--momentum": NUMBERS,
    "--weight-decay": NUMBERS, "--warmup-epochs": NUMBERS, "--label-smoothing": NUMBERS, "--seed": NUMBERS,
    "--max-steps-per-epoch": NUMBERS, "--eval-batch-size": NUMBERS,
    "--optimizer": st.sampled_from(["sgd", "adam", "adamw", "lion", ""]),
    "--schedule": st.sampled_from(["cosine", "constant", "step"]),
    "--method": st.sampled_from(["standard", "weighted-conv", "large-batch", "kd", "nope"]),
    "--device": st.sampled_from(["cpu", "auto", "cuda:7", "tpu", ""]),
    "--backend": st.sampled_from(["auto", "cpp", "reference", "cuda", "fortran"]),
    "--on-nonfinite": st.sampled_from(["stop", "skip", "ignore"]),
    "--model-arg": st.sampled_from(["T=2", "T=0", "T=nan", "hidden=16", "hidden=-3", "width=2", "T", "=1", "T=[1"]),
    "--method-arg": st.sampled_from(["teacher=/nonexistent", "x=1", "ghost_batch_size=4", "learnable_den=maybe"]),
    "--data": st.sampled_from(["digits", "cifar10", "imagenet"]),
}
SWITCHES = ["--resume", "--overwrite", "--amp"]

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 4) | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["", "no", "false", "cpu", "sgd", "snn-small", "digits", "1e-3"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["T", "width", "x"]), inner,
                                                                max_size=2),
    max_leaves=4)
SMALL_INTS, RATES = st.integers(1, 3), st.sampled_from([0.0, 0.1, 0.5, 1.0, 1e-3])
VALID = {  # values that can train (each key also draws JUNK: wrong types, NaN, out of range)
    "epochs": SMALL_INTS, "batch_size": st.sampled_from([4, 8, 16]), "lr": st.sampled_from([1e-3, 0.1, 10.0]),
    "optimizer": st.sampled_from(["sgd", "adam", "adamw"]), "momentum": RATES, "weight_decay": RATES,
    "schedule": st.sampled_from(["cosine", "constant"]), "seed": st.integers(0, 2**31), "resume": st.booleans(),
    "overwrite": st.booleans(), "amp": st.booleans(), "device": st.sampled_from(["cpu", "auto"]),
    "backend": st.sampled_from(["auto", "cpp", "reference"]), "model_args": st.just({"T": 1}),
    "method_args": st.just({}), "label_smoothing": RATES, "warmup_epochs": RATES,
    "on_nonfinite": st.sampled_from(["stop", "skip"]), "progress": st.just(False), "max_steps_per_epoch": SMALL_INTS,
    "eval_batch_size": st.sampled_from([1000, 97]), "method": st.sampled_from(["standard", "weighted-conv"]),
}


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of ``pyfast ARGV``; an exception escaping the CLI fails the test with its argv."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    except Exception as exc:  # the defect this tier is for
        raise AssertionError(f"pyfast {' '.join(argv)} raised {type(exc).__name__}: {exc}") from exc
    return code, err.getvalue()


def check_outcome(argv: list[str], code: int, stderr: str) -> None:
    assert code in (0, 2), f"pyfast {' '.join(argv)} exited {code}: {stderr[-500:]}"
    assert "Traceback" not in stderr, f"pyfast {' '.join(argv)}: {stderr[-2000:]}"
    if code == 2:
        assert stderr.strip(), f"pyfast {' '.join(argv)} exited 2 without a message"


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(flags=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.none(), max_size=4).flatmap(
    lambda chosen: st.fixed_dictionaries({k: FLAGS[k] for k in chosen})),
    switches=st.lists(st.sampled_from(SWITCHES), unique=True, max_size=2))
def test_train_flags_exit_0_or_2_with_a_message(tmp_path_factory, flags, switches):
    out = tmp_path_factory.mktemp(f"fuzz{next(_runs)}")
    argv = [*BASE, "--out", str(out / "run"), *itertools.chain.from_iterable(flags.items()), *switches]
    code, stderr = run_cli(argv)
    check_outcome(argv, code, stderr)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(values=st.dictionaries(st.sampled_from(sorted(VALID)), st.none(), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: st.one_of(VALID[k], JUNK) for k in keys})))
def test_config_file_values_exit_0_or_2_with_a_message(tmp_path_factory, values):
    folder = tmp_path_factory.mktemp(f"fuzzcfg{next(_runs)}")
    config = {**TINY, "out": str(folder / "run"), **values}
    path = folder / "run.json"
    # JSON has no NaN or infinity: write them as YAML's .nan / .inf in a YAML file instead.
    if any(isinstance(v, float) and not math.isfinite(v) for v in config.values()):
        path = folder / "run.yaml"
        path.write_text("\n".join(f"{k}: {_yaml(v)}" for k, v in config.items()) + "\n")
    else:
        path.write_text(json.dumps(config))
    argv = ["train", "--config", str(path)]
    code, stderr = run_cli(argv)
    check_outcome(argv, code, stderr)


def _yaml(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return json.dumps(value)


@pytest.mark.parametrize("extra, config, message", [
    (["--model", "resnet18", "--model-arg", "width=0"], None, "width must be .*> 0, got 0"),
    (["--model", "resnet18", "--model-arg", "width=-1"], None, "width must be .*> 0, got -1"),
    (["--model", "resnet18", "--model-arg", "width=nan"], None, "width must be .*> 0, got nan"),
    (["--model", "vit-tiny", "--model-arg", "attention=nope"], None, "unknown attention 'nope'"),
    ([], {"amp": "false"}, "amp must be true or false, got 'false'"),
    ([], {"resume": "no"}, "resume must be true or false, got 'no'"),
    ([], {"out": 5}, "out must be a string or null, got 5"),
    ([], {"model_args": [1, 2]}, "model_args must be a mapping of option names to values"),
    ([], {"epochs": 1.5}, "epochs must be an integer, got 1.5"),
    (["--batch-size", "1"], None, "batch normalisation, which needs at least 2"),
])
def test_reported_probes_exit_2_naming_the_value(tmp_path, extra, config, message):
    argv = [*(BASE if "--model" not in extra else BASE[:1] + BASE[5:]), "--out", str(tmp_path / "run"), *extra]
    if config is not None:  # the file alone, so no flag overrides the value under test
        (tmp_path / "c.json").write_text(json.dumps({**TINY, "out": str(tmp_path / "run"), **config}))
        argv = ["train", "--config", str(tmp_path / "c.json")]
    code, stderr = run_cli(argv)
    assert code == 2 and re.search(message, stderr), stderr
