"""One generic registry for models, datasets, tasks, ablations and suites (like timm's).

Registering is one decorator and one name; a duplicate name is an error; an unknown name
answers with the closest registered names.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Callable, Generic, Iterator, TypeVar

from ctal_bench.errors import UserError

T = TypeVar("T")


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # "model", "dataset", ... used in messages
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("ctal")``."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UserError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._items, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(self.names())}"
        return f"unknown {self.kind} {name!r}; {hint}"

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, in natural order."""
        return sorted((n for n in self._items if fnmatch.fnmatchcase(n, pattern)), key=_natural_key)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset")
TASKS: Registry = Registry("task")
ABLATIONS: Registry = Registry("ablation")
SUITES: Registry = Registry("suite")
