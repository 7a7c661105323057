"""``collector inventory forget NODE...``: decommission nodes (see :func:`forget`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from collector.cli._render import print_json
from shared.errors import ConfigError

if TYPE_CHECKING:
    from collector.nodefacts import Staleness
    from collector.settings import CollectorSettings
    from collector.store.forget import NodeActivity
    from collector.store.statements import Reads

__all__ = ["DESCRIPTION", "forget"]

DESCRIPTION: Final = """\
  inventory forget NODE...
                         decommission nodes: delete what makes each current in the store
                         (its status and inventory, a declared inventory, its watermark,
                         reject counts, BMC reading), then clear its three retained messages
                         on the broker (status, inventory, watermark: a zero-byte retained
                         publish as mqtt.admin_username; see deploy/mosquitto.acl). Its
                         samples, rollups and usage stay until their retention. A running
                         collector stops tracking it within seconds: its alerts resolve (and
                         are notified resolved), capacity and usage no longer count it. A
                         later message from it makes it a new node. Refused, changing
                         nothing: a node the store does not know, one in a pool or a lease
                         (naming the command that frees it), one online or that sent a
                         sample in the staleness window (--force forgets those anyway)."""
_SHOWN: Final = 3
"""Refusals a refused command names in its one line (then how many more)."""


def forget(settings: CollectorSettings, nodes: Sequence[str], *, force: bool, as_json: bool) -> int:
    """Forget ``nodes`` in one command transaction, then clear their retained messages.

    Exit status: 0 done; 1 forgotten in the store but the broker's retained messages not
    cleared (what to run is printed); :class:`ConfigError` (2, one line, nothing changed)
    when a node is refused.
    """
    import asyncio  # noqa: PLC0415 (not for --help)

    from collector.retained import clear_commands, clear_retained, login, node_topics  # noqa: PLC0415
    from collector.store.command import Command  # noqa: PLC0415
    from collector.store.forget import forget_nodes  # noqa: PLC0415
    from shared.errors import MqttWireError  # noqa: PLC0415

    wanted = list(dict.fromkeys(nodes))
    now = time.time()
    with Command(settings.store_target, now=now) as tx:
        forced = _check(tx, wanted, now, settings.staleness(), force=force)
        forget_nodes(tx, wanted, forced=forced)
    topics = node_topics(wanted)
    who = login(settings.mqtt)
    problem = who if isinstance(who, str) else None
    if not isinstance(who, str):
        try:
            asyncio.run(clear_retained(settings.mqtt, who, topics))
        except MqttWireError as exc:
            problem = str(exc)
    commands = [] if problem is None else clear_commands(settings.mqtt, topics)
    if as_json:
        print_json(
            {
                "forgotten": wanted,
                "forced": sorted(forced),
                "retained_cleared": problem is None,
                "broker_error": problem,
                "clear_commands": commands,
            }
        )
    else:
        print(
            f"forgot {len(wanted)} node{'s' * (len(wanted) != 1)}: {', '.join(wanted)} "
            "(samples, rollups and usage stay until retention)"
        )
        if problem is None:
            print(f"cleared their {len(topics)} retained messages on the broker")
    if problem is not None:
        print(
            "error: their retained status, inventory and watermark are still on the broker "
            f"({problem}); a collector gets them again at its next connection and takes "
            "those nodes back: clear them with",
            file=sys.stderr,
        )
        for line in commands:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _check(
    tx: Reads, nodes: Sequence[str], now: float, staleness: Staleness, *, force: bool
) -> set[str]:
    """The nodes that are forgotten only by ``force`` (online, or sampling); raise
    :class:`ConfigError` naming the refused ones, with what frees each."""
    from collector.store.forget import activity, lease_holds, nodes_held  # noqa: PLC0415
    from collector.store.pools import pool_members  # noqa: PLC0415

    held = nodes_held(tx, nodes)
    pools = pool_members(tx)
    leases = lease_holds(tx, nodes, now)
    facts = activity(tx, nodes)
    refused: list[str] = []
    forced: set[str] = set()
    for node in nodes:
        if node not in held:
            refused.append(f"no node {node!r} in the store (`collector inventory` lists them)")
        elif (pool := pools.get(node)) is not None:
            refused.append(f"node {node} is in pool {pool}: `collector pool remove {pool} {node}`")
        elif (hold := leases.get(node)) is not None:
            until = (
                "renews without notice"
                if hold.end_at is None
                else f"ends {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(hold.end_at))}"
            )
            refused.append(
                f"node {node} is held by lease {hold.lease!r} (tenant {hold.tenant}; it "
                f"{until}): forget it once the lease has ended (`collector lease cancel "
                f"{hold.lease}`)"
            )
        elif (why := _active(facts.get(node), now, staleness)) is not None:
            if force:
                forced.add(node)
            else:
                refused.append(f"node {node} {why} (its next message brings it back), or --force")
    if refused:
        more = len(refused) - _SHOWN
        raise ConfigError(
            "; ".join(refused[:_SHOWN])
            + (f"; and {more} more refused" if more > 0 else "")
            + "; nothing forgotten",
            field="NODE",
        )
    return forced


def _active(facts: NodeActivity | None, now: float, staleness: Staleness) -> str | None:
    """Why a node counts as active (:mod:`collector.nodefacts`: online, or a sample within
    its staleness window), or ``None``."""
    if facts is None:  # no status, inventory or sample: a declared node, a watermark...
        return None
    received = facts.received
    if received is not None and staleness.within(received, facts.interval_s, now):
        return (
            f"sent a sample {max(0.0, now - received):.0f} s ago, within its staleness window "
            f"({staleness.limit_s(facts.interval_s):g} s): stop its agent and wait until it "
            "is stale"
        )
    state = staleness.state(
        now,
        status=facts.status,
        status_ts=facts.status_ts,
        inventory_ts=facts.inventory_ts,
        received=received,
        interval_s=facts.interval_s,
    )
    return "is online: stop its agent first" if state == "online" else None
