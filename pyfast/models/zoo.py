"""The timm and torchvision model zoos in :data:`pyfast.registry.MODELS`: ``timm:NAME`` and ``torchvision:NAME``.

A zoo name is resolved when it is looked up (the libraries' names are not listed here): an unknown NAME is a
:class:`~pyfast.registry.RegistryError` saying how to list the library's names. The builders take the harness's
``(num_classes, in_channels=3, image_size=32, **options)`` and build the architecture without weights; pyfast never
downloads anything (no ``pretrained=True``, no hub names such as ``hf-hub:...``): pretrained weights come from a local
file (``pyfast train --pretrained FILE``). The libraries are imported on the first lookup of one of their names, so
pyfast runs without them.

* ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=..., **options)``, with
  ``img_size=image_size`` for the models that timm's config marks as having a fixed input size (ViTs, Swin,
  MLP-Mixer, ...; convnets take any size and no such option).
* ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None, num_classes=..., **options)`` for the
  classification models (``torchvision.models.list_models(module=torchvision.models)``); they take 3-channel images.
  A torchvision ViT needs ``--model-arg image_size=32`` for 32x32 data.

Each built model is run once on a zero image in eval mode, so a model that cannot take the data's images (or does not
return ``[1, num_classes]`` logits) is an error at build time rather than a crash in the first training step.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import torch
from torch import nn

from pyfast.registry import MODELS, RegistryError

Builder = Callable[..., nn.Module]


def _library(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise RegistryError(f"{package}:NAME models need the {package} package, which does not import here ({err}); "
                            f"install it (pip install {package}, pinned in requirements/dev.txt)") from None


def check_input(model: nn.Module, label: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """``model`` after one forward of a zero image ``[1, in_channels, image_size, image_size]`` in eval mode (no
    statistics change), which must give logits ``[1, num_classes]``; else a ValueError naming ``label``."""
    shape = (1, in_channels, image_size, image_size)
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(shape))
    except (RuntimeError, ValueError, AssertionError) as err:
        raise ValueError(f"{label} cannot take {list(shape[1:])} images ({type(err).__name__}: {err}); a model "
                         "built for another image size may need it as an option (--model-arg img_size=N for timm, "
                         "image_size=N for a torchvision ViT)") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{label} must map images to logits [B, {num_classes}], got {got} for one image")
    return model


@MODELS.register_prefix("timm", "any timm model, randomly initialised (weights: --pretrained FILE), e.g. "
                                "timm:resnet18; names: python -c \"import timm; print(timm.list_models())\"")
def timm_model(name: str) -> Builder:
    timm = _library("timm", "timm")
    if not timm.is_model(name):
        raise RegistryError(f"unknown timm model {name!r}; list timm's names with python -c \"import timm; "
                            "print(timm.list_models('*resnet*'))\" (hub names such as hf-hub:... are not taken: "
                            "pyfast downloads nothing; name the architecture and pass weights with --pretrained FILE)")
    fixed_size = getattr(timm.models.get_pretrained_cfg(name), "fixed_input_size", False)

    def build(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
        if fixed_size:
            options = {"img_size": image_size, **options}
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
        return check_input(model, f"timm:{name}", num_classes, in_channels, image_size)

    return build


@MODELS.register_prefix("torchvision", "any torchvision classification model, randomly initialised (weights: "
                                       "--pretrained FILE); names: python -c \"import torchvision as tv; "
                                       "print(tv.models.list_models(module=tv.models))\"")
def torchvision_model(name: str) -> Builder:
    models = _library("torchvision.models", "torchvision")
    if name not in models.list_models(module=models):
        raise RegistryError(f"unknown torchvision classification model {name!r}; list them with python -c \"import "
                            "torchvision as tv; print(tv.models.list_models(module=tv.models))\"")

    def build(num_classes: int, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
        if in_channels != 3:
            raise ValueError(f"torchvision:{name} takes 3-channel images, the data has in_channels={in_channels} "
                             f"(timm models take any: timm:NAME)")
        model = models.get_model(name, weights=None, num_classes=num_classes, **options)
        return check_input(model, f"torchvision:{name}", num_classes, in_channels, image_size)

    return build
