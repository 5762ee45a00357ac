"""Dataset Reinforcement (Faghri et al., apple/ml-dr), the offline step behind ``pyfast reinforce``: for every
training image, ``samples`` random augmentations (:mod:`pyfast.data.transforms`) and the teacher ensemble's mean
softmax on each, kept as its top-k, stored in one file. Training on it (``pyfast train --method reinforced``,
:mod:`pyfast.methods.reinforced`) then replays the stored augmentations with the teachers' soft targets at the cost of
plain training.

The file (``torch.save`` of plain types and tensors, read with ``torch.load(weights_only=True)``)::

    format   "pyfast-reinforced"
    meta     dataset, num_images, num_classes, image_shape, fingerprint (sha256 of the training images and labels),
             teachers (path, sha256 of the checkpoint, model, model_args), samples, topk, seed, batch_size,
             augmentation (crop_padding, hflip, magnitude, erase_p), version
    params   int16 [N, samples, NUM_FIELDS]   the augmentation of sample s of image i (transforms.FIELDS)
    indices  int16 [N, samples, topk]         the ensemble's top-k classes (int32 beyond 32767 classes)
    probs    float32 [N, samples, topk]       their mean probabilities, descending

The augmentations are drawn per block of ``PARAM_BLOCK`` images from a generator seeded by ``(seed, block)``, and the
teachers see the block's ``samples * PARAM_BLOCK`` images in batches of ``batch_size``: so the result is a function of
the arguments alone, whether computed in one go or resumed. Progress is saved atomically to ``FILE.partial`` (every
``save_interval`` seconds and at the end); rerunning the same command continues from it and ends with the same file
as an uninterrupted run (same device). Different arguments or data refuse to resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pyfast.data import ImageData
from pyfast.data import transforms as T
from pyfast.harness.build import load_trained_model
from pyfast.harness.checkpoints import load_checkpoint
from pyfast.harness.config import ConfigError
from pyfast.harness.files import OutputLock, atomic_write, check_output_dir
from pyfast.harness.rng import epoch_generator
from pyfast.losses.dr import sparsify

FORMAT = "pyfast-reinforced"
VERSION = 1
PARAM_BLOCK = 64  # images per augmentation draw and per unit of saved progress (part of the format: keep it)
_PARAM_STREAM = 7  # epoch_generator stream of the augmentation draws (the harness uses 1 for its crops)


class ReinforceError(ConfigError):
    """A reinforcement that cannot run or a reinforced file that does not fit (the message names the argument)."""


def fingerprint(data: ImageData) -> str:
    """sha256 of the training images and labels (shapes, dtypes and bytes): what a reinforced file belongs to."""
    h = hashlib.sha256()
    for t in (data.x_train, data.y_train):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass
class ReinforcedData:
    """A reinforced dataset in memory: ``meta`` (see the module docstring), ``params [N, S, NUM_FIELDS]``,
    ``indices [N, S, K]`` and ``probs [N, S, K]``."""

    meta: dict
    params: torch.Tensor
    indices: torch.Tensor
    probs: torch.Tensor

    @property
    def samples(self) -> int:
        return self.params.shape[1]

    def check_data(self, data: ImageData, what: str = "the reinforced file") -> None:
        """Raise :class:`ReinforceError` unless this file was made from ``data``'s training images."""
        m = self.meta
        if m["dataset"] != data.name:
            raise ReinforceError(f"{what} was made from {m['dataset']!r}, this run uses {data.name!r}")
        if m["num_images"] != len(data.y_train) or m["num_classes"] != data.num_classes:
            raise ReinforceError(f"{what} holds {m['num_images']} images of {m['num_classes']} classes; "
                                 f"{data.name} has {len(data.y_train)} of {data.num_classes}")
        if m["fingerprint"] != fingerprint(data):
            raise ReinforceError(f"{what} was made from other {data.name} training images (fingerprint "
                                 f"{m['fingerprint'][:12]}, these are {fingerprint(data)[:12]}); reinforce this data")


