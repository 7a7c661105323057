"""CPU per SNMP poll of rack PDUs: N PDUs (one snmpsimd on loopback, a community each)
polled every interval by the collector's PduPoller for some rounds; prints the collector
process's CPU per poll (the agent simulator's CPU is another process: not counted).

    .venv/bin/python -m bench.bench_pdu --pdus 200 --interval 10 --rounds 3

(as a module: it starts the test suite's snmpsimd fixture, tests/snmpsim.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from collector.pdu.metrics import PduMetrics
from collector.pdu.poller import PduPoller
from collector.pdu.settings import PduSettings, PdusSettings
from shared.clock import SystemClock
from tests.snmpsim import PDU_DATA, SnmpSim

APC_POWER = "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1"


async def _bench(n: int, interval: float, rounds: int) -> None:
    with SnmpSim({f"pdu{i}": PDU_DATA / "rack-a.snmprec" for i in range(n)}) as agent:
        units = [
            PduSettings(
                rack=f"r{i // 2}",
                host="127.0.0.1",
                port=agent.port,
                name=f"p{i}",
                oid=APC_POWER,
                scale=10,
                community=SecretStr(f"pdu{i}"),
            )
            for i in range(n)
        ]
        settings = PdusSettings(interval_s=interval, timeout_s=5, retries=0, units=units)
        racks: dict[str, float] = {}
        metrics = PduMetrics(CollectorRegistry())
        poller = PduPoller(
            settings, lambda r, x: racks.__setitem__(r, x.watts), SystemClock(), metrics
        )
        cpu0, wall0 = time.process_time(), time.monotonic()
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(interval * rounds - interval / 2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        ok = sum(p.counts.get("ok", 0) for p in poller.pdus)
        failed = sum(sum(p.counts.values()) for p in poller.pdus) - ok
        print(
            f"pdus={n} interval_s={interval:g} rounds={rounds} polls_ok={ok} failed={failed} "
            f"racks={len(racks)} cpu_s={cpu:.3f} wall_s={wall:.1f} "
            f"cpu_ms_per_poll={cpu / max(ok, 1) * 1000:.3f} "
            f"cpu_pct_of_one_core={cpu / wall * 100:.2f}"
        )


def main() -> None:
    """Run the bench."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pdus", type=int, default=200)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    asyncio.run(_bench(a.pdus, a.interval, a.rounds))


if __name__ == "__main__":
    main()
