"""One registry helper for every named component: models, L_depth variants, stopping policies,
network exit policies, demo schedules.

A :class:`Registry` is a plain mapping from name to entry (a class, a factory or a settings
object) with one behaviour everywhere: an unknown name is a
:class:`~optdepth.errors.ConfigError` (also a ``ValueError``) that lists the known ones, and
:meth:`Registry.create` turns bad constructor arguments into the same kind of error. numpy-free
and torch-free, so the stopping engine can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

from optdepth.errors import ConfigError

T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    """Named entries of one kind: a dict whose unknown names are clear errors.

    Args:
        kind: what the entries are, for messages ("model", "exit policy").
        entries: initial name -> entry pairs.
        hint: how to add an entry, appended to the unknown-name message.
    """

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, hint: str = "") -> None:
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T] = dict(entries or {})

    def __getitem__(self, name: str) -> T:
        if not isinstance(name, str) or name not in self._entries:
            known = ", ".join(self.names())
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {known}"
                              + (f" ({self.hint})" if self.hint else ""))
        return self._entries[name]

    def __setitem__(self, name: str, entry: T) -> None:
        """``REGISTRY[name] = entry`` registers (or replaces) an entry, as with a plain dict."""
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name may be registered once."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, entry: T) -> T:
        """Decorator: register a function or class under its ``__name__``."""
        return self.add(entry.__name__, entry)  # type: ignore[attr-defined]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the entry ``name`` (a class or factory) with ``kwargs``.

        Raises:
            ConfigError: unknown name, or arguments the entry does not take.
        """
        factory: Callable[..., Any] = self[name]  # type: ignore[assignment]
        try:
            return factory(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"bad arguments for {self.kind} {name!r}: {exc}") from exc
