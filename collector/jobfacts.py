"""What a job is on a node: its GPUs, utilisation, power and user, from one sample.

One place for the collector's reading of the agents' attribution (``gpus[].processes[].job``
and ``jobs[]``, shared/schema.md): ``collector query --gpus`` and ``--jobs`` and the
``JobGpuIdle`` rule all call :func:`jobs_on` and :func:`job_label`.

A GPU is held by every job with a process on it. A GPU shared by several jobs is split
between them (``gpu_share``): its power and its GPU-hours count once in all, not once per
job. Without MIG, evenly. A GPU in MIG mode is split between its GPU instances by their
compute slices (the ``N`` of an ``Ng.Mgb`` profile: NVIDIA's MIG user guide,
docs.nvidia.com/datacenter/tesla/mig-user-guide/), and each instance evenly between the
jobs with a process in it: a job in a ``3g.40gb`` instance of an H100 cut into
``3g.40gb + 2 x 2g.20gb`` holds 3/7 of it, not 1/3. The instances present divide the whole
GPU (exact for a GPU cut into instances to the last slice, the usual layout; slices left
unused count for the instances that exist). Where a process's instance or an instance's
profile is not known (an agent before those fields), the GPU is split evenly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from collector.nodefacts import gpu_power_w

if TYPE_CHECKING:  # the query command reads stored samples as plain JSON, without msgspec
    from shared.schema import GpuSample, Job, Sample

__all__ = ["JobOnNode", "job_label", "jobs_on", "mig_slices"]

_SLICES: Final = re.compile(r"([1-9][0-9]?)g\.")


def job_label(
    job_id: str,
    *,
    scheduler: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
) -> str:
    """How a person names a job (``jobs[]`` fields): the Slurm job id; ``namespace/pod`` for
    a pod (its UID where the agent could not name it)."""
    if scheduler == "kubernetes" and name is not None:
        return f"{namespace}/{name}" if namespace else name
    return job_id


@dataclass(slots=True)
class JobOnNode:
    """One job's share of one node's latest sample."""

    job: str
    """Slurm job id or pod UID, as the agent sent it."""
    label: str
    """:func:`job_label`."""
    info: Job | None
    users: list[str] = field(default_factory=list)
    """Users of its processes, in order of appearance, each once."""
    gpus: list[int] = field(default_factory=list)
    """Indices of the GPUs it has a process on."""
    gpu_share: float = 0.0
    """GPUs held, a shared GPU counted as 1/n for each of its n jobs."""
    util_pct: list[float] = field(default_factory=list)
    """Utilisation of each of its GPUs that reports one."""
    power_w: float | None = None
    """Its share of its GPUs' power (:func:`collector.nodefacts.gpu_power_w`)."""

    @property
    def user(self) -> str:
        """The first user (usually the only one); ``""`` when none is known."""
        return self.users[0] if self.users else ""

    @property
    def util_mean_pct(self) -> float | None:
        """Mean utilisation of its GPUs; ``None``: none reports one."""
        return sum(self.util_pct) / len(self.util_pct) if self.util_pct else None


def jobs_on(sample: Sample) -> list[JobOnNode]:
    """The jobs with a process on ``sample``'s GPUs, in order of appearance."""
    if not sample.jobs and not any(p.job for g in sample.gpus for p in g.processes):
        return []
    infos: Mapping[str, Job] = {j.id: j for j in sample.jobs}
    out: dict[str, JobOnNode] = {}
    # Users already in each job's list: a set, since one job's processes may name
    # thousands (MAX_GPUS x MAX_PROCESSES_PER_GPU) and a list's `in` made this quadratic.
    seen: dict[str, set[str]] = {}
    for g in sample.gpus:
        on_gpu: dict[str, JobOnNode] = {}
        for p in g.processes:
            if p.job is None:
                continue
            j = out.get(p.job)
            if j is None:
                info = infos.get(p.job)
                label = (
                    p.job
                    if info is None
                    else job_label(
                        p.job, scheduler=info.scheduler, namespace=info.namespace, name=info.name
                    )
                )
                j = out[p.job] = JobOnNode(p.job, label, info)
            on_gpu[p.job] = j
            if p.user is not None:
                users = seen.setdefault(p.job, set())
                if p.user not in users:
                    users.add(p.user)
                    j.users.append(p.user)
        if not on_gpu:
            continue
        shares = _mig_shares(g) or {job: 1.0 / len(on_gpu) for job in on_gpu}
        watts = gpu_power_w(g)
        for job, j in on_gpu.items():
            share = shares.get(job, 0.0)
            j.gpus.append(g.index)
            j.gpu_share += share
            if g.util_pct is not None:
                j.util_pct.append(g.util_pct)
            if watts is not None:
                j.power_w = (j.power_w or 0.0) + watts * share
    return list(out.values())


def mig_slices(profile: str | None) -> int | None:
    """Compute slices of a GPU instance profile (``3g.40gb`` -> 3); ``None``: not known."""
    m = _SLICES.match(profile or "")
    return int(m.group(1)) if m else None


def _mig_shares(g: GpuSample) -> dict[str, float] | None:
    """Each job's share of ``g`` by the compute slices of the GPU instances its processes
    run in (see the module docstring); ``None``: not in MIG mode, or not known enough."""
    if not g.mig:
        return None
    slices: dict[int, int] = {}
    for m in g.mig:
        n = mig_slices(m.profile)
        if n is None:
            return None
        slices[m.gi_id] = n  # compute instances of one GPU instance share its slices
    in_gi: dict[int, set[str]] = {}
    for p in g.processes:
        if p.job is None:
            continue
        if p.gi_id is None or p.gi_id not in slices:
            return None
        in_gi.setdefault(p.gi_id, set()).add(p.job)
    whole = sum(slices.values())
    shares: dict[str, float] = {}
    for gi, jobs in in_gi.items():
        for job in jobs:
            shares[job] = shares.get(job, 0.0) + slices[gi] / whole / len(jobs)
    return shares
