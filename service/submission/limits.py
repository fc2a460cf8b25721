"""Submission limits kept in memory: connections at once (in all and per client address) and sliding-minute counts."""

from __future__ import annotations

import collections
import time
from typing import Callable, Hashable

WINDOW_SECONDS = 60.0
#: Keys kept before the counts of keys not seen for a minute are dropped (memory stays bounded).
PRUNE_ABOVE_KEYS = 4096


class ConnectionSlots:
    """Connections held at once, in all and per client address (the event loop's thread only)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._held = 0
        self._by_client: collections.Counter[str] = collections.Counter()

    def take(self, client: str) -> str | None:
        """Hold a slot for ``client``; ``None`` when held, else why not (``"total"`` or ``"client"``)."""
        if self._held >= self.total:
            return "total"
        if self._by_client[client] >= self.per_client:
            return "client"
        self._held += 1
        self._by_client[client] += 1
        return None

    def give_back(self, client: str) -> None:
        self._held -= 1
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    @property
    def held(self) -> int:
        return self._held


class MinuteCounter:
    """Events per key in the last minute (auth failures per address, messages per token)."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._events: dict[Hashable, collections.deque[float]] = {}

    def _recent(self, key: Hashable) -> collections.deque[float]:
        events = self._events.get(key)
        if events is None:
            return collections.deque()
        horizon = self._clock() - WINDOW_SECONDS
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
        return events

    def reached(self, key: Hashable) -> bool:
        """Whether ``key`` has used up its ``limit`` in the last minute."""
        return len(self._recent(key)) >= self.limit

    def add(self, key: Hashable) -> int:
        """Count one event for ``key``; how many it has had in the last minute."""
        events = self._recent(key)
        if key not in self._events:
            if len(self._events) >= PRUNE_ABOVE_KEYS:
                for other in list(self._events):
                    self._recent(other)
            self._events[key] = events
        events.append(self._clock())
        return len(events)
