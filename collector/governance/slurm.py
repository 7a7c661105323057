"""Leases as Slurm reservations: one ``scontrol create reservation`` per lease.

Pure: the governance state and an instant in, shell lines out. Slurm's reservation is the
nearest thing it has to a lease (nodes, a start, an end, the accounts that may use them),
and a reservation cannot start in the past, so:

* a lease **in force** at ``now`` starts ``now`` (when the script runs); a **future** lease
  at its first day's midnight in its own time zone; an **ended** one is left out;
* it ends at its effective end (scheduled end, or earlier by notice); a renewing lease
  without notice has no end, and Slurm would cap an unlimited reservation at a year, so it
  is reserved to the end of its current term: export again when it renews;
* ``Accounts=<tenant>``: jobs charged to the tenant's account may use the nodes. Without
  accounting (``AccountingStorageType=accounting_storage/none``) Slurm takes any name; with
  slurmdbd the account must exist (``sacctmgr add account <tenant>``);
* ``Flags=IGNORE_JOBS``: jobs already on the nodes (the tenant's, or someone's finishing)
  do not stop the reservation being made, as capwatch's lease is already in force;
* times are written in UTC, each line run with ``TZ=UTC`` (scontrol reads times in its own
  time zone), so the instants are exact whatever the host's zone.

Reservation names: a lease name of letters, digits, ``.``, ``_`` and ``-`` is used as it
is; another (spaces, quotes, other scripts) has those replaced by ``_`` and ``-<lease id>``
appended. Every word is quoted for the shell (:func:`shlex.quote`).
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final

from collector.governance.lease import effective_end, instant, term_end, today_in
from collector.governance.state import HOLDING, Governance, Lease

__all__ = ["Reservation", "SlurmExport", "reservation_name", "slurm_reservations"]

FLAGS: Final = "IGNORE_JOBS"
_SAFE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def reservation_name(lease: Lease) -> str:
    """The reservation's name for ``lease`` (module docstring)."""
    if _SAFE.match(lease.name):
        return lease.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", lease.name).strip("._-") or "lease"
    return f"{slug}-{lease.id}"


def _slurm_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True, slots=True)
class Reservation:
    """One lease as a Slurm reservation."""

    name: str
    lease: str
    lease_id: int
    tenant: str
    nodes: tuple[str, ...]
    start: float | None
    """``None``: the lease is in force, the reservation starts when the command runs."""
    end: float
    renews: bool = False
    """A renewing lease reserved to the end of its current term."""

    @property
    def start_text(self) -> str:
        """``now`` or the UTC time as scontrol reads it under ``TZ=UTC``."""
        return "now" if self.start is None else _slurm_time(self.start)

    @property
    def end_text(self) -> str:
        """The end as scontrol reads it under ``TZ=UTC``."""
        return _slurm_time(self.end)

    def command(self) -> str:
        """The shell line that creates it."""
        words = [
            "scontrol",
            "create",
            "reservation",
            f"ReservationName={self.name}",
            f"StartTime={self.start_text}",
            f"EndTime={self.end_text}",
            f"Nodes={','.join(self.nodes)}",
            f"Accounts={self.tenant}",
            f"Flags={FLAGS}",
        ]
        return "TZ=UTC " + " ".join(shlex.quote(w) for w in words)


@dataclass(slots=True)
class SlurmExport:
    """The reservations, the leases left out and why, and how many had ended."""

    reservations: list[Reservation] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ended: int = 0


def slurm_reservations(
    gov: Governance, now: float, *, slurm_nodes: Collection[str] | None = None
) -> SlurmExport:
    """A reservation per lease in force at ``now`` or later, in lease id order.

    ``slurm_nodes``: the node names Slurm knows (``sinfo -N -h -o %N``); a lease naming
    another is left out (listed in ``skipped``) instead of making scontrol refuse it.
    """
    out = SlurmExport()
    known = None if slurm_nodes is None else set(slurm_nodes)
    for lease in sorted(gov.leases, key=lambda x: x.id):
        state = lease.status(now)
        if state not in HOLDING and state != "pending":
            out.ended += 1
            continue
        if not lease.nodes:
            out.skipped.append(f"lease {lease.name!r} (id {lease.id}) holds no nodes")
            continue
        unknown = sorted(set(lease.nodes) - known) if known is not None else []
        if unknown:
            more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
            out.skipped.append(
                f"lease {lease.name!r} (id {lease.id}): node {unknown[0]}{more} not in "
                "Slurm's node list"
            )
            continue
        terms = lease.terms
        end = effective_end(terms)
        renews = end is None
        if end is None:
            end = term_end(terms, today_in(terms.tz, now))
        out.reservations.append(
            Reservation(
                name=reservation_name(lease),
                lease=lease.name,
                lease_id=lease.id,
                tenant=lease.tenant,
                nodes=tuple(sorted(lease.nodes)),
                start=None if state in HOLDING else instant(terms.start, terms.tz),
                end=instant(end, terms.tz),
                renews=renews,
            )
        )
    return out
