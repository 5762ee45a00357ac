"""The training loop of ``pyfast train``: a method (:mod:`pyfast.methods`) trains a model (:mod:`pyfast.models`) on a
dataset (:mod:`pyfast.data`), on one process or several (torchrun + DDP).

Reproducibility contract: a run is a function of its :class:`~pyfast.harness.config.TrainConfig` (and the world size).
The model is initialised from ``seed``; epoch ``e`` visits the training images in the order of a
``DistributedSampler`` seeded by ``seed`` at epoch ``e``, and draws its augmentation per image from a generator seeded
by ``(seed, e)``; dropout and other global randomness continue from RNG states saved with each checkpoint. So a run
stopped after any epoch and continued with ``resume=True`` ends with the same parameters, bit for bit, as one never
stopped (same machine, backend and thread count). The last incomplete global batch of an epoch is dropped, so every
step sees ``batch_size`` images however many processes share them.

Files written to ``OUT`` (rank 0 only, each replaced atomically, so a crash or Ctrl-C leaves the previous complete
file): ``config.json`` (the resolved config, written with the first checkpoint), ``last.pt`` and ``prev.pt`` (the
newest checkpoint and the one before it, see :mod:`~pyfast.harness.checkpoints`), ``metrics.jsonl`` and
``metrics.csv`` (one record per epoch) and ``curves.png`` (loss and accuracy curves). ``OUT`` is locked while a run
uses it, and a directory that holds an earlier run is refused unless ``resume`` or ``overwrite`` says what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from pyfast.backends import availability, use_backend
from pyfast.data import Augmentation
from pyfast.harness.build import Run, build_run
from pyfast.harness.checkpoints import (
    LAST,
    PREVIOUS,
    check_resumable,
    describe_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from pyfast.harness.config import ConfigError, TrainConfig, check_config, resolve_device
from pyfast.harness.distributed import World, all_reduce_sum, init_distributed
from pyfast.harness.files import OutputLock, atomic_write_text, check_output_dir, claim_output
from pyfast.harness.guard import StepGuard
from pyfast.harness.metrics import write_metrics
from pyfast.harness.optim import make_optimizer, make_scheduler
from pyfast.harness.rng import epoch_generator, set_rng_state
from pyfast.harness.signals import GracefulInterrupt
from pyfast.methods.base import Stage
from pyfast.registry import RegistryError

RUN_FILES = ("config.json", LAST, PREVIOUS, "metrics.jsonl", "metrics.csv", "curves.png")  # what --overwrite removes


def steps_per_epoch(cfg: TrainConfig, num_train: int) -> int:
    steps = num_train // cfg.batch_size
    if steps == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({num_train} images)")
    return min(steps, cfg.max_steps_per_epoch or steps)


def autocast(cfg: TrainConfig, device: torch.device):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=cfg.amp)


def train_epoch(run: Run, optimizer, scheduler, scaler: StepGuard, epoch: int, desc: str) -> tuple[float, float]:
    """One epoch over this rank's share of the training set. Returns (mean loss, accuracy) over all ranks, of the
    batches that were trained on (a step skipped for a non-finite loss counts in ``scaler.skipped`` instead)."""
    cfg, data, world = run.cfg, run.data, run.world
    n = len(data.y_train)
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world.size, rank=world.rank, shuffle=True,
                                                  seed=cfg.seed, drop_last=False)
    sampler.set_epoch(epoch)
    local_batch = cfg.batch_size // world.size
    steps = steps_per_epoch(cfg, n)
    order = torch.tensor(list(sampler), dtype=torch.int64)[: steps * local_batch].to(run.device)
    augment = Augmentation.draw(n, data.crop_padding, data.hflip, epoch_generator(cfg.seed, epoch, 1)).to(run.device)
    run.trainer.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    counted = 0
    t0 = time.perf_counter()
    with tqdm(order.split(local_batch), desc=desc, leave=False, disable=not (cfg.progress and world.is_main),
              unit="batch", dynamic_ncols=True) as bar:
        for step, idx in enumerate(bar):
            scaler.where = f"epoch {epoch + 1}, step {step + 1} of {steps}"
            x, y = run.method.batch(data, idx, augment, epoch)
            loss, logits = run.method.train_step(run.trainer, x, y, optimizer, scaler, (step, steps),
                                                 lambda: autocast(cfg, run.device))
            scheduler.step()
            run.interrupt.check()
            if scaler.last_skipped:
                continue
            counted += len(idx)
            total_loss += loss.detach().double() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            if bar.disable:
                continue
            seconds = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct.item() / counted:.1%}",
                            img_s=f"{(step + 1) * cfg.batch_size / seconds:.0f}", refresh=False)
    loss_sum, correct_sum, count = all_reduce_sum([total_loss.item(), correct.item(), counted], run.device, world)
    return (loss_sum / count, correct_sum / count) if count else (float("nan"), float("nan"))


@torch.no_grad()
def evaluate(run: Run) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the test set in eval mode; each rank takes every world-size-th image."""
    data, world = run.data, run.world
    run.model.eval()
    index = torch.arange(world.rank, len(data.y_test), world.size, device=run.device)
    loss_sum, correct = 0.0, 0
    for idx in index.split(run.cfg.eval_batch_size):
        with autocast(run.cfg, run.device):
            logits = run.model(data.normalize(data.x_test[idx])).float()
        loss_sum += nn.functional.cross_entropy(logits, data.y_test[idx], reduction="sum").item()
        correct += (logits.argmax(1) == data.y_test[idx]).sum().item()
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, len(index)], run.device, world)
    return loss_sum / count, correct / count


