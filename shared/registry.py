"""Registries over if-chains: monitor models, probes and (later) notifiers register once by name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._items: dict[str, T] = {}

    def register(self, names: Iterable[str], item: T) -> None:
        for name in names:
            if name in self._items:
                raise RuntimeError(f"{self._kind} {name!r} registered twice")
            self._items[name] = item

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
