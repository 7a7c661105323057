"""``collector export --format slurm``: leases as ``scontrol create reservation`` lines, run
against a real slurmctld (tests/slurm.py) and read back with ``scontrol show reservation``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Final

from tests.collector.governance.fleet import cli, make_store
from tests.slurm import NODE_NAME, SlurmCluster

TODAY: Final = dt.datetime.now(dt.UTC).date()


def _day(offset: int) -> dt.date:
    return TODAY + dt.timedelta(days=offset)


def _utc(day: dt.date, tz: str = "UTC") -> str:
    """Midnight of ``day`` in ``tz`` as scontrol shows it under TZ=UTC."""
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    local = dt.datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))
    return local.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


NODE: Final = NODE_NAME
ODD: Final = "beta's lease; rm -rf x"
CLUSTER: Final = f"""\
[tenants.acme]
[tenants.beta]

[leases.acme-now]
tenant = "acme"
nodes = ["{NODE}"]
start = {_day(-5)}
duration_days = 30

[leases.beta-tokyo]
tenant = "beta"
nodes = ["{NODE}"]
start = {_day(40)}
duration_days = 20
tz = "Asia/Tokyo"

[leases.acme-renews]
tenant = "acme"
nodes = ["{NODE}"]
start = {_day(300)}
duration_days = 30
auto_renew = true
notice_days = 7

[leases.acme-old]
tenant = "acme"
nodes = ["{NODE}"]
start = {_day(-100)}
duration_days = 10

[leases."beta's lease; rm -rf x"]
tenant = "beta"
nodes = ["{NODE}"]
start = {_day(200)}
duration_days = 10

