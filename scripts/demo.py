"""The whole system on this machine, no root needed: broker, collector, real agent, fleet.

Run through ``scripts/demo.sh`` (which creates the virtualenv). Steps:

1. a broker on a free loopback port: Mosquitto when installed, else an embedded Python one;
2. ``collector run`` with its database in ``demo-run/``;
3. ``agent run`` for this machine (real CPU/memory/disk/network; real GPUs when NVML finds
   them, else zero GPUs and a log line saying why);
4. ``agent simulate`` for a synthetic fleet of xname nodes with 8 fake GPUs each, and an
   ``agent run`` over the fake NVML with two H100s in MIG mode (node ``demo-mig``);
5. a hostile node: garbage, absurd values, a clock a day ahead; the collector quarantines
   and acknowledges each and goes on storing the fleet;
6. after a few seconds, ``collector query`` five ways (fleet, this machine, per-GPU rows,
   the MIG node's GPUs and MIG devices with NVLink traffic, the quarantined messages),
   ``collector alerts`` (the hostile node's clock skew and rising rejects), ``collector
   solve``, ``collector capacity`` (live draw under the example site's cap, and a what-if)
   and ``collector plot`` (three PNGs);
7. ``collector inventory`` (one node's components, the fleet table) and ``collector pool
   apply`` of a pattern, as a dry run and then for real;
8. leases and quotas: ``collector apply -f cluster.toml`` (two tenants in a cohort: one
   leases the pool of step 7, the other named nodes), ``collector lease list``,
   ``collector quota show`` on both bases and as the cohort tree;
9. the quotas as schedulers read them: ``collector export --format kueue`` (ResourceFlavor,
   Cohort, ClusterQueue manifests) and ``--format slurm`` (reservations);
10. decommissioning this machine's node: ``collector inventory forget`` refused while its
    agent runs (it is online), then the agent stopped and the node forgotten (``--force``:
    its last sample may still be within its staleness window): its rows and retained
    messages go, the running collector stops tracking it; then a clean shutdown.

Alerts leave the collector as they would at a site: signed Alertmanager-format webhooks to
a receiver on loopback (this script; it checks each signature and prints what it got), and,
when Alertmanager is installed (Debian: prometheus-alertmanager), pushed to a real one. The
collector's /readyz and /metrics are shown too.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from demo_common import (
    BIN,
    DEFAULT_WORKDIR,
    DEMO_SECRET,
    ROOT,
    Hooks,
    banner,
    free_port,
    fresh_workdir,
    hostile_node,
    run_cli,
    show_notifications,
    stop_all,
    wait_counted,
    wait_ready,
)

_MAX_NODES = 200_000
"""What ``agent simulate --nodes`` takes."""
_MIN_SECONDS, _MAX_SECONDS = 1.0, 86_400.0
_MIG_NODE = "demo-mig"
_MIG_LAYOUTS = (
    "--fake-mig",
    "0=3g.40gb,2g.20gb,2g.20gb",
    "--fake-mig",
    "1=" + ",".join(["1g.10gb"] * 7),
)
"""The fake agent's GPUs: one as 3g.40gb + 2 x 2g.20gb, one as 7 x 1g.10gb (an H100 80GB)."""


