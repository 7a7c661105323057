"""NVML field values (``nvmlDeviceGetFieldValues``): the optional readings NVML reports by
field id rather than through a function of their own (memory temperature, NVLink traffic).

NVML answers a field request per field: the call succeeds and each field's own status says
NotSupported on a GPU without that sensor or counter. Every field wanted on a GPU goes in
one call per tick; a field NVML called NotSupported is left out from then on, and when none
is left the call is not made at all (``nvmlDeviceGetFieldValues``, NVML API Reference Guide,
docs.nvidia.com/deploy/nvml-api/).

NVLink: NVML keeps a data counter per direction and link, in KiB
(``NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX`` / ``_RX``; ``scopeId`` UINT_MAX sums every link,
nvml.h). DCGM reads the same pair for ``DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL`` (its
``DcgmCacheManager::ReadAndCacheNvLinkBandwidth``); here each direction becomes a rate in
bytes/s over the agent's monotonic interval (:mod:`agent.rates`: the first reading and a
counter reset give no rate). A GPU that reports no NVLink (``NVML_FI_DEV_NVLINK_LINK_COUNT``
0, asked once when the GPU is opened) or NotSupported for them is not asked again. The
counters with protocol overhead (``_RAW_``) are left out: payload is the traffic a job
moved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from agent.nvml import Device, NvmlCalls, NvmlModule
from shared.schema import MAX_NVLINK_BYTES_PER_S, GpuNvlink

__all__ = ["NVLINK_ALL_LINKS", "Field", "FieldReader", "nvlink", "nvlink_fields"]

NVLINK_ALL_LINKS: Final = 0xFFFFFFFF
"""``scopeId`` UINT_MAX: NVML sums a throughput field over every link of the GPU."""

_CALL = "field_values"
"""The name the call itself goes by in a device's unsupported set and the logs."""


@dataclass(frozen=True, slots=True)
class Field:
    """One field to request."""

    name: str
    """Its key in a device's unsupported set and in log lines (``mem_temp``)."""
    wire: str
    """The wire field it feeds, named as shared/schema.md names it, for rejected values."""
    field_id: int
    scope_id: int | None = None
    """``nvmlFieldValue_t.scopeId`` (a link, a fan); ``None``: 0, the binding's default."""


class FieldReader:
    """Field values of a device through ``calls``, read from the union member each field's
    value type names."""

    __slots__ = ("_attrs", "_calls", "_not_supported", "_success")

    def __init__(self, calls: NvmlCalls) -> None:
        self._calls = calls
        nvml = calls.nvml
        self._success = nvml.NVML_SUCCESS
        self._not_supported = nvml.NVML_ERROR_NOT_SUPPORTED
        # c_nvmlValue_t's member for each value type a field may come back as.
        self._attrs = {
            nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
            nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        }

    def read(self, dev: Device, fields: Sequence[Field]) -> dict[str, float]:
        """The value of each of ``fields`` ``dev`` answered, by name; one NVML call."""
        wanted = [f for f in fields if f.name not in dev.unsupported]
        if not wanted:
            return {}
        calls = self._calls
        nvml = calls.nvml
        ids = [f.field_id if f.scope_id is None else (f.field_id, f.scope_id) for f in wanted]
        values = calls.call(dev, _CALL, nvml.nvmlDeviceGetFieldValues, ids)
        if values is None:
            if _CALL in dev.unsupported:
                dev.unsupported.update(f.name for f in fields)
            return {}
        out: dict[str, float] = {}
        attrs = self._attrs
        for f, fv in zip(wanted, values, strict=False):  # a short answer: the rest unread
            status = fv.nvmlReturn
            if status != self._success:
                if status == self._not_supported:
                    dev.unsupported.add(f.name)
                    calls.log.debug("gpu_field_unsupported", gpu=dev.index, field=f.name)
                elif (f.name, str(status)) not in dev.logged_errors:
                    dev.logged_errors.add((f.name, str(status)))
                    calls.log.warning(
                        "gpu_read_failed", gpu=dev.index, field=f.name, nvml_return=status
                    )
                continue
            value_type = fv.valueType
            attr = attrs.get(value_type)
            if attr is None:  # a value type this agent does not know: garbage, not a reading
                dev.bounds.rejected(f.wire, f"value type {value_type}")
                continue
            out[f.name] = getattr(fv.value, attr)
        return out


def nvlink_fields(nvml: NvmlModule) -> tuple[Field, Field]:
    """The NVLink data counters, every link summed: transmitted, received."""
    return (
        Field(
            "nvlink_tx",
            "gpus[].nvlink.tx_bytes_per_s",
            nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
            NVLINK_ALL_LINKS,
        ),
        Field(
            "nvlink_rx",
            "gpus[].nvlink.rx_bytes_per_s",
            nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
            NVLINK_ALL_LINKS,
        ),
    )


def nvlink(dev: Device, values: Mapping[str, float], now_mono: float) -> GpuNvlink | None:
    """``dev``'s NVLink rates from this tick's counters (``values`` by field name); ``None``
    when neither direction has a rate yet."""
    if "nvlink_tx" not in values and "nvlink_rx" not in values:
        return None  # no NVLink, or not read this tick: the counters wait for the next
    b = dev.bounds
    rates: list[float | None] = []
    for name, counter, wire in (
        ("nvlink_tx", dev.nvlink_tx, "gpus[].nvlink.tx_bytes_per_s"),
        ("nvlink_rx", dev.nvlink_rx, "gpus[].nvlink.rx_bytes_per_s"),
    ):
        kib = values.get(name)
        if kib is None or not math.isfinite(kib):  # unread, or garbage in a double
            rates.append(None)
            continue
        rate = counter.update(int(kib) * 1024, now_mono)  # whole KiB: exact in the delta
        rates.append(
            None if rate is None else b.optional(float(round(rate)), wire, MAX_NVLINK_BYTES_PER_S)
        )
    tx, rx = rates
    if tx is None and rx is None:
        return None
    return GpuNvlink(tx_bytes_per_s=tx, rx_bytes_per_s=rx)
