"""One registry style for every family of named objects (rules, attacks, presets, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping whose lookup errors list the valid names.

    >>> r = Registry[int]("number")
    >>> r.register("one", 1)
    1
    >>> r.get("one")
    1
    >>> r.get("two")
    Traceback (most recent call last):
    ...
    ValueError: Unknown number 'two'. Valid names: one.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T, *, force: bool = False) -> T:
        """Add ``obj`` under ``name``; re-registering a name needs ``force=True``."""
        if not force and name in self._items:
            raise ValueError(f"A {self.kind} named {name!r} is already registered.")
        self._items[name] = obj
        return obj

    def decorator(self, name: str, *, force: bool = False) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object."""

        def add(obj: T) -> T:
            return self.register(name, obj, force=force)

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"Unknown {self.kind} {name!r}. Valid names: {', '.join(self.names())}."
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
