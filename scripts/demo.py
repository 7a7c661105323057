"""The whole system on this machine, no root needed: broker, collector, real agent, fleet.

Run through ``scripts/demo.sh`` (which creates the virtualenv). Steps:

1. a broker on a free loopback port: Mosquitto when installed, else an embedded Python one;
2. ``collector run`` with its database in ``demo-run/``;
3. ``agent run`` for this machine (real CPU/memory/disk/network; real GPUs when NVML finds
   them, else zero GPUs and a log line saying why);
4. ``agent simulate`` for a synthetic fleet of xname nodes with 8 fake GPUs each;
5. a hostile node: garbage, absurd values, a clock a day ahead; the collector quarantines
   and acknowledges each and goes on storing the fleet;
6. after a few seconds, ``collector query`` four ways (fleet, this machine, per-GPU rows,
   the quarantined messages), ``collector alerts`` (the hostile node's clock skew and rising
   rejects), ``collector solve``;
7. leases and quotas: ``collector apply -f cluster.toml`` (two tenants in a cohort leasing
   the simulated fleet), ``collector lease list``, ``collector quota show`` on both bases;
   then a clean shutdown.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
_MAX_NODES = 200_000
"""What ``agent simulate --nodes`` takes."""
_MIN_SECONDS, _MAX_SECONDS = 1.0, 86_400.0


def _banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def _run_cli(*args: str) -> None:
    print(f"$ {' '.join(args)}", flush=True)
    subprocess.run([str(BIN / args[0]), *args[1:]], check=False)


def _cluster_toml(nodes: int) -> str:
    """Two tenants sharing a cohort, each leasing half the simulated fleet from 30 days ago."""
    import datetime as dt  # noqa: PLC0415

    from agent.simulate import xname  # noqa: PLC0415

    start = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=30)).isoformat()
    half = max(1, nodes // 2)
    first = ", ".join(f'"{xname(i)}"' for i in range(half))
    second = ", ".join(f'"{xname(i)}"' for i in range(half, nodes))
    gpus = 8 * half
    text = f"""\
