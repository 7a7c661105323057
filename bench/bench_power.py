"""Node power: capacity's error against the truth, and the agent's cost of reading the BMC.

Run: ``.venv/bin/python bench/bench_power.py`` (prints figures; no pass/fail).

1. **Capacity error vs truth.** A simulated fleet of DGX H100 nodes whose true draw is
   GPUs + CPU + a per-node rest (``FleetSimulator``: 1,900 W +- 150 W, what no sensor
   reports), half of which report their BMC's input power. The live node draw on each
   ``rest_basis`` (nameplate: the count before measured power; model; calibrated) and with
   every node reporting (measured), against the sum of the true draws.
2. **Agent CPU per tick** with the node power read: the sampler (fake NVML, 8 GPUs) with
   and without a node power source, CPU per tick; and the CPU of one DCMI poll (the
   subprocess included: a recorded ``ipmitool dcmi power reading`` output printed by
   ``cat``, since no BMC is here; a real ipmitool talking to /dev/ipmi0 costs more) and of
   one hwmon read (two PMBus PSUs, the recorded layout of the tests).
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.nodepower import DcmiPower, HwmonPower, NodePower
from agent.service import build_sampler
from agent.settings import AgentSettings
from agent.simulate import FleetSimulator
from collector.capacity.compute import compute_picture
from collector.capacity.config import load_capacity_plan
from collector.live import LiveView
from shared.clock import SystemClock

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "tests" / "data" / "power" / "capacity_site.toml"
HWMON = ROOT / "tests" / "data" / "hwmon" / "pmbus_two_psus"
NOW = 1_790_000_000.0


def capacity_error(nodes: int = 2_000, seed: int = 11) -> None:
    """Print the live node draw's error on each basis against the simulator's truth."""
    cplan = load_capacity_plan(PLAN)
    print(f"capacity error vs truth, {nodes:,} DGX-H100 nodes, half reporting BMC power")
    for label, share, basis in (
        ("nameplate (before: model + slack)", 0.5, "nameplate"),
        ("model (no slack)", 0.5, "model"),
        ("calibrated (default)", 0.5, "calibrated"),
        ("measured (every node reports)", 1.0, "calibrated"),
    ):
        sim = FleetSimulator(nodes, seed=seed, bmc_share=share)
        view = LiveView()
        truth = 0.0
        for i in range(nodes):
            view.on_inventory(sim.inventory(i, NOW), NOW)
            s = sim.sample(i, NOW, 0)
            truth += sim.true_power_w(i, s)
            view.on_sample(s, NOW)
        t0 = time.perf_counter()
        p = compute_picture(cplan, view.nodes(), NOW, rest_basis=basis)  # type: ignore[arg-type]
        ms = (time.perf_counter() - t0) * 1000
        err = (p.nodes_w - truth) / truth * 100
        print(
            f"  {label:<36} nodes {p.nodes_w / 1e6:8.4f} MW  truth {truth / 1e6:8.4f} MW  "
            f"error {err:+7.2f} %  (rest/node {p.types[0].rest_w:,.0f} W "
            f"{p.types[0].rest_from}; picture {ms:.0f} ms)"
        )


def _cpu() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def agent_cost(ticks: int = 400, polls: int = 100) -> None:
    """Print the agent's CPU per tick with and without node power, and per poll."""
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dcmi.txt"
        out.write_text(
            "    Instantaneous power reading:                  8412 Watts\n"
            "    Power reading state is:                   activated\n"
        )
        device = Path(tmp) / "ipmi0"
        device.touch()
        base = AgentSettings(node_id="bench", gpu_backend="fake", ipmi_device=device)
        per_tick = {}
        for label, settings in (
            ("without node power", base.model_copy(update={"node_power": "none"})),
            (
                "with node power (DCMI held)",
                base.model_copy(update={"dcmi_command": ("cat", str(out))}),
            ),
        ):
            sampler = build_sampler(settings, clock)
            sampler.start()
            if sampler.node_power is not None:
                asyncio.run(sampler.node_power.poll())
            for _ in range(20):
                sampler.sample()
            samples = []
            for _ in range(5):
                c0 = time.process_time()
                for _ in range(ticks // 5):
                    s = sampler.sample()
                samples.append((time.process_time() - c0) / (ticks // 5) * 1e3)
            assert (s.node_power_w is not None) == (sampler.node_power is not None)
            sampler.close()
            per_tick[label] = statistics.median(samples)
        print("agent CPU per tick (fake NVML, 8 GPUs; median of 5 runs)")
        for label, ms in per_tick.items():
            print(f"  {label:<30} {ms:6.3f} ms")
        dcmi = NodePower(clock, dcmi=DcmiPower(["cat", str(out)]), hwmon=None, interval_s=10)
        hwmon = NodePower(clock, dcmi=None, hwmon=HwmonPower(HWMON), interval_s=10)

        async def run(reader: NodePower) -> float:
            c0 = _cpu()
            for _ in range(polls):
                assert await reader.poll() is not None
            return (_cpu() - c0) / polls * 1e3

        print("node power poll, CPU per poll (own task, every node_power_interval_s = 10 s)")
        print(f"  DCMI (subprocess, recorded output) {asyncio.run(run(dcmi)):6.2f} ms")
        print(f"  hwmon (2 PSUs)                     {asyncio.run(run(hwmon)):6.3f} ms")


def main() -> int:
    """Run both parts."""
    capacity_error()
    print()
    agent_cost()
    return 0


if __name__ == "__main__":
    sys.exit(main())
