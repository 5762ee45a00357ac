"""The ``pyfast`` command (also ``python -m pyfast``).

    pyfast train --list                                  methods (and the models they need), models, datasets
    pyfast train --model timm:resnet18 [--pretrained FILE] ...   a timm / torchvision model, local weights
    pyfast train --method iir-snn --data digits --epochs 2 [--model --batch-size --lr --seed --out --resume --amp ...]
    pyfast train --config run.yaml [--flags override the file]
    pyfast reinforce --teacher DIR [--teacher DIR ...] --samples 4 --topk 5 --out FILE   Dataset Reinforcement
    torchrun --nproc_per_node 2 -m pyfast train ...      data-parallel (gloo on CPU, nccl on CUDA)
    pyfast bench [--op lif ...] [--out DIR] [args for the benchmark scripts]
    pyfast info [args of pyfast.info]

Bad arguments exit with status 2 and an argparse-style message naming the argument.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import math
import pkgutil
import sys
from pathlib import Path

import yaml

import pyfast.bench
from pyfast import info
from pyfast.backends import BACKENDS, BackendUnavailableError
from pyfast.bench import harness as bench_harness
from pyfast.harness.build import load_data
from pyfast.harness.config import (
    ON_NONFINITE,
    OPTIMIZERS,
    SCHEDULES,
    ConfigError,
    TrainConfig,
    config_from_dict,
    load_config_file,
    resolve_device,
)
from pyfast.harness.guard import NonFiniteLossError
from pyfast.harness.loop import train
from pyfast.harness.reinforce import load_teachers, reinforce
from pyfast.registry import DATASETS, METHODS, MODELS


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum``, with an error message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _float_at_least(minimum: float, strict: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {minimum}, "
                                             f"got {text!r}")
        return value

    return parse


_positive_float = _float_at_least(0.0, strict=True)
_nonnegative_float = _float_at_least(0.0, strict=False)


def _device(text: str) -> str:
    try:
        resolve_device(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as YAML (``3``, ``0.5``, ``true``, ``[5, 4]``, or a plain string); ``nan``,
    ``inf`` and ``-inf`` are the floats (YAML spells them ``.nan`` / ``.inf``), so the option's check sees a number."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must look like KEY=VALUE with KEY a name, got {text!r}")
    if value.strip().lower() in _NON_FINITE:
        return key, _NON_FINITE[value.strip().lower()]
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def _add_train(sub) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train a method x model x dataset, checkpointing every epoch",
        description="Train a model with a bundled training method. Writes OUT/config.json, OUT/last.pt (every "
                    "epoch, atomically), OUT/metrics.jsonl|csv and OUT/curves.png. Options come from the defaults, "
                    "then --config FILE, then the flags given here. Under torchrun every process runs this command.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=argparse.SUPPRESS)
    p.add_argument("--list", action="store_true",
                   help="list the methods (with the models each needs), models and datasets, then exit")
    p.add_argument("--config", help="YAML, TOML or JSON file of options (keys as the flags, e.g. batch_size)")
    p.add_argument("--method", help=f"training method (see --list; default {d.method})")
    p.add_argument("--model", help="model name, timm:NAME or torchvision:NAME (default: the method's default)")
    p.add_argument("--pretrained", metavar="FILE",
                   help="local weights loaded into the model before the method prepares it: a .pth/.pt state dict, "
                        "a pyfast last.pt or a .safetensors file (tensors of another shape, e.g. the head, are "
                        "skipped; nothing is downloaded)")
    p.add_argument("--data", help="dataset name (default: the method's default, digits)")
    p.add_argument("--data-dir", help="directory with the dataset files (CIFAR)")
    p.add_argument("--epochs", type=_positive_int, help=f"epochs (per stage for multi-stage methods; default "
                                                        f"{d.epochs})")
    p.add_argument("--batch-size", type=_positive_int, help=f"global batch size (default {d.batch_size})")
    p.add_argument("--lr", type=_positive_float, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"(default {d.optimizer})")
    p.add_argument("--momentum", type=_nonnegative_float, help=f"SGD momentum, Nesterov (default {d.momentum})")
    p.add_argument("--weight-decay", type=_nonnegative_float, help=f"(default {d.weight_decay})")
    p.add_argument("--schedule", choices=SCHEDULES, help=f"learning-rate schedule per stage (default {d.schedule})")
    p.add_argument("--warmup-epochs", type=_nonnegative_float, help=f"linear warm-up (default {d.warmup_epochs})")
    p.add_argument("--label-smoothing", type=_nonnegative_float, help=f"(default {d.label_smoothing})")
    p.add_argument("--seed", type=_nonnegative_int, help=f"(default {d.seed})")
    p.add_argument("--out", help="run directory (default runs/METHOD-MODEL-DATA)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/last.pt if it exists")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an OUT that holds an earlier run (its run files are removed)")
    p.add_argument("--on-nonfinite", choices=ON_NONFINITE,
                   help=f"a step whose loss is NaN or infinite: stop the run there, or skip that step (default "
                        f"{d.on_nonfinite})")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 autocast on CPU, fp16 on CUDA)")
    p.add_argument("--device", type=_device, help=f"auto, cpu, cuda, cuda:N (default {d.device})")
    p.add_argument("--backend", choices=BACKENDS, help=f"kernel backend of pyfast ops (default {d.backend})")
    p.add_argument("--model-arg", dest="model_args", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="model option, e.g. width=0.5 (repeatable)")
    p.add_argument("--method-arg", dest="method_args", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="method option, e.g. timesteps=[2,1] (repeatable)")
    p.add_argument("--max-steps-per-epoch", type=_positive_int, help="train on at most this many batches an epoch")
    p.add_argument("--eval-batch-size", type=_positive_int, help=f"test images per forward (default "
                                                                 f"{d.eval_batch_size})")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_cmd_train, parser=p)


def _list_registries() -> str:
    lines = []
    for title, registry in (("methods", METHODS), ("models", MODELS), ("datasets", DATASETS)):
        lines.append(f"{title}:")
        entries = registry.entries() + registry.prefixes()
        width = max(len(e.name) for e in entries)
        for e in entries:
            lines.append(f"  {e.name.ljust(width)}  {e.description}")
            if registry is METHODS:
                lines.append(f"  {''.ljust(width)}  needs {e.builder.model_requirement}; default model "
                             f"{e.builder.default_model}")
    return "\n".join(lines)


def config_from_args(args) -> TrainConfig:
    """Defaults, then ``--config FILE``, then the flags given on the command line."""
    values = load_config_file(args.config) if getattr(args, "config", None) else {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in fields & set(vars(args)):
        value = getattr(args, name)
        if name in ("model_args", "method_args"):
            from_file = values.get(name, {})
            if not isinstance(from_file, dict):
                raise ConfigError(f"{name} in {args.config} must be a mapping of option names to values, got "
                                  f"{from_file!r}")
            value = {**from_file, **dict(value)}
        values[name] = value
    return config_from_dict(values)


def _add_reinforce(sub) -> None:
    p = sub.add_parser(
        "reinforce", help="Dataset Reinforcement: store augmentations and teacher-ensemble top-k probabilities",
        description="For every training image, draw --samples replayable augmentations (crop, flip where the data "
                    "allows it, RandAugment, RandomErasing), average the teachers' softmax on each and keep its top "
                    "--topk, all in one file (written atomically). Progress is saved in OUT.partial: rerun the same "
                    "command to continue after an interruption. Train on the file with `pyfast train --method "
                    "reinforced --method-arg reinforced=OUT`.",
)
    p.add_argument("--data", default="digits", help="dataset name, as for pyfast train (default %(default)s)")
    p.add_argument("--data-dir", help="directory with the dataset files (CIFAR)")
    p.add_argument("--teacher", action="append", required=True, metavar="DIR",
                   help="a `pyfast train` run directory (or its last.pt) on the same data; repeat for an ensemble")
    p.add_argument("--samples", type=_positive_int, default=4, help="augmentations stored per image, NS (default %(default)s)")
    p.add_argument("--topk", type=_positive_int, default=5, help="probabilities kept per augmentation, K (default %(default)s)")
    p.add_argument("--out", help="the reinforced file (default runs/reinforced-DATA.pt)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the augmentation draws (default %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="augmented images per teacher forward (default %(default)s)")
    p.add_argument("--magnitude", type=_int_at_least(0), default=9,
                   help="RandAugment magnitude M in 0..30, torchvision's 31 bins (default %(default)s)")
    p.add_argument("--erase-p", type=_nonnegative_float, default=0.25, help="probability of RandomErasing (default %(default)s)")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N (default %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an OUT (and its OUT.partial) made with other arguments, starting over")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_cmd_reinforce, parser=p)


def _cmd_reinforce(args) -> int:
    if args.data not in DATASETS:
        args.parser.error(f"argument --data: must be one of {', '.join(DATASETS.names())}, got {args.data!r}")
    out = Path(args.out or f"runs/reinforced-{args.data}.pt")
    try:
        data = load_data(args.data, args.data_dir)
        teachers, infos = load_teachers(args.teacher, data)
        rd = reinforce(data, teachers, out, samples=args.samples, topk=args.topk, seed=args.seed,
                       batch_size=args.batch_size, magnitude=args.magnitude, erase_p=args.erase_p,
                       overwrite=args.overwrite,
                       teacher_meta=infos, device=resolve_device(args.device), progress=args.progress,
                       log=lambda line: print(line, flush=True))
    except (ConfigError, FileNotFoundError) as err:
        args.parser.error(str(err))
    except KeyboardInterrupt:
        print(f"\ninterrupted; the finished part is saved in {out}.partial: rerun the same command to continue",
              file=sys.stderr)
        return 130
    print(f"reinforced {rd.meta['num_images']} {args.data} images x {rd.samples} samples, top-{rd.meta['topk']} of "
          f"{len(teachers)} teacher(s) -> {out}\ntrain on it: pyfast train --method reinforced --method-arg "
          f"reinforced={out}", flush=True)
    return 0


def _cmd_train(args) -> int:
    if getattr(args, "list", False):
        print(_list_registries())
        return 0
    try:
        cfg = config_from_args(args)
        history = train(cfg, log=lambda line: print(line, flush=True))
    except (ConfigError, BackendUnavailableError, FileNotFoundError) as err:
        args.parser.error(str(err))
    except NonFiniteLossError as err:
        print(f"pyfast train: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the last completed epoch's checkpoint (OUT/last.pt) is intact: continue with --resume",
              file=sys.stderr)
        return 130
    if history:
        out = Path(cfg.resolved().out)
        last = history[-1]
        print(f"final test_acc {last['test_acc']:.2%} (epoch {last['epoch']}); run files in {out}/: config.json, "
              "last.pt, metrics.jsonl, metrics.csv, curves.png", flush=True)
    return 0


def _call_main(fn, argv: list[str], what: str) -> int:
    """Call a script's ``main``: with ``argv`` if it takes arguments (never letting it parse sys.argv)."""
    if inspect.signature(fn).parameters:
        result = fn(argv)
    elif argv:
        raise SystemExit(f"pyfast: {what} takes no arguments, got {argv}")
    else:
        result = fn()
    return result if isinstance(result, int) else 0


