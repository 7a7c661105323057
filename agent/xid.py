"""XID errors: NVML's critical-error events (``nvmlEventTypeXidCriticalError``), gathered by
a daemon thread blocked in ``nvmlEventSetWait_v2`` and handed to the next sample.

NVIDIA's XID catalogue: docs.nvidia.com/deploy/xid-errors/. The thread waits at most
``wait_ms`` at a time, which is also how long :meth:`XidWatch.close` may wait for it; at most
``queue_max`` events (up to the schema's ``MAX_XIDS``) wait for the next sample, the oldest
dropped first.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from agent.bounds import Bounds
from agent.nvml import Device, NvmlModule, text
from shared.clock import Clock
from shared.logging import get_logger
from shared.schema import MAX_XID, MAX_XIDS, XidEvent

__all__ = ["XidWatch"]


class XidWatch:
    """XID events of the GPUs registered by :meth:`start`, until :meth:`close`."""

    def __init__(self, *, clock: Clock, bounds: Bounds, wait_ms: int, queue_max: int) -> None:
        if not 1 <= queue_max <= MAX_XIDS:
            raise ValueError(f"xid_queue_max must be within 1..{MAX_XIDS}, got {queue_max}")
        self._nvml: NvmlModule | None = None
        self._clock = clock
        self._bounds = bounds
        self._wait_ms = wait_ms
        self._log = get_logger("agent.gpu")
        self._xids: deque[XidEvent] = deque(maxlen=queue_max)
        self._dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._uuid_index: Mapping[str, int] = {}

    def start(
        self, nvml: NvmlModule, devices: Iterable[Device], uuid_index: Mapping[str, int]
    ) -> None:
        """Register ``devices`` for XID events and start the thread (not when none could
        be registered). ``uuid_index``: GPU index by UUID, to attribute an event."""
        self._nvml = nvml
        self._uuid_index = uuid_index
        try:
            event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            self._log.warning("xid_watch_unavailable", error=str(exc))
            return
        registered = 0
        for dev in devices:
            try:
                nvml.nvmlDeviceRegisterEvents(
                    dev.handle, nvml.nvmlEventTypeXidCriticalError, event_set
                )
                registered += 1
            except nvml.NVMLError as exc:
                self._log.info("xid_watch_unsupported", gpu=dev.index, error=str(exc))
        if not registered:
            self._free_event_set(nvml, event_set)
            return
        self._event_set = event_set
        self._thread = threading.Thread(
            target=self._watch, args=(nvml, event_set), name="nvml-xid", daemon=True
        )
        self._thread.start()

    def drain(self) -> list[XidEvent]:
        """XID events since the last call (the oldest are dropped past ``queue_max``)."""
        xids = self._xids
        events = [xids.popleft() for _ in range(len(xids))]  # later arrivals wait for next time
        dropped, self._dropped = self._dropped, 0
        if dropped:
            self._log.warning("xid_events_dropped", count=dropped)
        return events

    def _watch(self, nvml: NvmlModule, event_set: Any) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(event_set, self._wait_ms)
            except nvml.NVMLError_Timeout:
                continue
            except nvml.NVMLError as exc:
                failures += 1
                if failures == 1:
                    self._log.warning("xid_wait_failed", error=str(exc))
                self._stop.wait(min(60.0, 0.5 * 2 ** min(failures, 7)))  # back off, keep trying
                continue
            if failures:
                self._log.info("xid_wait_recovered", failures=failures)
                failures = 0
            if data.eventType & nvml.nvmlEventTypeXidCriticalError:
                self._record(nvml, data.device, int(data.eventData))

    def _record(self, nvml: NvmlModule, handle: Any, xid: int) -> None:
        if self._bounds.optional_int(xid, "xids[].xid", MAX_XID) is None:
            return
        try:
            index = self._uuid_index.get(text(nvml.nvmlDeviceGetUUID(handle)))
        except nvml.NVMLError:
            index = None
        if index is None:
            self._log.warning("gpu_xid_unattributed", xid=xid)
            return
        self._log.warning("gpu_xid", gpu=index, xid=xid)
        if len(self._xids) == self._xids.maxlen:
            self._dropped += 1
        self._xids.append(XidEvent(gpu_index=index, xid=xid, ts=self._clock.time()))

    def close(self) -> None:
        """Stop the thread and free the event set. Idempotent; call before NVML's shutdown."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self._wait_ms / 1000 + 2.0)
            if thread.is_alive():
                # Still inside nvmlEventSetWait: freeing the set under it would be unsafe.
                self._log.warning("xid_watch_stop_timeout")
                self._event_set = None
        if self._event_set is not None and self._nvml is not None:
            self._free_event_set(self._nvml, self._event_set)
        self._event_set = None

    def _free_event_set(self, nvml: NvmlModule, event_set: Any) -> None:
        try:
            nvml.nvmlEventSetFree(event_set)
        except nvml.NVMLError as exc:
            self._log.warning("xid_event_set_free_failed", error=str(exc))
