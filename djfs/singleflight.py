"""One computation per key at a time: concurrent callers of a key wait for the first one's result.

Used wherever many threads may ask for the same thing at once (a block of an object, a cached object, a
listing): the first caller *owns* the flight and computes; the others wait on its future and get the same
value or the same exception.  A flight ends with its result: the next caller after that starts a new one, so
remembering results (and for how long) is the caller's business.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Flights by key.  ``do(key, compute)`` for the simple case; ``claim``/``resolve``/``fail`` when the owner
    hands the work to another thread (a read-ahead part claims its blocks now and delivers them later)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, Future] = {}

    def claim(self, key: K) -> tuple[Future, bool]:
        """The key's flight and whether the caller owns it (then it must ``resolve`` or ``fail`` it)."""
        with self._lock:
            future = self._flights.get(key)
            if future is not None:
                return future, False
            future = self._flights[key] = Future()
            return future, True

    def claim_new(self, key: K) -> Future | None:
        """Own a new flight, or None when one is under way (don't wait for it)."""
        future, owner = self.claim(key)
        return future if owner else None

    def resolve(self, key: K, future: Future, value: V) -> None:
        self._end(key, future)
        future.set_result(value)

    def fail(self, key: K, future: Future, error: BaseException) -> None:
        self._end(key, future)
        future.set_exception(error)

    def _end(self, key: K, future: Future) -> None:
        with self._lock:
            if self._flights.get(key) is future:
                del self._flights[key]

    def in_flight(self, key: K) -> bool:
        with self._lock:
            return key in self._flights

    def do(self, key: K, compute: Callable[[], V]) -> V:
        """``compute()`` once however many threads ask for ``key`` meanwhile; all get its value or its error."""
        future, owner = self.claim(key)
        if not owner:
            return future.result()
        try:
            value = compute()
        except BaseException as error:
            self.fail(key, future, error)
            raise
        self.resolve(key, future, value)
        return value
