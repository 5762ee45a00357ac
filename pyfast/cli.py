"""The ``pyfast`` command (also ``python -m pyfast``).

    pyfast train snn-digits [--epochs 5 --T 4 --batch-size 64 --lr 3e-3 --seed 0 --out runs/snn-digits --resume]
    pyfast bench lif [args of bench/bench_lif.py]
    pyfast info [args of pyfast.info]

Bad arguments exit with status 2 and an argparse-style message naming the argument.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import sys
from pathlib import Path

from pyfast.backends import BACKENDS, BackendUnavailableError
from pyfast.train import RECIPES, ConfigError, TrainConfig, resolve_device, train

# The bench/ directory of a source checkout (present with an editable install, absent from a wheel).
BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _device(text: str) -> str:
    try:
        resolve_device(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _add_train(sub) -> None:
    d = TrainConfig()
    p = sub.add_parser("train", help="train a bundled recipe, checkpointing every epoch",
                       description="Train a bundled recipe. Writes OUT/last.pt after every epoch and OUT/metrics.json.")
    p.add_argument("model", choices=sorted(RECIPES), help="recipe to train")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help="total epochs (default %(default)s)")
    p.add_argument("--T", type=_positive_int, default=d.T, help="time steps (default %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="(default %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=d.lr, help="Adam learning rate (default %(default)s)")
    p.add_argument("--seed", type=_nonnegative_int, default=d.seed, help="(default %(default)s)")
    p.add_argument("--out", default=None, help="output directory (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend, help="LIF backend (default %(default)s)")
    p.add_argument("--device", type=_device, default=d.device, help="auto, cpu, cuda, cuda:N (default %(default)s)")
    p.add_argument("--max-steps-per-epoch", type=_positive_int, default=None,
                   help="train on at most this many batches an epoch (smoke tests)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_cmd_train, parser=p)


def _cmd_train(args) -> int:
    cfg = TrainConfig(
        model=args.model, epochs=args.epochs, T=args.T, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        out=args.out or f"runs/{args.model}", resume=args.resume, backend=args.backend, device=args.device,
        max_steps_per_epoch=args.max_steps_per_epoch, progress=args.progress,
    )
    try:
        history = train(cfg, log=lambda line: print(line, flush=True))
    except (ConfigError, BackendUnavailableError) as err:
        args.parser.error(str(err))
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with --resume (checkpoint in {cfg.out}/last.pt)", file=sys.stderr)
        return 130
    if history:
        print(f"final test_acc {history[-1]['test_acc']:.2%}; checkpoint {cfg.out}/last.pt", flush=True)
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


def _cmd_bench(args) -> int:
    if not BENCH_DIR.is_dir():
        args.parser.error(
            f"the benchmarks live in the source checkout's bench/ directory, which is not at {BENCH_DIR} "
            "(a non-editable install?); clone the repository and `pip install --no-build-isolation -e .`"
        )
    script = BENCH_DIR / f"bench_{args.op}.py"
    if not script.is_file():
        found = sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))
        args.parser.error(f"argument op: no benchmark {script}; available: {', '.join(found) or 'none'}")
    name = f"bench_{args.op}"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    # As `python bench/bench_<op>.py` would: bench/ first on sys.path so the script finds its shared harness.
    sys.path.insert(0, str(BENCH_DIR))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        if not callable(getattr(module, "main", None)):
            args.parser.error(f"{script} has no main(argv) function")
        return _call_main(module.main, args.args, f"bench {args.op}")
    finally:
        sys.path.remove(str(BENCH_DIR))


def _cmd_info(args) -> int:
    try:
        from pyfast import info
    except ModuleNotFoundError as err:
        if err.name != "pyfast.info":
            raise
        args.parser.error("pyfast.info is not part of this installation")
    return _call_main(info.main, args.args, "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyfast", description="pyfast: compiled-kernel backend for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    p = sub.add_parser("bench", help="run a kernel benchmark from bench/ (source checkout)",
                       description="Run bench/bench_OP.py's main() with the remaining arguments.")
    p.add_argument("op", help="operation, e.g. lif (runs bench/bench_lif.py)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    p.set_defaults(func=_cmd_bench, parser=p)
    p = sub.add_parser("info", help="which backend serves which op here", add_help=False,
                       description="Run pyfast.info's main() with the remaining arguments.")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for pyfast.info")
    p.set_defaults(func=_cmd_info, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyfast`` console script. Returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("bench", "info"):  # forwarded verbatim, leading options included (REMAINDER skips those)
        args.args = extra + args.args
    elif extra:
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
