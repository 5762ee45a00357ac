"""Name -> builder registries of the training harness: models, datasets, training methods and the attention kinds of
the ViT-style models.

Every builder registers itself where it is defined (``@MODELS.register("resnet18", ...)``), so ``pyfast train
--list`` and ``--method/--model/--data NAME`` see exactly what the installed code provides. A name that is not
registered is an error listing the names that are.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any


class RegistryError(ValueError):
    """An unknown or duplicate name."""


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    description: str


class Registry:
    """An ordered ``name -> Entry`` map with a decorator to fill it.

    ``providers``: modules whose import registers the built-in entries; they are imported on the first lookup, so
    ``from pyfast.registry import MODELS`` alone sees every model.
    """

    def __init__(self, kind: str, providers: tuple[str, ...] = ()):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._providers = providers

    def _load(self) -> None:
        providers, self._providers = self._providers, ()
        for module in providers:
            importlib.import_module(module)

    def register(self, name: str, description: str):
        """Decorator: register ``builder`` under ``name``. Registering a taken name is an error."""

        def decorate(builder):
            if name in self._entries:
                raise RegistryError(f"{self.kind} {name!r} is already registered (by {self._entries[name].builder})")
            self._entries[name] = Entry(name, builder, description)
            return builder

        return decorate

    def get(self, name: str) -> Entry:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def entries(self) -> list[Entry]:
        self._load()
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


MODELS = Registry("model", ("pyfast.models",))
DATASETS = Registry("dataset", ("pyfast.data",))
# Each method module is named here rather than imported by pyfast.methods: the harness imports pyfast.methods.base,
# and some methods import the harness (a teacher run's model), so the package itself must not import them all.
METHODS = Registry("method", tuple(f"pyfast.methods.{m}" for m in (
    "standard", "iir_snn", "mesa", "weighted_conv", "gated", "distill", "karat", "large_batch", "reinforced")))
ATTENTIONS = Registry("attention", ("pyfast.models.vit",))