def load_reinforced(path: str | os.PathLike, data: ImageData | None = None) -> ReinforcedData:
    """Read a file written by :func:`reinforce` (checked against ``data`` when given)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReinforceError(f"no reinforced file at {path} (make one with `pyfast reinforce --out {path}`)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ReinforceError(f"{path} is unreadable (truncated, corrupted or not a reinforced file: "
                             f"{type(err).__name__})") from err
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ReinforceError(f"{path} is not a pyfast reinforced file")
    if obj["meta"].get("version") != VERSION:
        raise ReinforceError(f"{path} has version {obj['meta'].get('version')!r}; this pyfast reads {VERSION}")
    rd = ReinforcedData(obj["meta"], obj["params"], obj["indices"], obj["probs"])
    n, s, k = rd.meta["num_images"], rd.meta["samples"], rd.meta["topk"]
    shapes = {"params": (n, s, T.NUM_FIELDS), "indices": (n, s, k), "probs": (n, s, k)}
    for name, shape in shapes.items():
        if tuple(getattr(rd, name).shape) != shape:
            raise ReinforceError(f"{path}: {name} has shape {tuple(getattr(rd, name).shape)}, its metadata says "
                                 f"{shape}")
    _check_targets(rd, path)
    if data is not None:
        rd.check_data(data, str(path))
    return rd


def _check_targets(rd: ReinforcedData, path: Path) -> None:
    """The stored targets must be top-k probabilities: finite, in [0, 1], summing to at most 1 per sample (up to
    float32 rounding), with class indices in range. Checked when the file is opened, so a bad file is refused before
    training starts rather than turning into NaN losses mid-epoch."""
    probs, classes, num_classes = rd.probs, rd.indices, rd.meta["num_classes"]
    bad = ~torch.isfinite(probs) | (probs < 0) | (probs > 1)
    if bool(bad.any()):
        image, sample, k = (int(i) for i in bad.nonzero()[0])
        raise ReinforceError(f"{path}: probs[{image}, {sample}, {k}] is {probs[image, sample, k].item()}, not a "
                             "probability; the file is damaged: make it again with `pyfast reinforce`")
    over = probs.double().sum(-1) > 1 + 1e-4
    if bool(over.any()):
        image, sample = (int(i) for i in over.nonzero()[0])
        raise ReinforceError(f"{path}: the top-{probs.shape[-1]} probabilities of image {image}, sample {sample} sum "
                             f"to {probs[image, sample].double().sum().item():.6f} > 1; the file is damaged")
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ReinforceError(f"{path}: class indices must be in 0..{num_classes - 1}, found {int(classes.min())}.."
                             f"{int(classes.max())}; the file is damaged")


def teacher_info(path: str | os.PathLike) -> dict:
    """What identifies a teacher run in a reinforced file's metadata: its checkpoint's path, sha256, model and
    options."""
    path = Path(path).expanduser()
    ckpt_path = path / "last.pt" if path.is_dir() else path
    cfg = load_checkpoint(ckpt_path)["config"]
    return {"path": str(ckpt_path.resolve()), "sha256": file_sha256(ckpt_path), "model": cfg["model"],
            "model_args": cfg["model_args"], "method": cfg["method"], "seed": cfg["seed"]}


def load_teachers(paths: Sequence[str | os.PathLike], data: ImageData) -> tuple[list[nn.Module], list[dict]]:
    """The teacher runs at ``paths`` (run directories or their ``last.pt``) as eval-mode models, and their
    metadata; a missing run or one trained on other data is a :class:`ReinforceError` naming ``--teacher``."""
    if not paths:
        raise ReinforceError("--teacher: give at least one teacher run directory")
    models, infos = [], []
    for path in paths:
        try:
            models.append(load_trained_model(path, data).requires_grad_(False))
            infos.append(teacher_info(path))
        except ConfigError as err:
            raise ReinforceError(f"--teacher {path}: {err}") from err
    return models, infos


@torch.no_grad()
def ensemble_probs(teachers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``mean_m softmax(T_m(x))`` in float32: ``x [B, C, H, W]`` (normalised) -> ``[B, num_classes]``."""
    return torch.stack([torch.softmax(t(x).float(), 1) for t in teachers]).mean(0)


