"""Name -> builder registries of the training harness: models, datasets, training methods and the attention kinds of
the ViT-style models.

Every builder registers itself where it is defined (``@MODELS.register("resnet18", ...)``), so ``pyfast train
--list`` and ``--method/--model/--data NAME`` see exactly what the installed code provides. A name that is not
registered is an error listing the names that are. A prefix (``@MODELS.register_prefix("timm", ...)``) stands for
the names another library provides (``timm:resnet18``), resolved when they are looked up rather than listed.
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
        self._prefixes: dict[str, Entry] = {}  # prefix -> Entry("PREFIX:NAME", resolver, description)
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

    def register_prefix(self, prefix: str, description: str):
        """Decorator: ``resolve(NAME) -> builder`` serves every name ``PREFIX:NAME``; it raises
        :class:`RegistryError` for a NAME it does not know, saying where the known ones are listed."""

        def decorate(resolve):
            if prefix in self._prefixes:
                raise RegistryError(f"{self.kind} prefix {prefix!r} is already registered")
            self._prefixes[prefix] = Entry(f"{prefix}:NAME", resolve, description)
            return resolve

        return decorate

    def get(self, name: str) -> Entry:
        self._load()
        if name in self._entries:
            return self._entries[name]
        prefix, colon, rest = name.partition(":")
        if colon and prefix in self._prefixes:
            entry = self._prefixes[prefix]
            return Entry(name, entry.builder(rest), entry.description)
        raise RegistryError(f"unknown {self.kind} {name!r}; {self.kind} must be one of: {', '.join(self.choices())}")

    def names(self) -> list[str]:
        """The registered names (not the prefixed ones, which are the other library's to list)."""
        self._load()
        return list(self._entries)

    def entries(self) -> list[Entry]:
        self._load()
        return list(self._entries.values())

    def prefixes(self) -> list[Entry]:
        """One entry per registered prefix, named ``PREFIX:NAME``."""
        self._load()
        return list(self._prefixes.values())

    def choices(self) -> list[str]:
        """What a name may be: the registered names, then ``PREFIX:NAME`` for each prefix."""
        return self.names() + [e.name for e in self.prefixes()]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except RegistryError:
            return False
        return True


MODELS = Registry("model", ("pyfast.models", "pyfast.models.zoo"))
DATASETS = Registry("dataset", ("pyfast.data",))
# Each method module is named here rather than imported by pyfast.methods: the harness imports pyfast.methods.base,
# and some methods import the harness (a teacher run's model), so the package itself must not import them all.
METHODS = Registry("method", tuple(f"pyfast.methods.{m}" for m in (
    "standard", "iir_snn", "mesa", "weighted_conv", "gated", "distill", "karat", "large_batch", "reinforced")))
ATTENTIONS = Registry("attention", ("pyfast.models.vit",))
