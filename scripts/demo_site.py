"""``scripts/demo.sh --site``: a site's shape on this machine, no root needed.

1. PostgreSQL (Debian's ``postgresql``) on a free port, its cluster in ``demo-run/postgres``;
   Mosquitto; a webhook receiver on loopback;
2. two ``collector run`` sharing the ingest (``--share-group site``) and the PostgreSQL store;
   they elect a leader through the database (lease 5 s here);
3. the simulated fleet, and a hostile node whose messages raise alerts;
4. the leader is killed with SIGKILL mid-run; the other takes over (its ``/readyz`` turns
   from ``standby`` to ``leader``) and the seconds it took are printed;
5. the usual queries against PostgreSQL: the fleet with the store's totals, alerts, capacity,
   and which collector delivered which notification (each once);
6. the killed collector comes back and stores the backlog its session held (Mosquitto does
   not re-route a dead member's share of a shared subscription).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import demo_common as demo

LEASE_S = 5.0
"""The election's lease in the demo (the default is 10 s): a takeover within seconds."""


def run(args: argparse.Namespace) -> int:
    """The site demo; 2 when PostgreSQL or Mosquitto is missing, 1 if no takeover."""
    from collector.localbroker import MosquittoBroker, find_mosquitto  # noqa: PLC0415
    from collector.localpg import LocalPostgres, find_pg_bin  # noqa: PLC0415

    if find_pg_bin() is None:
        print(
            "demo --site: error: PostgreSQL is not installed: sudo apt-get install -y "
            "postgresql   (then run scripts/demo.sh --site again)",
            file=sys.stderr,
        )
        return 2
    if find_mosquitto() is None:
        print(
            "demo --site: error: Mosquitto is not installed (shared subscriptions need it): "
            "sudo apt-get install -y mosquitto",
            file=sys.stderr,
        )
        return 2
    workdir: Path = args.dir
    demo.fresh_workdir(workdir, "demo --site")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    hooks = demo.Hooks()
    config = workdir / "collector.toml"
    config.write_text(
        "[alerts]\neval_interval_s = 1.0\n"
        f'\n[[receivers]]\nname = "demo"\nurl = "{hooks.url}"\nsecret = "{demo.DEMO_SECRET}"\n'
        '\n[[routes]]\ngroup_wait = "1s"\ngroup_interval = "5s"\n'
        f"\n[election]\nlease_s = {LEASE_S}\n"
    )
    env = {
        **os.environ,
        "CAPWATCH_LOG_JSON": "false",
        "CAPWATCH_CAPACITY__PLAN": str(demo.ROOT / "deploy" / "site.example.toml"),
        "CAPWATCH_CAPACITY__INTERVAL_S": "2",
    }

    def spawn(name: str, *argv: str) -> None:
        log = (workdir / f"{name}.log").open("wb")
        procs[name] = subprocess.Popen(
            [str(demo.BIN / argv[0]), *argv[1:]], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        print(f"started {name} (pid {procs[name].pid}), log: {workdir / (name + '.log')}")

    demo.banner("site 1. PostgreSQL, Mosquitto, a webhook receiver")
    with (
        LocalPostgres(workdir / "postgres") as pg,
        MosquittoBroker(workdir / "broker") as broker,
    ):
        url = pg.url
        print(f"PostgreSQL at {url} (log: {pg.log_path})")
        print(f"Mosquitto on {broker.host}:{broker.port}; webhooks to {hooks.url}")
        common = ["--host", broker.host, "--port", str(broker.port)]
        ports = {"collector-a": demo.free_port(), "collector-b": demo.free_port()}

        def start_member(name: str) -> None:
            """One collector of the share group ``site`` on the PostgreSQL store."""
            spawn(
                name, "collector", "run", "--config", str(config), *common, "--db", url,
                "--share-group", "site", "--instance", name.removeprefix("collector-"),
                "--metrics-listen", f"127.0.0.1:{ports[name]}",
            )  # fmt: skip

        try:
            demo.banner("site 2. two collectors: one share group, one store, an elected leader")
            for name in ports:
                start_member(name)
                time.sleep(1.5)  # a stays the first leader, so the kill below is telling
            demo.banner("site 3. the simulated fleet and a hostile node")
            spawn(
                "simulator",
                "agent",
                "simulate",
                *common,
                "--nodes",
                str(args.nodes),
                "--interval",
                "1",
            )
            time.sleep(3.0)
            sent = demo.hostile_node(broker.host, broker.port)
            print(f"published {sent} poisonous samples (they raise alerts)")
            time.sleep(max(3.0, args.seconds / 2))
            for name, port in ports.items():
                print(f"{name} /readyz: {demo.readyz(port) or '(no answer)'}")
            leader = next((n for n, p in ports.items() if "leader" in demo.readyz(p)), None)
            if leader is None:
                print("no collector leads: see the collector logs")
                return 1
            other = next(n for n in ports if n != leader)
            demo.banner(f"site 4. SIGKILL the leader ({leader}); {other} takes over")
            before = len(hooks.got)
            killed = time.monotonic()
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait()
            took = None
            while time.monotonic() - killed < 4 * LEASE_S:
                if "leader" in demo.readyz(ports[other]):
                    took = time.monotonic() - killed
                    break
                time.sleep(0.1)
            if took is None:
                print(f"{other} did not take over within {4 * LEASE_S:g} s: see its log")
                return 1
            print(f"{other} /readyz: {demo.readyz(ports[other])}, {took:.1f} s after the kill")
            print(f"(a lease of {LEASE_S:g} s: the takeover waits for it to end)")
            time.sleep(max(3.0, args.seconds / 2))
            demo.banner("site 5. the usual queries, against PostgreSQL")
            demo.run_cli("collector", "query", "--db", url, "--limit", "6")
            demo.run_cli("collector", "alerts", "--db", url)
            demo.run_cli("collector", "capacity", "--db", url)
            demo.show_notifications(hooks, None)
            print(
                f"notifications before the kill: {before}, after: {len(hooks.got) - before} "
                "(firing alerts are not notified again by the new leader)"
            )
            demo.banner(f"site 6. {leader} comes back (systemd: Restart=always) with its backlog")
            print(
                f"Mosquitto does not re-route a dead member's share: {leader}'s nodes look "
                "stale until it returns, their samples held in its session (deploy/README.md)"
            )
            start_member(leader)
            time.sleep(4.0)
            for name, port in ports.items():
                print(f"{name} /readyz: {demo.readyz(port) or '(no answer)'}")
            demo.run_cli("collector", "query", "--db", url, "--limit", "4")
        finally:
            demo.banner("shutdown")
            demo.stop_all(reversed(procs.items()))
            hooks.close()
    print(f"\nlogs are in {workdir}; PostgreSQL and Mosquitto were stopped")
    return 0