[leases.elsewhere]
tenant = "beta"
nodes = ["n9"]
start = {_day(10)}
duration_days = 10
"""


async def _store(tmp_path: Path) -> str:
    db = str(await make_store(tmp_path, {NODE: 8, "n9": 8}))
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    code, _, err = cli("apply", "--db", db, "-f", str(tmp_path / "cluster.toml"))
    assert (code, err) == (0, ""), err
    return db


def _lease_id(db: str, name: str) -> int:
    _, out, _ = cli("lease", "show", name, "--db", db, "--json")
    value: int = json.loads(out)["id"]
    return value


async def test_leases_in_force_or_to_come_one_line_each(tmp_path: Path) -> None:
    """The ended lease is left out and counted; the one in force starts now; a future one at
    its first midnight in its own zone, in UTC; a renewing one to its current term's end;
    an odd name is made safe, every word quoted for the shell."""
    db = await _store(tmp_path)
    code, out, err = cli("export", "--db", db, "--format", "slurm")
    assert (code, err) == (0, "")
    assert out.startswith("#!/bin/sh\n")
    assert "# 1 ended lease(s) left out\n" in out
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    odd = f"beta_s_lease_rm_-rf_x-{_lease_id(db, ODD)}"
    assert lines == [
        "TZ=UTC scontrol create reservation ReservationName=acme-now StartTime=now "
        f"EndTime={_utc(_day(25))} Nodes={NODE} Accounts=acme Flags=IGNORE_JOBS",
        "TZ=UTC scontrol create reservation ReservationName=acme-renews "
        f"StartTime={_utc(_day(300))} EndTime={_utc(_day(330))} Nodes={NODE} Accounts=acme "
        "Flags=IGNORE_JOBS",
        f"TZ=UTC scontrol create reservation ReservationName={odd} "
        f"StartTime={_utc(_day(200))} EndTime={_utc(_day(210))} Nodes={NODE} Accounts=beta "
        "Flags=IGNORE_JOBS",
        "TZ=UTC scontrol create reservation ReservationName=beta-tokyo "
        f"StartTime={_utc(_day(40), 'Asia/Tokyo')} EndTime={_utc(_day(60), 'Asia/Tokyo')} "
        f"Nodes={NODE} Accounts=beta Flags=IGNORE_JOBS",
        "TZ=UTC scontrol create reservation ReservationName=elsewhere "
        f"StartTime={_utc(_day(10))} EndTime={_utc(_day(20))} Nodes=n9 Accounts=beta "
        "Flags=IGNORE_JOBS",
    ]
    assert "# acme-renews: a renewing lease, reserved to the end of its current term" in out
    for line in lines:  # the shell reads each back as the words it was built from
        assert shlex.split(line)[0] == "TZ=UTC"
    code, out, _ = cli("export", "--db", db, "--format", "slurm", "--json")
    rows = json.loads(out)
    assert rows["ended"] == 1
    assert [r["lease"] for r in rows["reservations"]][2] == ODD
    assert [r["command"] for r in rows["reservations"]] == lines


async def test_nodes_slurm_does_not_know_are_left_out_with_a_warning(tmp_path: Path) -> None:
    """--slurm-nodes: the lease of n9 becomes a comment and a warning on stderr."""
    db = await _store(tmp_path)
    known = tmp_path / "nodes.txt"
    known.write_text(f"{NODE}\nother-node\n")
    code, out, err = cli("export", "--db", db, "--format", "slurm", "--slurm-nodes", str(known))
    assert code == 0
    assert "ReservationName=elsewhere" not in out
    assert "# left out: lease 'elsewhere' (id 6): node n9 not in Slurm's node list\n" in out
    assert err == "warning: left out: lease 'elsewhere' (id 6): node n9 not in Slurm's node list\n"
    code, _, err = cli("export", "--db", db, "--format", "slurm", "--slurm-nodes", "/no/file")
    assert code == 2
    assert err.startswith("collector export: error: --slurm-nodes cannot read '/no/file': ")
    big = tmp_path / "huge.txt"  # `--slurm-nodes /dev/zero`: refused, not read without end
    with big.open("wb") as f:
        f.truncate((32 << 20) + 1)  # sparse: costs no disk
    code, _, err = cli("export", "--db", db, "--format", "slurm", "--slurm-nodes", str(big))
    assert (code, err) == (
        2,
        f"collector export: error: --slurm-nodes '{big}' is larger than 32 MiB: split it "
        "into several files\n",
    )


def _reservations(slurm: SlurmCluster) -> dict[str, dict[str, str]]:
    out = slurm.run("scontrol", "show", "reservation", "--oneliner", env={"TZ": "UTC"}).stdout
    found: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if "ReservationName" in fields:
            found[fields["ReservationName"]] = fields
    return found


async def test_the_script_makes_the_reservations_in_slurm(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    """`sh` the export against a real slurmctld: each lease in force or to come is a
    reservation with its node, start, end and the tenant's account (no accounting here:
    AccountingStorageType=none takes any account name); the lease of a node Slurm does not
    know is refused by scontrol and the script goes on."""
    db = await _store(tmp_path)
    script = tmp_path / "reservations.sh"
    code, _, _ = cli("export", "--db", db, "--format", "slurm", "-o", str(script))
    assert code == 0
    odd = f"beta_s_lease_rm_-rf_x-{_lease_id(db, ODD)}"
    names = ["acme-now", "beta-tokyo", "acme-renews", odd]
    before = time.time()
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            ["sh", str(script)],
            check=False,
            env=slurm.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        after = time.time()
        assert "Invalid node name specified" in done.stderr  # n9: the one line refused
        assert not (tmp_path / "x").exists()
        got = _reservations(slurm)
        assert set(names) <= set(got), got
        want = {
            "acme-now": (None, _utc(_day(25)), "acme"),
            "beta-tokyo": (_utc(_day(40), "Asia/Tokyo"), _utc(_day(60), "Asia/Tokyo"), "beta"),
            "acme-renews": (_utc(_day(300)), _utc(_day(330)), "acme"),
            odd: (_utc(_day(200)), _utc(_day(210)), "beta"),
        }
        for name, (start, end, account) in want.items():
            r = got[name]
            assert (r["Nodes"], r["EndTime"], r["Accounts"]) == (NODE, end, account), r
            assert "IGNORE_JOBS" in r["Flags"].split(",")
            if start is not None:
                assert r["StartTime"] == start
            else:  # `now` when the script ran
                started = dt.datetime.fromisoformat(r["StartTime"]).replace(tzinfo=dt.UTC)
                assert before - 1 <= started.timestamp() <= after + 1
        assert got["acme-now"]["State"] == "ACTIVE"
        assert got["beta-tokyo"]["State"] == "INACTIVE"
        assert "elsewhere" not in got
    finally:
        for name in names:
            slurm.run("scontrol", "delete", f"ReservationName={name}", check=False)
    assert not set(names) & set(_reservations(slurm))
