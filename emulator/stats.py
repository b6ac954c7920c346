"""Thread-safe counters behind `GET /_emulator/stats`."""

from __future__ import annotations

import threading
from collections import Counter


class Stats:
    """Named integer counters; names are dotted, e.g. `calls`, `errors.503`, `tokens.batch`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
