"""Alert rules on leases and quotas, read from the :class:`GovernanceView` the job keeps.

Labels: ``tenant`` and ``lease`` on lease rules (``node`` where a node is the subject),
``tenant``, ``resource`` and ``basis`` (``allocated`` or ``measured``) on quota rules: every
quota alert says which basis it judged.

* ``LeaseEndingSoon`` (warning): a lease in force ends within ``lease_end_days``.
* ``LeaseNoticeDeadline`` (warning): the last day to give notice is within
  ``notice_deadline_days`` (today included): after it the lease runs its term, or into the
  next one if it renews.
* ``LeaseExpiredInUse`` (warning): a node of an expired or cancelled-and-ended lease (one
  that ran: not one cancelled before its start), held by no lease in force, runs GPU work
  (a GPU at ``busy_util_pct`` or more) or draws more than ``idle_gpu_w`` per GPU.
* ``LeasedGpusIdle`` (info): a tenant's leased GPUs average under ``idle_util_pct`` for
  ``idle_for_s``: capacity paid for and unused.
* ``QuotaHigh`` (warning, at ``high_pct`` % of nominal or more), ``QuotaFull`` (info: at
  the nominal, or past it and borrowing) and ``QuotaExceeded`` (critical: the tenant's own
  use beyond its nominal plus what it may borrow; never because a neighbour is over), per
  tenant, resource and basis.
* ``CohortOvercommitted`` (critical): a cohort's members hold more than it has (labels
  ``cohort``, ``resource``, ``basis``), naming the members over their own limit.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from collector.alerts.names import GOVERNANCE
from collector.alerts.rule import Instance, Rule, enabled_rules
from collector.governance.lease import effective_end, notice_deadline, today_in
from collector.governance.report import band
from collector.governance.settings import GovernanceSettings
from collector.governance.state import HOLDING

if TYPE_CHECKING:
    from collector.governance.job import GovernanceView
    from collector.live import LiveView

__all__ = ["governance_rules"]


_PER_LEASE: Final = 1 << 30
"""LeaseExpiredInUse's ``max_per_node``: as many as the site's leases (see the rule)."""


def governance_rules(
    view: Callable[[], GovernanceView], settings: GovernanceSettings | None = None
) -> list[Rule]:
    """The governance rules, configured by the ``[governance]`` settings (the defaults when
    ``None``) less those it disables, reading the job's current view through ``view()``
    (called only when a rule is evaluated)."""
    s = settings or GovernanceSettings()
    rules = [
        _lease_ending(view, s),
        _notice_deadline(view, s),
        _expired_in_use(view, s),
        _leased_idle(view, s),
        *_quota_rules(view, s),
    ]
    return enabled_rules(rules, s.disabled, field="governance.disabled")


def _lease_ending(view: Callable[[], GovernanceView], s: GovernanceSettings) -> Rule:
    days = s.lease_end_days

    def condition(_: LiveView, now: float) -> Iterator[Instance]:
        for lease in view().gov.leases:
            if lease.status(now) not in HOLDING:
                continue
            end = effective_end(lease.terms)
            if end is None:
                continue
            left = (end - today_in(lease.terms.tz, now)).days
            if left <= days:
                yield Instance(
                    {"tenant": lease.tenant, "lease": lease.name},
                    {"end": end.isoformat(), "days": str(left), "tz": lease.terms.tz},
                )

    return Rule(
        name=GOVERNANCE.LeaseEndingSoon,
        severity="warning",
        summary="Lease {lease} of {tenant} ends in {days} days",
        description=(
            f"Lease {{lease}} ({{tenant}}) ends on {{end}} ({{tz}}), within {days} days: "
            "renew or extend it (`collector lease renew|extend`), or plan the nodes' return."
        ),
        condition=condition,
    )


def _notice_deadline(view: Callable[[], GovernanceView], s: GovernanceSettings) -> Rule:
    days = s.notice_deadline_days

    def condition(_: LiveView, now: float) -> Iterator[Instance]:
        for lease in view().gov.leases:
            if lease.terms.notice_given is not None or lease.status(now) == "expired":
                continue
            today = today_in(lease.terms.tz, now)
            deadline = notice_deadline(lease.terms, today)
            if deadline is None:
                continue
            left = (deadline - today).days
            if 0 <= left <= days:
                yield Instance(
                    {"tenant": lease.tenant, "lease": lease.name},
                    {
                        "deadline": deadline.isoformat(),
                        "days": str(left),
                        "tz": lease.terms.tz,
                        # the name as a shell word: the hint is pasted into a shell
                        "lease_arg": shlex.quote(lease.name),
                    },
                )

    return Rule(
        name=GOVERNANCE.LeaseNoticeDeadline,
        severity="warning",
        summary="Last day to give notice on lease {lease} of {tenant}: {deadline}",
        description=(
            "Notice on lease {lease} ({tenant}) must be given by {deadline} ({tz}), in "
            "{days} days; after that the lease runs its term (or renews). "
            "`collector lease cancel {lease_arg}` records notice."
        ),
        condition=condition,
    )


def _expired_in_use(view: Callable[[], GovernanceView], s: GovernanceSettings) -> Rule:
    busy_pct = s.busy_util_pct
    idle_w = s.idle_gpu_w

    def condition(live: LiveView, now: float) -> Iterator[Instance]:
        v = view()
        held = set().union(*v.gov.tenant_nodes(now).values()) if v.gov.tenants else set()
        for lease in v.gov.leases:
            if lease.status(now) != "expired":
                continue
            end = lease.end()
            if end is not None and end <= lease.terms.start:
                continue  # cancelled before it began: it never held its nodes
            for node in lease.nodes:
                m = v.measures.get(node)
                if node in held or m is None:
                    continue
                gpu_w = m.gpu_power_w
                working = m.busy_gpus > 0
                drawing = gpu_w is not None and m.gpus > 0 and gpu_w > idle_w * m.gpus
                if working or drawing:
                    yield Instance(
                        {"tenant": lease.tenant, "lease": lease.name, "node": node},
                        {
                            "busy": str(m.busy_gpus),
                            "power_w": "-" if gpu_w is None else f"{gpu_w:.0f}",
                        },
                    )

    return Rule(
        name=GOVERNANCE.LeaseExpiredInUse,
        severity="warning",
        summary="{node} still in use after lease {lease} of {tenant} ended",
        description=(
            "Lease {lease} ({tenant}) has ended, but {node} has {busy} GPUs at or above "
            f"{busy_pct:g} % utilisation and its GPUs draw {{power_w}} W (idle is under "
            f"{idle_w:g} W per GPU): unpaid use, or a job left behind."
        ),
        condition=condition,
        for_s=s.expired_in_use_for_s,
        # An alert per ended lease that held the node: the operator's leases name them, not
        # what a node sends, so the per-node bound (collector.alerts.evaluator) is not for it.
        max_per_node=_PER_LEASE,
    )


def _leased_idle(view: Callable[[], GovernanceView], s: GovernanceSettings) -> Rule:
    limit = s.idle_util_pct

    def condition(_: LiveView, now: float) -> Iterator[Instance]:
        v = view()
        for tenant, nodes in v.gov.tenant_nodes(now).items():
            total = 0.0
            gpus = 0
            for node in nodes:
                m = v.measures.get(node)
                if m is None or m.util_pct is None or m.gpus <= 0:
                    continue
                total += m.util_pct * m.gpus
                gpus += m.gpus
            if gpus and total / gpus < limit:
                yield Instance(
                    {"tenant": tenant}, {"util": f"{total / gpus:.1f}", "gpus": str(gpus)}
                )

    return Rule(
        name=GOVERNANCE.LeasedGpusIdle,
        severity="info",
        summary="{tenant}'s {gpus} leased GPUs average {util} % utilisation",
        description=(
            f"The GPUs leased to {{tenant}} ({{gpus}} reporting) average {{util}} % "
            f"utilisation, under {limit:g} % for {s.idle_for_s / 3600:g} h: capacity paid "
            "for and unused (measured basis)."
        ),
        condition=condition,
        for_s=s.idle_for_s,
    )


def _quota_rules(view: Callable[[], GovernanceView], s: GovernanceSettings) -> list[Rule]:
    def in_band(wanted: str) -> Callable[[LiveView, float], Iterator[Instance]]:
        def condition(_: LiveView, now: float) -> Iterator[Instance]:
            for q in view().standings:
                if band(q, high_pct=s.high_pct) != wanted:
                    continue
                pct = q.pct
                borrowed = q.in_use - q.nominal
                yield Instance(
                    {"tenant": q.tenant, "resource": q.resource, "basis": q.basis},
                    {
                        "in_use": f"{q.in_use:.4g}",
                        "nominal": f"{q.nominal:.4g}",
                        "pct": "-" if pct is None else f"{pct:.0f}",
                        "available": f"{q.available:.4g}",
                        "limit": f"{q.limit:.4g}",
                        "cohort": q.cohort or "-",
                        "standing": (
                            f"past its {q.resource} quota ({q.basis}): borrowing {borrowed:.4g}"
                            if borrowed > 1e-9
                            else f"at its {q.resource} quota ({q.basis})"
                        ),
                    },
                )

        return condition

    common = "{tenant} uses {in_use} {resource} ({basis} basis) of a nominal {nominal}"
    return [
        Rule(
            name=GOVERNANCE.QuotaHigh,
            severity="warning",
            summary="{tenant} at {pct} % of its {resource} quota ({basis})",
            description=f"{common}: {{pct}} %, at or above {s.high_pct:g} %.",
            condition=in_band("high"),
            for_s=s.quota_for_s,
        ),
        Rule(
            name=GOVERNANCE.QuotaFull,
            severity="info",
            summary="{tenant} {standing}",
            description=(
                f"{common}: beyond its nominal it borrows from cohort {{cohort}}'s unused "
                "quota ({available} more available)."
            ),
            condition=in_band("full"),
            for_s=s.quota_for_s,
        ),
        Rule(
            name=GOVERNANCE.QuotaExceeded,
            severity="critical",
            summary="{tenant} beyond what it may borrow of {resource} ({basis})",
            description=(
                f"{common}: more than the {{limit}} it may hold (its nominal plus what its "
                "borrowing limit and cohort {cohort} let it borrow now). Lower its use, or "
                "raise quotas (`collector quota set`)."
            ),
            condition=in_band("exceeded"),
            for_s=s.quota_for_s,
        ),
        _cohort_overcommitted(view, s),
    ]


def _cohort_overcommitted(view: Callable[[], GovernanceView], s: GovernanceSettings) -> Rule:
    def condition(_: LiveView, now: float) -> Iterator[Instance]:
        for c in view().cohorts:
            yield Instance(
                {"cohort": c.cohort, "resource": c.resource, "basis": c.basis},
                {
                    "in_use": f"{c.in_use:.4g}",
                    "quota": f"{c.quota:.4g}",
                    "over": ", ".join(c.over) or "-",
                },
            )

    return Rule(
        name=GOVERNANCE.CohortOvercommitted,
        severity="critical",
        summary="Cohort {cohort} holds {in_use} {resource} of {quota} ({basis})",
        description=(
            "The members of cohort {cohort} hold {in_use} {resource} ({basis} basis) beyond "
            "their local quotas, more than the cohort's {quota}: its idle members have "
            "nothing left to take. Over their own nominal plus what they may borrow: {over}."
        ),
        condition=condition,
        for_s=s.quota_for_s,
    )
