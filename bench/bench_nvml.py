"""The agent's NVML path on a real GPU: what NVML answers, what the agent samples from it, and
what that costs. Figures and a report; it changes nothing on the GPU (MIG mode included).

    python bench/bench_nvml.py [--seconds 10] [--no-load] [--fake]

Run it through ``scripts/nvml-device-check.sh run`` (which finds msgspec and structlog on a
machine without the project's virtualenv). It prints:

1. the inventory :class:`agent.gpu.NvmlBackend` reads (driver, each GPU, MIG mode);
2. NVML's raw answers per GPU for the optional fields the agent probes: the field values
   (memory temperature, NVLink count, the NVLink data counters summed over every link with
   ``scopeId`` UINT_MAX), the compute processes, the MIG device slots;
3. one sample per second for ``--seconds``, while (unless ``--no-load``) a PyTorch matrix
   product keeps the first GPU busy when PyTorch is there: utilisation, power from the
   reading and from the energy counter, memory temperature, NVLink bytes/s each way,
   processes (this one among them), MIG devices with their UUIDs;
4. the agent's CPU per ``sample()`` (this thread's CPU time, min/median/max), the encoded
   sample's bytes, one /metrics scrape's time and its NVLink and MIG lines;
5. the fields NVML said NotSupported for (the agent's debug log), never asked again.

``--fake`` runs it over :class:`agent.fake_nvml.FakeNvml` (two H100s, the second in MIG
mode), to try the script where there is no GPU. Exit 1 if NVML did not start or a sample
failed the collector's decoder. One GPU alone has
no NVLink peers: its counters may stay at 0 B/s (or NotSupported); MIG devices show only
where an administrator has created them (nothing here turns MIG on).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.gpu import NvmlBackend
from agent.metrics import render_sample
from agent.nvml_fields import NVLINK_ALL_LINKS
from shared.clock import SystemClock
from shared.logging import configure_logging
from shared.schema import CpuStats, MemStats, Sample, decode_sample, encode


def _raw(nvml: Any, index: int) -> list[str]:
    """NVML's own answers for GPU ``index`` (what the agent's probes rest on)."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    fields = [
        ("mem_temp", nvml.NVML_FI_DEV_MEMORY_TEMP),
        ("nvlink_links", nvml.NVML_FI_DEV_NVLINK_LINK_COUNT),
        ("nvlink_tx_kib", (nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, NVLINK_ALL_LINKS)),
        ("nvlink_rx_kib", (nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, NVLINK_ALL_LINKS)),
    ]
    out = []
    try:
        values = nvml.nvmlDeviceGetFieldValues(handle, [f for _, f in fields])
        members = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal"}
        for (name, _), fv in zip(fields, values, strict=True):
            value = getattr(fv.value, members.get(fv.valueType, "ullVal"))
            out.append(f"{name}: return {fv.nvmlReturn}, type {fv.valueType}, value {value}")
    except nvml.NVMLError as exc:
        out.append(f"field values: {exc}")
    for label, call in (
        ("processes", nvml.nvmlDeviceGetComputeRunningProcesses),
        ("mig_mode", nvml.nvmlDeviceGetMigMode),
        ("mig_slots", nvml.nvmlDeviceGetMaxMigDeviceCount),
    ):
        try:
            answer = call(handle)
        except nvml.NVMLError as exc:
            answer = f"error: {exc}"
        out.append(f"{label}: {answer}")
    return out


def _load(stop: threading.Event) -> str:
    """Keep GPU 0 busy with bf16 matrix products until ``stop``; what ran."""
    try:
        torch = importlib.import_module("torch")  # the GPU machines' image has it
    except ImportError:
        return "no PyTorch: no load"
    if not torch.cuda.is_available():
        return "PyTorch sees no GPU: no load"
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def spin() -> None:
        while not stop.is_set():
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()

    threading.Thread(target=spin, name="gpu-load", daemon=True).start()
    return "8192^3 bf16 matrix products on GPU 0 (this process)"