def stage_at(stages: list[Stage], epoch: int) -> tuple[int, int]:
    """(stage index, first global epoch of that stage) of global epoch ``epoch`` (0-based)."""
    first = 0
    for i, stage in enumerate(stages):
        if epoch < first + stage.epochs:
            return i, first
        first += stage.epochs
    return len(stages) - 1, first - stages[-1].epochs


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Run ``cfg`` to the end of its last stage (continuing ``OUT/last.pt`` if ``cfg.resume``).

    Returns the metrics history: one dict per epoch with ``epoch, stage, lr, train_loss, train_acc, test_loss,
    test_acc, seconds, images_per_s``. Raises :class:`ConfigError` for a config (or checkpoint) that cannot run and
    :class:`pyfast.BackendUnavailableError` for an explicit backend that is missing here. Under torchrun, every rank
    calls this; only rank 0 logs and writes files.
    """
    check_config(cfg)
    try:
        cfg = cfg.resolved()
    except RegistryError as err:
        raise ConfigError(str(err)) from err
    check_config(cfg)
    device = resolve_device(cfg.device)
    if cfg.backend != "auto" and availability(cfg.backend, device):  # before any file is touched
        raise ConfigError(f"backend {cfg.backend!r} cannot run on {device}: {availability(cfg.backend, device)}")
    world, device, owns_group = init_distributed(device)
    if cfg.batch_size % world.size:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world.size})")
    say = log if world.is_main else (lambda line: None)
    try:
        with contextlib.ExitStack() as hold, use_backend(cfg.backend), GracefulInterrupt() as interrupt:
            if world.is_main:
                out = check_output_dir(cfg.out)
                hold.enter_context(OutputLock(out, "--out"))
                claim_output(out, RUN_FILES, resume=cfg.resume, overwrite=cfg.overwrite,
                             describe=lambda: _describe_run(out))
            history = _train(cfg, world, device, say, interrupt)
        if owns_group:
            # Every rank done (rank 0 writes the last checkpoint) before any rank tears the group down: a rank that
            # destroys its gloo group while another still uses it can abort in the teardown.
            dist.barrier()
        return history
    finally:
        if owns_group:
            dist.destroy_process_group()


def _describe_run(out: Path) -> str:
    if (out / LAST).exists():
        return describe_checkpoint(out / LAST)
    return "files of an earlier run (" + ", ".join(n for n in RUN_FILES if (out / n).exists()) + ")"


def _train(cfg: TrainConfig, world: World, device: torch.device, say: Callable[[str], None],
           interrupt: GracefulInterrupt) -> list[dict]:
    out = Path(cfg.out)
    ckpt_path = out / LAST
    resuming = cfg.resume and ckpt_path.exists()
    run = build_run(cfg, world, device, load_pretrained=not resuming, log=say)
    run.interrupt = interrupt
    steps = steps_per_epoch(cfg, len(run.data.y_train))
    total_epochs = sum(s.epochs for s in run.stages)

    start, history, ckpt = 0, [], None
    if resuming:
        ckpt = load_checkpoint(ckpt_path)
        check_resumable(ckpt["config"], cfg, ckpt_path)
        start, history = ckpt["epoch"], ckpt["history"]
        say(f"resuming {ckpt_path} after epoch {start}")
    elif cfg.resume:
        say(f"no checkpoint at {ckpt_path}; starting from scratch")
    n_params = sum(p.numel() for p in run.model.parameters())
    say(f"{cfg.method} | {cfg.model} ({n_params / 1e6:.2f}M parameters) | {cfg.data} "
        f"({len(run.data.y_train)} train / {len(run.data.y_test)} test) | {device}"
        f"{f' x {world.size} processes' if world.size > 1 else ''} | {total_epochs} epochs of {steps} steps")
    if start >= total_epochs:
        say(f"{ckpt_path} has already trained {start} epochs (of {total_epochs}); nothing to do")
        return history

    stage_index, stage_first = stage_at(run.stages, start)
    optimizer = scheduler = None
    scaler = StepGuard(torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda"),
                       cfg.on_nonfinite)
    for epoch in range(start, total_epochs):
        stage_index, stage_first = stage_at(run.stages, epoch)
        stage = run.stages[stage_index]
        if optimizer is None or epoch == stage_first:  # a new stage (or the resumed one): fresh optimiser
            run.method.enter_stage(run.model, stage)
            optimizer = make_optimizer(cfg, run.method.param_groups(run.model))
            scheduler = make_scheduler(cfg, optimizer, steps, stage.epochs)
            if ckpt is not None:  # weights always carry over; the optimiser only within the stage
                run.model.load_state_dict(ckpt["model"])
                if epoch != stage_first:
                    optimizer.load_state_dict(ckpt["optimizer"])
                    scheduler.load_state_dict(ckpt["scheduler"])
                    scaler.load_state_dict(ckpt["scaler"])
                set_rng_state(ckpt["rng"])
                ckpt = None
            if len(run.stages) > 1:
                say(f"stage {stage_index + 1}/{len(run.stages)}: {stage.name}, {stage.epochs} epochs")
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_epoch(run, optimizer, scheduler, scaler, epoch,
                                            desc=f"epoch {epoch + 1}/{total_epochs}")
        train_seconds = time.perf_counter() - t0
        test_loss, test_acc = evaluate(run)
        seconds = time.perf_counter() - t0
        skipped, scaler.skipped = scaler.skipped, 0
        record = {"epoch": epoch + 1, "stage": stage.name, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                  "test_loss": test_loss, "test_acc": test_acc, "seconds": round(seconds, 3),
                  "images_per_s": round(steps * cfg.batch_size / train_seconds, 1), "skipped_steps": skipped}
        history.append(record)
        say(f"epoch {epoch + 1}/{total_epochs}{f' [{stage.name}]' if len(run.stages) > 1 else ''}  "
            f"train_loss {train_loss:.4f}  train_acc {train_acc:6.2%}  test_loss {test_loss:.4f}  "
            f"test_acc {test_acc:6.2%}  {seconds:.1f}s ({record['images_per_s']:.0f} img/s)"
            f"{f'  [{skipped} steps skipped: non-finite loss]' if skipped else ''}")
        if world.is_main:
            save_checkpoint(ckpt_path, cfg, run.model, optimizer, scheduler, scaler, epoch + 1, history)
            if epoch == start:  # the run has started: its config goes beside its first checkpoint
                atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
            write_metrics(out, history)
        interrupt.check()  # a Ctrl-C during evaluation or the writes stops here, after them
    return history