[cohorts.research]
[tenants.climate]
cohort = "research"
quota.gpus = {{ nominal = {gpus * 3 // 4}, borrowing_limit = {gpus // 2} }}
quota.power_kw = {{ nominal = {half * 4} }}
[tenants.genomics]
cohort = "research"
quota.gpus = {{ nominal = {gpus * 5 // 4}, lending_limit = {gpus // 2} }}
[pools.climate-a]
nodes = [{first}]
[leases.climate-2026]
tenant = "climate"
pool = "climate-a"
start = {start}
duration_days = 180
notice_days = 90
"""
    if second:
        text += f"""\
[leases.genomics-2026]
tenant = "genomics"
nodes = [{second}]
start = {start}
duration_days = 365
notice_days = 30
tz = "Asia/Tokyo"
"""
    return text


def _hostile_node(host: str, port: int) -> int:
    """Publish what once crash-looped or poisoned the collector; return how many messages."""
    import asyncio  # noqa: PLC0415

    import aiomqtt  # noqa: PLC0415
    import msgspec  # noqa: PLC0415

    from agent.simulate import FleetSimulator  # noqa: PLC0415
    from shared.schema import encode  # noqa: PLC0415
    from shared.topics import sample_topic  # noqa: PLC0415

    sim = FleetSimulator(1, gpus_per_node=2, seed=666, interval_s=1, first_index=4096)
    node = sim.node_ids[0]
    good = msgspec.json.decode(encode(sim.sample(0, time.time(), 0)))
    evil = [
        b"{this is not json",
        msgspec.json.encode({**good, "ts": time.time() + 86_400}),  # a day ahead
        msgspec.json.encode({**good, "disk_io": {"read_bytes_per_s": 1e300}}),
        msgspec.json.encode(
            {**good, "gpus": [{**g, "mem_used_bytes": 2**62} for g in good["gpus"]]}
        ),
        msgspec.json.encode({**good, "cpu": {**good["cpu"], "per_core_pct": [1.0] * 150_000}}),
    ]

    async def publish() -> None:
        async with aiomqtt.Client(host, port, identifier=f"hostile-{node}") as client:
            for payload in evil * 2:  # twice: ten rejects make NodeRejectsRising fire
                await client.publish(sample_topic(node), payload, qos=1)

    asyncio.run(publish())
    return 2 * len(evil)


def main() -> int:
    """Run the demo; exit 0 when every part came up and data reached the store."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=32, help="simulated nodes (default 32)")
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="how long to collect (default 8)"
    )
    parser.add_argument("--dir", type=Path, default=ROOT / "demo-run", help="working directory")
    parser.add_argument(
        "--embedded-broker",
        action="store_true",
        help="use the embedded Python broker even if Mosquitto is installed",
    )
    args = parser.parse_args()
    # Checked before anything starts: one line and exit 2, not a crash half-way through.
    if not 1 <= args.nodes <= _MAX_NODES:
        print(f"demo: error: --nodes {args.nodes}: use 1 to {_MAX_NODES}", file=sys.stderr)
        return 2
    if not (math.isfinite(args.seconds) and _MIN_SECONDS <= args.seconds <= _MAX_SECONDS):
        print(
            f"demo: error: --seconds {args.seconds:g}: use {_MIN_SECONDS:g} to {_MAX_SECONDS:g}",
            file=sys.stderr,
        )
        return 2

    from collector import localbroker  # noqa: PLC0415 (after the venv is known to work)

    workdir: Path = args.dir
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    db = workdir / "capwatch.db"
    env = {**os.environ, "CAPWATCH_LOG_JSON": "false"}
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    _banner("1. broker")
    broker = localbroker.local_broker(
        workdir / "broker", prefer="embedded" if args.embedded_broker else "mosquitto"
    )
    broker.start()
    print(f"{type(broker).__name__} listening on {broker.host}:{broker.port}")
    common = ["--host", broker.host, "--port", str(broker.port)]

    def spawn(name: str, *argv: str) -> None:
        log = (workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
        procs.append((name, proc))
        print(f"started {name} (pid {proc.pid}), log: {workdir / (name + '.log')}")

    try:
        _banner("2. collector, 3. this machine's agent, 4. simulated fleet")
        spawn("collector", "collector", "run", *common, "--db", str(db), "--log-level", "info")
        time.sleep(1.0)
        node = socket.gethostname().split(".")[0]
        spawn(
            "agent",
            "agent",
            "run",
            *common,
            "--interval",
            "1",
            "--gpu-backend",
            "nvml",
            "--node-id",
            node if node[:1].isalnum() else "demo-host",
        )
        spawn(
            "simulator", "agent", "simulate", *common, "--nodes", str(args.nodes), "--interval", "1"
        )
        time.sleep(min(2.0, args.seconds))
        _banner("5. a hostile node")
        sent = _hostile_node(broker.host, broker.port)
        print(f"published {sent} poisonous samples (garbage, 1e300 B/s, 2^62 bytes, a day ahead)")
        print(f"collecting for {args.seconds:.0f} s ...", flush=True)
        time.sleep(max(0.0, args.seconds - 2.0))
        for name, proc in procs:
            if proc.poll() is not None:
                print(
                    f"{name} exited early with {proc.returncode}; see {workdir / (name + '.log')}"
                )
                return 1

        _banner("6. collector query: the fleet")
        _run_cli("collector", "query", "--db", str(db), "--limit", "12")
        _banner(f"collector query --node {node}: this machine's real samples")
        _run_cli(
            "collector", "query", "--db", str(db), "--node", node, "--since", "1m", "--limit", "5"
        )
        _banner("collector query --gpus --node x1000c0s0b0n0: per-GPU rows")
        _run_cli("collector", "query", "--db", str(db), "--gpus", "--node", "x1000c0s0b0n0")
        _banner("collector query --rejected: what the hostile node sent, quarantined and acked")
        _run_cli("collector", "query", "--db", str(db), "--rejected", "--limit", "8")
        _banner("collector alerts: what the built-in rules made of it (collector rules lists them)")
        _run_cli("collector", "alerts", "--db", str(db))
        plan = ROOT / "deploy" / "plan.example.json"
        if plan.is_file():
            _banner("collector solve: how many GPUs fit under the example plan's cap")
            _run_cli("collector", "solve", "--config", str(plan))
        _banner("7. leases and quotas: collector apply -f cluster.toml, lease list, quota show")
        cluster = workdir / "cluster.toml"
        cluster.write_text(_cluster_toml(args.nodes))
        _run_cli("collector", "apply", "--db", str(db), "-f", str(cluster))
        _run_cli("collector", "lease", "list", "--db", str(db))
        _run_cli("collector", "quota", "show", "--db", str(db))
    finally:
        _banner("shutdown")
        for name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            print(f"{name} stopped ({proc.returncode})")
        broker.stop()
    print(
        f"\nlogs and the database are in {workdir}; try:\n"
        f"  .venv/bin/collector query --db {db} --json | head -40"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
