"""A tiny decorator registry: name -> callable, one signature per registry.

    ADVANTAGES = Registry("advantage")

    @ADVANTAGES.register("grpo")
    def grpo(rewards, group_ids, *, strata=None, **params): ...

    fn = ADVANTAGES.get("grpo")

Registering a name twice is an error (two modules silently overriding each other is a bug, not a
feature), and `get` of an unknown name lists the names that exist, so a typo in a config key is
fixed from the error message alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Callable)


class UnknownNameError(KeyError, ValueError):
    """`Registry.get` of a name nobody registered. A KeyError for dict-like callers and a
    ValueError for config validation; `str()` is the plain message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> entry map for one kind of thing ("advantage", "loss", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding `fn` under `name`; raises ValueError if the name is taken."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} registry: names must be non-empty strings, got {name!r}")

        def decorator(fn: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {_qualname(self._entries[name])}); "
                    f"pick another name for {_qualname(fn)}"
                )
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> T:
        """The entry registered under `name`; a KeyError listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
