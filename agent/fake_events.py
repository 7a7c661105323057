"""The fake NVML's XID events: event sets that a test's :meth:`inject` feeds and that the
agent's XID thread waits on (:meth:`agent.fake_nvml.FakeNvml.nvmlEventSetWait_v2`)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

__all__ = ["EventSet", "XidEvents"]


@dataclass(slots=True, eq=False)
class EventSet:
    """What ``nvmlEventSetCreate`` returns: the GPUs registered, the events not yet taken."""

    gpus: set[int] = field(default_factory=set)
    pending: deque[tuple[int, int]] = field(default_factory=deque)
    """(GPU index, XID) not yet taken by a wait."""
    freed: bool = False


class XidEvents:
    """Every event set of one fake; thread-safe (the agent waits in its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()  # guards the sets; waiters sleep on it
        self._sets: list[EventSet] = []

    def create(self) -> EventSet:
        """A new, empty event set."""
        event_set = EventSet()
        with self._lock:
            self._sets.append(event_set)
        return event_set

    def register(self, event_set: EventSet, gpu: int) -> None:
        """``event_set`` receives ``gpu``'s XIDs from now on."""
        with self._lock:
            event_set.gpus.add(gpu)

    def inject(self, gpu: int, xid: int) -> None:
        """XID ``xid`` on ``gpu``: every set registered for it delivers it."""
        with self._lock:
            for event_set in self._sets:
                if gpu in event_set.gpus and not event_set.freed:
                    event_set.pending.append((gpu, xid))
            self._lock.notify_all()

    def wait(self, event_set: EventSet, timeout_s: float) -> tuple[int, int] | None:
        """The next (GPU index, XID) of ``event_set``, waiting up to ``timeout_s`` (real
        time); ``None``: none came (or the set was freed)."""
        with self._lock:
            self._lock.wait_for(lambda: event_set.pending or event_set.freed, timeout_s)
            if event_set.freed or not event_set.pending:
                return None
            return event_set.pending.popleft()

    def free(self, event_set: EventSet) -> None:
        """Release ``event_set``; a wait on it returns."""
        with self._lock:
            event_set.freed = True
            self._sets.remove(event_set)
            self._lock.notify_all()
