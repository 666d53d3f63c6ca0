"""Seconds spent in each stage of an indexing job (read, embed, write), as the job measures them."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

STAGES = ("read", "embed", "write")

T = TypeVar("T")


class StageClock:
    """Seconds per stage: each timing (one per batch) and their totals. A stage timed inside
    another (embedding asked for by the writer) counts for itself only: the outer stage's
    timing leaves it out."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.timings: dict[str, list[float]] = {name: [] for name in STAGES}
        self._inner: list[float] = []  # per open stage, the seconds of stages timed inside it

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name`."""
        start = self._now()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = self._now() - start
            own = elapsed - self._inner.pop()
            self.seconds[name] += own
            self.timings[name].append(own)
            if self._inner:
                self._inner[-1] += elapsed

    def each(self, name: str, batches: Iterable[T]) -> Iterator[T]:
        """`batches`, the wait for each one timed as stage `name` (a reader's batches)."""
        iterator = iter(batches)
        while True:
            with self.stage(name):
                batch = next(iterator, _END)
            if batch is _END:
                self.timings[name].pop()  # the wait for the end is no batch's (its seconds stay in the total)
                return
            yield batch

    def as_dict(self) -> dict[str, float]:
        return {name: round(seconds, 3) for name, seconds in self.seconds.items()}


_END = object()
