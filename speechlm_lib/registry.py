"""Tiny registries of builder functions.

Components (encoders, projectors, LLMs, ...) are chosen by name through a
`Registry`; adding one is a single decorated builder function::

    PROJECTORS = Registry("projector")

    @PROJECTORS.register("linear")
    def build_linear(in_dim, out_dim, **kw): ...

    proj = PROJECTORS.build("linear", in_dim=384, out_dim=576)
"""
from __future__ import annotations

from typing import Callable


class Registry:
    """A name -> builder mapping with a clear error for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator that registers `fn` under `name` (names are unique)."""

        def deco(fn: Callable) -> Callable:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable:
        if name not in self._builders:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._builders))}")
        return self._builders[name]

    def build(self, name: str, *args, **kwargs):
        """Call the builder registered as `name`."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders
