"""``collector inventory forget NODE...``: decommission nodes (see :func:`forget`)."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from collector.cli._render import print_json
from shared.cli import first_named
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
                         later message from it makes it a new node: one stamped after the
                         forget (by more than max_clock_skew_s; what the broker queued for
                         a stopped collector is dropped). Refused, changing nothing: a node
                         the store does not know, one in a pool or a lease (naming the
                         command that frees it), one online or that sent a sample in the
                         staleness window (--force forgets those anyway); with
                         mqtt.username and no mqtt.admin_username, any (--store-only
                         forgets in the store and prints the commands that clear the
                         retained messages). A node whose BMC redfish.bmcs lists: a
                         warning to remove its entry."""
_SHOWN: Final = 3
"""Refusals a refused command names in its one line (then how many more)."""


def forget(
    settings: CollectorSettings,
    nodes: Sequence[str],
    *,
    force: bool,
    as_json: bool,
    store_only: bool = False,
) -> int:
    """Forget ``nodes`` in one command transaction, then clear their retained messages
    (``store_only``: left to the operator, the commands printed).

    Exit status: 0 done; 1 forgotten in the store but the broker's retained messages not
    cleared (what to run is printed); :class:`ConfigError` (2, one line, nothing changed)
    when a node is refused, or when no login may clear them (``mqtt.admin_username``).
    """
    import asyncio  # noqa: PLC0415 (not for --help)

    from collector.retained import clear_commands, clear_retained, login, node_topics  # noqa: PLC0415
    from collector.store.command import Command  # noqa: PLC0415
    from collector.store.forget import forget_nodes  # noqa: PLC0415
    from shared.errors import MqttWireError  # noqa: PLC0415

    who = None if store_only else login(settings.mqtt)
    if isinstance(who, str):
        raise ConfigError(
            f"{who}; or --store-only to forget in the store only and clear them by hand; "
            "nothing forgotten",
            field="mqtt.admin_username",
        )
    wanted = list(dict.fromkeys(nodes))
    now = time.time()
    with Command(settings.store_target, now=now) as tx:
        forced = _check(tx, wanted, now, settings.staleness(), force=force)
        forget_nodes(tx, wanted, forced=forced)
    topics = node_topics(wanted)
    problem = None
    if who is not None:
        try:
            asyncio.run(clear_retained(settings.mqtt, who, topics))
        except MqttWireError as exc:
            problem = str(exc)
    commands = [] if who is not None and problem is None else clear_commands(settings.mqtt, topics)
    polled = _polled(settings, wanted)
    if as_json:
        print_json(
            {
                "forgotten": wanted,
                "forced": sorted(forced),
                "retained_cleared": who is not None and problem is None,
                "broker_error": problem,
                "clear_commands": commands,
                "still_polled": polled,
            }
        )
    else:
        print(
            f"forgot {len(wanted)} node{'s' * (len(wanted) != 1)}: {', '.join(wanted)} "
            "(samples, rollups and usage stay until retention)"
        )
        if who is None:
            print(
                f"left their {len(topics)} retained messages on the broker (--store-only): "
                "clear them with"
            )
            for line in commands:
                print(f"  {line}")
        elif problem is None:
            print(f"cleared their {len(topics)} retained messages on the broker")
    if polled:
        print(
            f"warning: {_listed(polled)} still listed in redfish.bmcs: remove "
            f"{'its entry' if len(polled) == 1 else 'their entries'} ([[redfish.bmcs]] node = "
            "...) from the collector's settings; until then a running collector ignores "
            "those readings while the node stays forgotten",
            file=sys.stderr,
        )
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


def _polled(settings: CollectorSettings, nodes: Sequence[str]) -> list[str]:
    """Those of ``nodes`` whose BMC the collector's settings list (``redfish.bmcs``)."""
    listed = {bmc.node for bmc in settings.redfish.bmcs}
    return [node for node in nodes if node in listed]


def _listed(nodes: Sequence[str]) -> str:
    """``node x's BMC is`` / ``nodes x, y: their BMCs are``, at most :data:`_SHOWN` named."""
    named = first_named(nodes, _SHOWN)
    return f"node {named}'s BMC is" if len(nodes) == 1 else f"nodes {named}: their BMCs are"


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
                f"{shlex.quote(hold.lease)}`)"
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