def reinforce(data: ImageData, teachers: Sequence[nn.Module], out: str | os.PathLike, *, samples: int = 4,
              topk: int = 5, seed: int = 0, batch_size: int = 256, magnitude: int = 9, erase_p: float = 0.25,
              teacher_meta: Sequence[dict] | None = None, device: str | torch.device = "cpu",
              save_interval: float = 60.0, progress: bool = True, overwrite: bool = False,
              log: Callable[[str], None] = print) -> ReinforcedData:
    """Reinforce ``data``'s training set with the ensemble ``teachers`` (eval-mode models taking normalised images)
    and write it to ``out`` atomically (see the module docstring); returns it.

    ``samples``: augmentations per image (NS); ``topk``: probabilities kept per augmentation (K);
    ``magnitude``: RandAugment's M (0..30); ``erase_p``: RandomErasing's probability; ``teacher_meta``: one dict per
    teacher identifying it in the metadata (default: its class name). ``OUT.partial`` holds the progress while it
    runs: a run with the same arguments continues from it; one with other arguments is refused, as is an existing
    ``out`` made with other arguments, unless ``overwrite`` (which starts over). ``out`` is locked while this runs
    (``OUT.lock``): a second process on it is refused.
    """
    out = Path(out).expanduser()
    for name, value, low in (("samples", samples, 1), ("topk", topk, 1), ("seed", seed, 0),
                             ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ReinforceError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    if topk > data.num_classes:
        raise ReinforceError(f"--topk {topk} is larger than the number of classes of {data.name} "
                             f"({data.num_classes})")
    if not teachers:
        raise ReinforceError("--teacher: give at least one teacher")
    teacher_meta = list(teacher_meta) if teacher_meta is not None else [{"model": type(t).__name__} for t in teachers]
    if len(teacher_meta) != len(teachers):
        raise ValueError(f"teacher_meta has {len(teacher_meta)} entries for {len(teachers)} teachers")
    if isinstance(magnitude, bool) or not isinstance(magnitude, int) or not 0 <= magnitude <= T.MAX_LEVEL:
        raise ReinforceError(f"--magnitude must be an integer in [0, {T.MAX_LEVEL}], got {magnitude!r}")
    if isinstance(erase_p, bool) or not isinstance(erase_p, (int, float)) or not 0 <= erase_p <= 1:
        raise ReinforceError(f"--erase-p must be a number in [0, 1], got {erase_p!r}")
    try:  # the data's own constraints (channels, crop padding)
        T.sample_params(0, data.image_shape, crop_padding=data.crop_padding, hflip=data.hflip)
    except ValueError as err:
        raise ReinforceError(f"--data {data.name}: {err}") from err
    n, num_classes = len(data.y_train), data.num_classes
    meta = {
        "version": VERSION, "dataset": data.name, "num_images": n, "num_classes": num_classes,
        "image_shape": list(data.image_shape), "fingerprint": fingerprint(data), "teachers": teacher_meta,
        "samples": samples, "topk": topk, "seed": seed, "batch_size": batch_size,
        "augmentation": {"crop_padding": data.crop_padding, "hflip": data.hflip, "magnitude": magnitude,
                         "erase_p": float(erase_p)},
    }
    if out.is_dir():
        raise ReinforceError(f"--out {out} is a directory; give the path of the file to write")
    check_output_dir(out.parent, "--out's directory")
    with OutputLock(out, "--out", directory=False):
        index_dtype = torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32
        partial = out.with_name(out.name + ".partial")
        if overwrite:
            for stale in (out, partial):
                stale.unlink(missing_ok=True)
        if out.exists():
            existing = load_reinforced(out)
            if existing.meta != meta:
                raise ReinforceError(f"--out {out} already holds a reinforced file made with other arguments or data "
                                     f"({_differences(existing.meta, meta)}); pass --overwrite to replace it, or choose "
                                     "another --out")
            log(f"{out} is already complete; nothing to do")
            return existing

        params = torch.zeros(n, samples, T.NUM_FIELDS, dtype=torch.int16)
        indices = torch.zeros(n, samples, topk, dtype=index_dtype)
        probs = torch.zeros(n, samples, topk, dtype=torch.float32)
        start = 0
        if partial.exists():
            state = _load_partial(partial)
            if state["meta"] != meta:
                raise ReinforceError(f"cannot resume from {partial}: it was started with other arguments or data "
                                     f"({_differences(state['meta'], meta)}); rerun with the same arguments, or pass "
                                     "--overwrite to start over")
            start = state["done"]
            for name, full in (("params", params), ("indices", indices), ("probs", probs)):
                full[:start] = state[name]
            log(f"resuming {partial} after {start} of {n} images")

        device = torch.device(device)
        teachers = [t.to(device).eval() for t in teachers]
        x_train = data.x_train.to(device)
        last_save = time.monotonic()

        def save_progress(done: int) -> None:
            state = {"format": FORMAT + "-partial", "meta": meta, "done": done, "params": params[:done].clone(),
                     "indices": indices[:done].clone(), "probs": probs[:done].clone()}
            atomic_write(partial, lambda f: torch.save(state, f))

        done = start
        with tqdm(total=n, initial=start, desc="reinforce", unit="img", disable=not progress, dynamic_ncols=True) as bar:
            try:
                for first in range(start, n, PARAM_BLOCK):
                    block = torch.arange(first, min(first + PARAM_BLOCK, n))
                    p = T.sample_params(len(block) * samples, data.image_shape, crop_padding=data.crop_padding,
                                        hflip=data.hflip, magnitude=magnitude, erase_p=erase_p,
                                        generator=epoch_generator(seed, first // PARAM_BLOCK, _PARAM_STREAM))
                    image = block.repeat_interleave(samples)  # image-major: (i, s) for s in range(samples)
                    values, classes = [], []
                    for rows in torch.arange(len(image)).split(batch_size):
                        x = T.apply(x_train[image[rows].to(device)], p[rows].to(device))
                        mean = ensemble_probs(teachers, data.normalize(x))
                        if mean.shape != (len(rows), num_classes):
                            raise ReinforceError(f"--teacher: the teachers give outputs of shape {tuple(mean.shape)} for "
                                                 f"{len(rows)} images of {data.name}, expected {num_classes} classes")
                        top = sparsify(mean, topk)
                        values.append(top.values.cpu())
                        classes.append(top.indices.cpu())
                    params[block] = p.view(len(block), samples, -1)
                    probs[block] = torch.cat(values).view(len(block), samples, topk)
                    indices[block] = torch.cat(classes).to(index_dtype).view(len(block), samples, topk)
                    done = int(block[-1]) + 1
                    bar.update(len(block))
                    if done < n and time.monotonic() - last_save >= save_interval:
                        save_progress(done)
                        last_save = time.monotonic()
            except KeyboardInterrupt:  # keep the completed blocks (a second Ctrl-C during the write leaves the old file)
                if done > start:
                    save_progress(done)
                raise

        result = ReinforcedData(meta, params, indices, probs)
        obj = {"format": FORMAT, "meta": meta, "params": params, "indices": indices, "probs": probs}
        atomic_write(out, lambda f: torch.save(obj, f))
        partial.unlink(missing_ok=True)
        return result


def _load_partial(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ReinforceError(f"{path} is unreadable ({type(err).__name__}); delete it to start over") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT + "-partial":
        raise ReinforceError(f"{path} is not the progress file of `pyfast reinforce`; delete it to start over")
    return state


def _differences(saved: dict, now: dict) -> str:
    keys = [k for k in now if saved.get(k) != now[k]] + [k for k in saved if k not in now]
    short = {"fingerprint": "other training images", "teachers": "other teachers"}
    return ", ".join(short.get(k, f"{k}={saved.get(k)!r} (now {now.get(k)!r})") for k in keys)