def _pool_nodes(db: Path, pool: str) -> list[str]:
    """The nodes `collector pool apply` put in ``pool`` (read straight from the demo's store)."""
    import sqlite3  # noqa: PLC0415

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT node FROM pool_nodes WHERE pool = ? ORDER BY node", (pool,))
        return [r[0] for r in rows]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _cluster_toml(nodes: int, pooled: list[str]) -> str:
    """Two tenants sharing a cohort from 30 days ago: climate leases the pool ``demo`` (or,
    without one, half the simulated fleet), genomics the other simulated nodes."""
    import datetime as dt  # noqa: PLC0415

    from agent.simulate import xname  # noqa: PLC0415

    start = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=30)).isoformat()
    every = [xname(i) for i in range(nodes)]
    first = pooled or every[: max(1, nodes // 2)]
    rest = [n for n in every if n not in set(first)]
    gpus = 8 * len(first)
    pool = (
        'pool = "demo"'
        if pooled
        else 'pool = "climate-a"\n[pools.climate-a]\nnodes = ['
        + ", ".join(f'"{n}"' for n in first)
        + "]"
    )
    text = f"""\
[cohorts.research]
[tenants.climate]
cohort = "research"
quota.gpus = {{ nominal = {gpus * 3 // 4}, borrowing_limit = {gpus // 2} }}
quota.power_kw = {{ nominal = {len(first) * 6} }}
[tenants.genomics]
cohort = "research"
quota.gpus = {{ nominal = {8 * len(rest) + gpus // 2}, lending_limit = {gpus // 2} }}
[leases.climate-2026]
tenant = "climate"
start = {start}
duration_days = 180
notice_days = 90
{pool}
"""
    if rest:
        text += f"""\
[leases.genomics-2026]
tenant = "genomics"
nodes = [{", ".join(f'"{n}"' for n in rest)}]
start = {start}
duration_days = 365
notice_days = 30
tz = "Asia/Tokyo"
"""
    return text


def _start_alertmanager(workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """A real Alertmanager on a free loopback port, when one is installed."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        print("Alertmanager not installed: no push to it (apt-get install prometheus-alertmanager)")
        return None
    home = workdir / "alertmanager"
    home.mkdir()
    (home / "alertmanager.yml").write_text(
        "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={home / 'alertmanager.yml'}",
            f"--storage.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=(home / "log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    print(f"Alertmanager (pid {proc.pid}) on 127.0.0.1:{port}")
    return proc, f"http://127.0.0.1:{port}"


def _show_metrics(base: str) -> None:
    """/readyz, then the fleet and alert lines of /metrics (the rest is ingest health)."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    for path in ("/readyz", "/metrics"):
        print(f"$ curl {base}{path}", flush=True)
        try:
            with urllib.request.urlopen(base + path, timeout=10) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
        wanted = ("capwatch_fleet_", "capwatch_alerts{", "capwatch_collector_samples_stored")
        lines = text.splitlines()
        if path == "/metrics":
            lines = [line for line in lines if line.startswith(wanted)]
        print("\n".join(lines[:30]), flush=True)


def main() -> int:
    """Run the demo; exit 0 when every part came up and data reached the store."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=32, help="simulated nodes (default 32)")
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="how long to collect (default 8)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="working directory (default demo-run/): a new or empty one, or one a demo made "
        "(the next run clears it)",
    )
    parser.add_argument(
        "--embedded-broker",
        action="store_true",
        help="use the embedded Python broker even if Mosquitto is installed",
    )
    parser.add_argument(
        "--site",
        action="store_true",
        help="a site's shape instead: PostgreSQL, two collectors in a share group with an "
        "elected leader, the leader SIGKILLed mid-run (scripts/demo_site.py)",
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

    if args.site:
        import demo_site  # noqa: PLC0415 (scripts/: beside this file)

        return demo_site.run(args)
    from collector import localbroker  # noqa: PLC0415 (after the venv is known to work)

    workdir: Path = args.dir
    fresh_workdir(workdir)
    db = workdir / "capwatch.db"
    env = {**os.environ, "CAPWATCH_LOG_JSON": "false"}
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    banner("0. alert receivers: a webhook on loopback, and Alertmanager if installed")
    hooks = Hooks()
    print(f"webhook receiver at {hooks.url} (checks X-Capwatch-Signature)")
    am = _start_alertmanager(workdir)
    if am is not None:
        procs.append(("alertmanager", am[0]))
    config = workdir / "collector.toml"
    config.write_text(
        "[alerts]\neval_interval_s = 1.0\n"
        f'\n[[receivers]]\nname = "demo"\nurl = "{hooks.url}"\nsecret = "{DEMO_SECRET}"\n'
        '\n[[routes]]\ngroup_wait = "1s"\ngroup_interval = "5s"\n'
        + ("" if am is None else f'\n[[alertmanagers]]\nname = "site"\nurl = "{am[1]}"\n')
    )

    banner("1. broker")
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
        banner("2. collector, 3. this machine's agent, 4. simulated fleet")
        site = ROOT / "deploy" / "site.example.toml"
        env["CAPWATCH_CAPACITY__PLAN"] = str(site)  # live capacity, every 2 s here
        env["CAPWATCH_CAPACITY__INTERVAL_S"] = "2"
        metrics_port = free_port()
        spawn(
            "collector",
            "collector",
            "run",
            "--config",
            str(config),
            *common,
            "--db",
            str(db),
            "--log-level",
            "info",
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
        )
        # The agents and the hostile node once started on a timer (1 s, then 2 s): on a
        # loaded machine the collector subscribed after the hostile node had published,
        # and the demo showed no rejects, no alerts and no webhooks.
        if not wait_ready(procs[-1][1], metrics_port, timeout_s=120):
            print(f"collector not ready after 120 s; see {workdir / 'collector.log'}")
            return 1
        node = socket.gethostname().split(".")[0]
        node = node if node[:1].isalnum() else "demo-host"
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
            node,
            "--spool-dir",
            str(workdir / "agent-spool"),
        )
        spawn(
            "simulator", "agent", "simulate", *common, "--nodes", str(args.nodes), "--interval", "1"
        )
        spawn(
            "mig-agent", "agent", "run", *common, "--interval", "1", "--node-id", _MIG_NODE,
            "--gpu-backend", "fake", "--fake-gpus", "2", *_MIG_LAYOUTS,
            "--spool-dir", str(workdir / "mig-agent-spool"),
        )  # fmt: skip
        time.sleep(min(2.0, args.seconds))
        banner("5. a hostile node")
        sent = hostile_node(broker.host, broker.port)
        print(f"published {sent} poisonous samples (garbage, 1e300 B/s, 2^62 bytes, a day ahead)")
        print(f"collecting for {args.seconds:.0f} s ...", flush=True)
        time.sleep(max(0.0, args.seconds - 2.0))
        for name, proc in procs:
            if proc.poll() is not None:
                print(
                    f"{name} exited early with {proc.returncode}; see {workdir / (name + '.log')}"
                )
                return 1

        wait_counted(db, "rejected", sent, timeout_s=10.0)
        banner("6. collector query: the fleet")
        run_cli("collector", "query", "--db", str(db), "--limit", "12")
        banner(f"collector query --node {node}: this machine's real samples")
        run_cli(
            "collector", "query", "--db", str(db), "--node", node, "--since", "1m", "--limit", "5"
        )
        banner("collector query --gpus --node x1000c0s0b0n0: per-GPU rows")
        run_cli("collector", "query", "--db", str(db), "--gpus", "--node", "x1000c0s0b0n0")
        banner(f"collector query --gpus --node {_MIG_NODE}: MIG devices, their jobs and UUIDs")
        run_cli("collector", "query", "--db", str(db), "--gpus", "--node", _MIG_NODE)
        banner("collector query --rejected: what the hostile node sent, quarantined and acked")
        run_cli("collector", "query", "--db", str(db), "--rejected", "--limit", "8")
        banner("collector alerts: what the built-in rules made of it (collector rules lists them)")
        run_cli("collector", "alerts", "--db", str(db))
        banner("what the alert receivers got")
        show_notifications(hooks, None if am is None else am[1])
        plan = ROOT / "deploy" / "plan.example.json"
        if plan.is_file():
            banner("collector solve: how many GPUs fit under the example plan's cap")
            run_cli("collector", "solve", "--config", str(plan))
        banner("collector capacity: live draw under the site's cap, and a what-if")
        run_cli("collector", "capacity", "--db", str(db))
        run_cli("collector", "capacity", "--db", str(db), "--add", "32xDGX-H100")
        banner("collector plot: capacity history and the rack/node/GPU treemap")
        for picture in ("usage", "capacity", "hierarchy"):
            png = str(workdir / f"{picture}.png")
            run_cli("collector", "plot", picture, "--db", str(db), "--since", "1m", "--out", png)
        banner("the collector's /readyz and /metrics (Prometheus; deploy/grafana has a dashboard)")
        _show_metrics(f"http://127.0.0.1:{metrics_port}")
        banner("7. inventory and pools: components per node, then a pool sized by a pattern")
        run_cli("collector", "inventory", "--db", str(db), "--node", "x1000c0s0b0n0")
        run_cli("collector", "inventory", "--db", str(db))
        pattern = "demo:h100:20:epyc:6:memory:300"
        run_cli("collector", "pool", "apply", "-p", pattern, "--dry-run", "--db", str(db))
        run_cli("collector", "pool", "apply", "-p", pattern, "--db", str(db))
        run_cli("collector", "pool", "list", "--db", str(db))
        banner("8. leases and quotas: collector apply -f cluster.toml, lease list, quota show")
        cluster = workdir / "cluster.toml"
        cluster.write_text(_cluster_toml(args.nodes, _pool_nodes(db, "demo")))
        run_cli("collector", "apply", "--db", str(db), "-f", str(cluster))
        run_cli("collector", "lease", "list", "--db", str(db))
        run_cli("collector", "quota", "show", "--db", str(db))
        run_cli("collector", "quota", "show", "--tree", "--db", str(db))
        banner("9. quotas schedulers obey: Kueue manifests and Slurm reservations")
        run_cli("collector", "export", "--format", "kueue", "--db", str(db))
        run_cli("collector", "export", "--format", "slurm", "--db", str(db))
        banner(f"10. decommission: collector inventory forget {node}, then stop its agent")
        forget = ["collector", "inventory", "forget", node, "--db", str(db), *common]
        # Refused while its agent runs (online, sampling every second). Once stopped its
        # last sample stays fresh for 3 s, which a loaded machine may or may not outlast
        # before the next command: --force makes the second call's answer certain.
        run_cli(*forget)
        for name, proc in procs:
            if name == "agent":
                stop_all([(name, proc)])  # it says offline as it goes
        run_cli(*forget, "--force")
        time.sleep(2.5)  # the running collector drops it from its view within seconds
        run_cli("collector", "alerts", "--db", str(db))
        run_cli("collector", "inventory", "--db", str(db), "--node", node)
    finally:
        banner("shutdown")
        stop_all(reversed(procs))
        broker.stop()
        hooks.close()
    print(
        f"\nlogs and the database are in {workdir}; try:\n"
        f"  .venv/bin/collector query --db {db} --json | head -40"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: main's finally stopped what it started
        print("demo: interrupted", file=sys.stderr)
        sys.exit(130)