def available_benchmarks() -> list[str]:
    """The ops with a benchmark: the modules of :mod:`pyfast.bench` other than its harness."""
    return sorted(m.name for m in pkgutil.iter_modules(pyfast.bench.__path__) if m.name != "harness")


def _cmd_bench(args) -> int:
    found = available_benchmarks()
    ops = args.op or found
    for op in ops:
        if op not in found:
            args.parser.error(f"argument --op: no benchmark of {op!r}; available: {', '.join(found)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    for op in ops:
        csv_path = out / f"{op}.csv"
        print(f"==== pyfast bench --op {op} {' '.join(args.args)}", flush=True)
        module = importlib.import_module(f"pyfast.bench.{op}")
        status = max(status, _call_main(module.main, [*args.args, "--csv", str(csv_path)], f"bench {op}"))
        if csv_path.is_file():
            png = out / f"{op}.png"
            if bench_harness.plot_ratio_bars(bench_harness.read_csv(str(csv_path)), str(png), title=f"pyfast {op}"):
                print(f"PNG: {png}")
    return status


def _cmd_info(args) -> int:
    return _call_main(info.main, args.args, "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyfast", description="pyfast: compiled-kernel backend for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_reinforce(sub)
    p = sub.add_parser("bench", help="run the kernel benchmarks: ratio tables, CSV, PNG",
                       description="Run the benchmark of every op (python -m pyfast.bench.OP), or of those named with "
                                   "--op; unknown "
                                   "arguments go to each script (e.g. --quick, --T 8, --dtype fp32). Writes "
                                   "OUT/OP.csv and a bar chart OUT/OP.png of the speedups over the eager reference.")
    p.add_argument("--op", action="append", help="benchmark only this op (repeatable; default: all)")
    p.add_argument("--out", default="bench/results", help="directory for the CSV and PNG (default %(default)s)")
    p.set_defaults(func=_cmd_bench, parser=p, args=[])
    p = sub.add_parser("info", help="which backend serves which op here", add_help=False,
                       description="Run pyfast.info's main() with the remaining arguments.")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for pyfast.info")
    p.set_defaults(func=_cmd_info, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyfast`` console script. Returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":  # what pyfast bench does not know goes to the benchmark scripts
        args.args = extra
    elif args.command == "info":  # forwarded verbatim, leading options included (REMAINDER skips those)
        args.args = extra + args.args
    elif extra:
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
