"""The training harness: what every command that trains or evaluates a model shares, a file per concern.

==================  ==========================================================================================
``config``          :class:`TrainConfig`, config files, checks (:class:`ConfigError`), devices
``build``           a resolved config -> data, method, model (:class:`Run`); a trained run's model back from disk
``loop``            :func:`train`: epochs, stages, evaluation, checkpoints, resume
``checkpoints``     save / load / resume rules of ``last.pt``
``files``           atomic writes
``metrics``         ``metrics.jsonl`` / ``.csv`` / ``curves.png``
``optim``           optimiser and learning-rate schedule
``rng``             RNG states and per-epoch generators (exact resume)
``distributed``     torchrun / DDP process groups
``signals``         Ctrl-C at a safe point
``reinforce``       Dataset Reinforcement, the offline step of ``pyfast reinforce``
==================  ==========================================================================================

The commands themselves (``pyfast train``, ``pyfast reinforce``, ...) are in :mod:`pyfast.cli`.
"""

from pyfast.harness.build import Run, build_model, build_run, load_trained_model
from pyfast.harness.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from pyfast.harness.config import ConfigError, TrainConfig, check_config, config_from_dict, load_config_file
from pyfast.harness.loop import evaluate, train, train_epoch

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Run",
    "TrainConfig",
    "build_model",
    "build_run",
    "check_config",
    "config_from_dict",
    "evaluate",
    "load_checkpoint",
    "load_config_file",
    "load_trained_model",
    "save_checkpoint",
    "train",
    "train_epoch",
]
