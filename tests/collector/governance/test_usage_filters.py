"""``collector usage --tenant/--lease/--pool``: a name the store never knew is refused (exit
2, one line naming the flag), not answered with an empty bill; a lease by its id, as every
other lease command takes it. On both backends."""

from __future__ import annotations

import json

import pytest

from collector.paths import StoreTarget
from tests.collector.governance.hw_fleet import Spec, cli, make_store

MONTH = ["--month", "2026-11"]


@pytest.fixture
async def leased(store_url: StoreTarget) -> str:
    """Two 4-GPU nodes: pool `a` (made, then deleted after a lease of its node ended) and
    a lease `acme-nov` of 10 days in November 2026."""
    db = str(await make_store(store_url, [Spec("x1000c0s0b0n0"), Spec("x1000c0s1b0n0")]))
    assert cli("pool", "create", "a", "--nodes", "x1000c0s1b0n0", "--db", db)[0] == 0
    code, _, err = cli(
        "lease", "add", "--tenant", "acme", "--nodes", "x1000c0s0b0n0",
        "--start", "2026-11-01", "--duration", "10d", "--name", "acme-nov", "--db", db,
    )  # fmt: skip
    assert code == 0, err
    assert cli("pool", "delete", "a", "--db", db)[0] == 0
    return db


def _rows(db: str, *args: str) -> list[dict[str, object]]:
    code, out, err = cli("usage", "--db", db, "--json", *MONTH, *args)
    assert code == 0, err
    rows: list[dict[str, object]] = json.loads(out)["rows"]
    return rows


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tenant", "acm"], "--tenant 'acm': no such tenant (tenants: acme;"),
        (
            ["--lease", "acme-dec"],
            "--lease 'acme-dec': no such lease, by name or id (leases: acme-nov;",
        ),
        (["--lease", "99"], "--lease '99': no such lease, by name or id (leases: acme-nov;"),
        (["--pool", "b"], "--pool 'b': no such pool (pools: a, free;"),
    ],
)
async def test_a_name_the_store_never_knew_is_one_line_and_exit_2(
    leased: str, args: list[str], needle: str
) -> None:
    """A typo in a tenant's, lease's or pool's name printed 'no leased hours in that
    window' and exit 0: a bill of nothing, for a tenant that had 10 days."""
    code, out, err = cli("usage", "--db", leased, *MONTH, *args)
    assert (code, out) == (2, "")
    assert needle in err
    assert len(err.strip().splitlines()) == 1


async def test_a_long_list_of_known_names_is_cut_as_every_message_cuts_one(leased: str) -> None:
    """Past ten known pools the refusal names the first ten and how many more, in the one
    wording of :func:`shared.cli.first_named` ('a, b and 3 more')."""
    for i in range(10):
        assert cli("pool", "create", f"p{i:02}", "--db", leased)[0] == 0
    code, _, err = cli("usage", "--db", leased, *MONTH, "--pool", "b")
    names = ", ".join(["a", "free", *(f"p{i:02}" for i in range(8))])
    assert (code, err.strip()) == (
        2,
        "collector usage: error: --pool 'b': no such pool "
        f"(pools: {names} and 2 more; `collector pool list`)",
    )


async def test_known_names_answer_even_with_no_hours(leased: str) -> None:
    """The tenant's 10 days by tenant, by lease name and by lease id alike; a deleted
    pool (its node held by no lease) and `free` (where the leased node was) are names the
    store knew: answered, not refused."""
    (acme,) = _rows(leased, "--tenant", "acme")
    assert acme["allocated_gpu_hours"] == pytest.approx(10 * 24 * 4)
    assert _rows(leased, "--lease", "acme-nov") == [acme]
    assert _rows(leased, "--lease", "1") == [acme]
    assert _rows(leased, "--pool", "a") == []
    assert _rows(leased, "--pool", "free") == [acme]
    code, out, _ = cli("usage", "--db", leased, "--month", "2026-10", "--tenant", "acme")
    assert (code, out.splitlines()[0]) == (0, "no leased hours in that window")
