"""A least-recently-used map filled in batches; pure Python, so the torch-free ONNX path and
the torch text cache share it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

V = TypeVar("V")


class BatchLru(Generic[V]):
    """Values by string key, at most ``max_entries`` kept (least recently used go first)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, keys: Sequence[str], compute: Callable[[list[str]], Iterable[V]]
    ) -> tuple[list[V], int]:
        """The values of ``keys`` in order, and how many keys were missing: ``compute`` is
        called once, with the missing keys deduplicated, and its values are kept."""
        missing = list(dict.fromkeys(key for key in keys if key not in self._entries))
        if missing:
            self._entries.update(zip(missing, compute(missing), strict=True))
        values = []
        for key in keys:
            self._entries.move_to_end(key)
            values.append(self._entries[key])
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return values, len(missing)