def main() -> int:
    """Print the report; 1 if NVML did not start or a sample did not decode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--no-load", action="store_true", help="no PyTorch load on GPU 0")
    parser.add_argument("--fake", action="store_true", help="the fake NVML: no GPU needed")
    args = parser.parse_args()
    configure_logging("debug")
    from importlib.metadata import version  # noqa: PLC0415

    print(f"nvidia-ml-py {version('nvidia-ml-py')}, python {sys.version.split()[0]}")
    clock = SystemClock()
    nvml: Any
    if args.fake:
        from agent.fake_nvml import FakeNvml  # noqa: PLC0415

        nvml = FakeNvml(2, clock=clock, mig={1: ["3g.40gb", "2g.20gb", "2g.20gb"]})
    else:
        import pynvml  # noqa: PLC0415

        nvml = pynvml
    backend = NvmlBackend(nvml, clock=clock)
    stop = threading.Event()
    try:
        inventory = backend.start()
        print(f"\n== inventory: status {inventory.status}, driver {inventory.driver}")
        for g in inventory.gpus:
            print(f"GPU {g.index}: {g.name} {g.uuid} bus {g.pci_bus_id} mig_mode {g.mig_mode}")
        if inventory.status != "ok":
            return 1
        print("\n== NVML's raw answers")
        for g in inventory.gpus:
            for line in _raw(nvml, g.index):
                print(f"GPU {g.index} {line}")
        load = "none" if args.no_load or args.fake else _load(stop)
        print(f"\n== samples, one a second for {args.seconds} s; load: {load}")
        cpu_ms, sizes = [], []
        sample = None
        for tick in range(args.seconds + 1):
            start = time.thread_time()
            gpus = backend.sample(clock.monotonic(), slow=tick % 5 == 0)
            cpu_ms.append((time.thread_time() - start) * 1000)
            sample = Sample(
                v=1,
                node="device-check",
                ts=clock.time(),
                seq=tick,
                interval_s=1.0,
                cpu=CpuStats(count=1),
                mem=MemStats(total_bytes=1, used_bytes=0, available_bytes=1),
                gpus=tuple(gpus),
                xids=tuple(backend.drain_xids()),
            )
            payload = encode(sample)
            decode_sample(payload)  # the collector's decoder: raises if out of bounds
            sizes.append(len(payload))
            for gs in gpus:
                nv = gs.nvlink
                print(
                    f"t={tick:2d} GPU {gs.index}: util {gs.util_pct} power {gs.power_w} W "
                    f"(interval {gs.power_interval_w}) mem_temp {gs.mem_temp_c} "
                    f"nvlink tx {nv and nv.tx_bytes_per_s} rx {nv and nv.rx_bytes_per_s} B/s "
                    f"procs {[(p.pid, p.used_mem_bytes, p.gi_id) for p in gs.processes]} "
                    f"mig {[(m.profile, m.gi_id, m.uuid) for m in gs.mig]}"
                )
            time.sleep(1.0)
        assert sample is not None
        print("\n== cost")
        print(
            f"sample(): {min(cpu_ms):.2f} / {statistics.median(cpu_ms):.2f} / "
            f"{max(cpu_ms):.2f} ms CPU (min / median / max of {len(cpu_ms)}, first one slow)"
        )
        print(f"encoded sample: {statistics.median(sizes):.0f} bytes ({len(sample.gpus)} GPUs)")
        start = time.perf_counter()
        text = render_sample(sample).decode()
        print(f"/metrics scrape: {(time.perf_counter() - start) * 1000:.2f} ms")
        for line in text.splitlines():
            if ("NVLINK" in line or "GPU_I_ID" in line) and not line.startswith("#"):
                print(line)
        return 0
    finally:
        stop.set()
        backend.close()


if __name__ == "__main__":
    sys.exit(main())
