"""Whose is a GPU process: its Slurm job or Kubernetes pod, and its user.

NVML names the processes on a GPU by PID only. Each PID is attributed from its
``/proc/<pid>`` (the root is a parameter, ``proc_root``, so tests read recorded layouts):

* **cgroup** (``/proc/<pid>/cgroup``), which the process cannot change:

  - Slurm's ``slurmstepd`` puts each step in ``.../job_<id>/step_<step>/...``: under
    ``/system.slice/slurmstepd.scope/`` (or ``<node>_slurmstepd.scope`` with several
    slurmd) on cgroup v2 (``proctrack/cgroup`` + ``cgroup/v2``), under
    ``/slurm/uid_<uid>/`` (or ``/slurm_<node>/``) on v1;
  - the kubelet puts each container in ``kubepods`` and its pod's directory:
    ``/kubepods/burstable/pod<uid>/<container id>`` (cgroupfs driver) or
    ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/
    cri-containerd-<container id>.scope`` (systemd driver; ``docker-``, ``crio-`` alike).

* **environment** (``/proc/<pid>/environ``, readable by root or the process's own user):
  ``SLURM_JOB_ID``, ``SLURM_STEP_ID``, ``SLURM_JOB_ACCOUNT``, ``SLURM_JOB_PARTITION``. The
  cgroup wins: a user can set any environment, not the cgroup path; the environment's
  account and partition are taken only when its job id is the cgroup's. Where slurmd tracks
  processes without cgroups (``proctrack/linuxproc``) the environment is all there is.

* **Kubernetes names** from the kubelet's log directories (``/var/log`` on the node, a
  parameter): ``containers/<pod>_<namespace>_<container>-<container id>.log`` names the
  container a cgroup names by id, ``pods/<namespace>_<pod>_<uid>/`` the pod of a UID. The
  kubelet's pod-resources gRPC API is not used (it would add gRPC to the agent).

* **user** and start time through psutil (``Process.username()``: the uid's name through
  NSS, or the number; ``create_time()``).

Reading ``environ`` takes the target's memory-map lock and a user name may ask a directory
service, so none of this runs on the tick: :class:`JobAttributor` keeps a cache per PID,
:meth:`JobAttributor.lookup` answers from it at once and hands PIDs it does not know to its
own worker thread; they are attributed from the next tick on. A PID that leaves the GPUs
leaves the cache, so a reused PID is read afresh.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import psutil

from agent.bounds import Bounds
from shared.logging import get_logger
from shared.schema import (
    JOB_ID_PATTERN,
    K8S_NAME_PATTERN,
    MAX_TS_S,
    MIN_TS_S,
    USER_PATTERN,
    Job,
)

__all__ = [
    "Attribution",
    "JobAttributor",
    "Owner",
    "PodNames",
    "parse_cgroup",
    "read_owner",
    "to_wire",
]

log = get_logger("agent.jobs")

Scheduler = Literal["slurm", "kubernetes"]


@dataclass(frozen=True, slots=True)
class Owner:
    """What one process belongs to; every field ``None`` where the node cannot tell."""

    user: str | None = None
    scheduler: Scheduler | None = None
    job: str | None = None
    """Slurm job id, or the pod UID."""
    step: str | None = None
    container: str | None = None
    account: str | None = None
    partition: str | None = None
    namespace: str | None = None
    pod: str | None = None
    started: float | None = None
    """The process's start (Unix seconds)."""


@dataclass(frozen=True, slots=True)
class _CgroupFacts:
    scheduler: Scheduler
    job: str
    step: str | None = None
    container_id: str | None = None


_SLURM_RE: Final = re.compile(r"/job_([0-9][0-9_]*)(?:/step_([A-Za-z0-9_.+]+))?")
_POD_RE: Final = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)
_CONTAINER_RE: Final = re.compile(
    r"^(?:cri-containerd-|docker-|crio-|containerd-|cri-o-)?([0-9a-f]{64})(?:\.scope)?$"
)


def parse_cgroup(text: str) -> _CgroupFacts | None:
    """The Slurm job and step, or the pod UID and container id, a ``/proc/<pid>/cgroup``
    names (v1: one line per hierarchy; v2: the ``0::`` line); ``None``: neither."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if "slurm" in path:
            m = _SLURM_RE.search(path)
            if m is not None:
                return _CgroupFacts("slurm", m.group(1), m.group(2))
        if "kubepods" in path:
            m = _POD_RE.search(path)
            if m is not None:
                leaf = path.rstrip("/").rsplit("/", 1)[-1]
                c = _CONTAINER_RE.match(leaf)
                return _CgroupFacts(
                    "kubernetes", m.group(1).replace("_", "-"), None, c and c.group(1)
                )
    return None


_CONTAINER_LOG_RE: Final = re.compile(
    r"^([a-z0-9][a-z0-9.-]*)_([a-z0-9][a-z0-9-]*)_([a-z0-9][a-z0-9-]*)-([0-9a-f]{64})\.log$"
)
_POD_LOG_RE: Final = re.compile(r"^([a-z0-9][a-z0-9-]*)_([a-z0-9][a-z0-9.-]*)_([0-9a-f-]{36})$")


class PodNames:
    """Pod and container names from the kubelet's log directories under ``log_root``.

    Listed again at most every ``rescan_s`` when asked for an id not seen yet (a container
    that started since); read only by the attributor's worker thread.
    """

    def __init__(self, log_root: Path, *, rescan_s: float = 10.0) -> None:
        self._root = log_root
        self._rescan_s = rescan_s
        self._next_scan = float("-inf")
        self._containers: dict[str, tuple[str, str, str]] = {}
        """container id -> (namespace, pod, container)."""
        self._pods: dict[str, tuple[str, str, list[str]]] = {}
        """pod UID -> (namespace, pod, its containers)."""

    def _scan(self) -> None:
        now = time.monotonic()
        if now < self._next_scan:
            return
        self._next_scan = now + self._rescan_s
        containers: dict[str, tuple[str, str, str]] = {}
        pods: dict[str, tuple[str, str, list[str]]] = {}
        try:
            with os.scandir(self._root / "containers") as it:
                for entry in it:
                    m = _CONTAINER_LOG_RE.match(entry.name)
                    if m is not None:
                        containers[m.group(4)] = (m.group(2), m.group(1), m.group(3))
        except OSError:
            pass
        try:
            with os.scandir(self._root / "pods") as it:
                for entry in it:
                    m = _POD_LOG_RE.match(entry.name)
                    if m is not None:
                        try:
                            names = sorted(os.listdir(entry.path))
                        except OSError:
                            names = []
                        pods[m.group(3)] = (m.group(1), m.group(2), names)
        except OSError:
            pass
        self._containers, self._pods = containers, pods

    def lookup(
        self, uid: str, container_id: str | None
    ) -> tuple[str | None, str | None, str | None]:
        """``(namespace, pod, container)`` of a pod UID and container id, ``None`` unknown."""
        for attempt in range(2):
            if container_id is not None and container_id in self._containers:
                return self._containers[container_id]
            pod = self._pods.get(uid)
            if pod is not None and (container_id is None or attempt == 1):
                ns, name, containers = pod
                # Only a pod with one container names it without the container's id.
                return ns, name, containers[0] if len(containers) == 1 else None
            if attempt == 0:
                self._scan()
        return None, None, None


_SLURM_ENV: Final = (
    b"SLURM_JOB_ID",
    b"SLURM_JOBID",
    b"SLURM_STEP_ID",
    b"SLURM_STEPID",
    b"SLURM_JOB_ACCOUNT",
    b"SLURM_JOB_PARTITION",
)


def _slurm_env(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        if item.startswith(b"SLURM_"):
            key, _, value = item.partition(b"=")
            if key in _SLURM_ENV:
                out.setdefault(
                    key.decode().replace("JOBID", "JOB_ID").replace("STEPID", "STEP_ID"),
                    value.decode("utf-8", "replace"),
                )
    return out


_PSUTIL_LOCK: Final = threading.Lock()


def _process(proc_root: Path, pid: int) -> psutil.Process:
    """``psutil.Process(pid)`` reading ``proc_root``: psutil takes its procfs path from the
    module's ``PROCFS_PATH`` when a Process is made and keeps it, so it is set around that."""
    with _PSUTIL_LOCK:
        saved = psutil.PROCFS_PATH
        psutil.PROCFS_PATH = str(proc_root)
        try:
            return psutil.Process(pid)
        finally:
            psutil.PROCFS_PATH = saved


def read_owner(proc_root: Path, pid: int, pods: PodNames | None = None) -> Owner | None:
    """Attribute ``pid`` (blocking reads: call off the tick); ``None`` when it is gone."""
    try:
        proc = _process(proc_root, pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    try:
        with proc.oneshot():
            started: float | None = proc.create_time()
            try:
                user: str | None = proc.username()
            except (KeyError, psutil.AccessDenied):
                user = None
    except psutil.NoSuchProcess:
        return None
    try:
        cgroup = parse_cgroup((proc_root / str(pid) / "cgroup").read_text(errors="replace"))
    except OSError:
        cgroup = None
    env: Mapping[str, str] = {}
    if cgroup is None or cgroup.scheduler == "slurm":
        try:
            env = _slurm_env((proc_root / str(pid) / "environ").read_bytes())
        except OSError:  # another user's process and the agent is not root; or gone
            env = {}
    if cgroup is not None and cgroup.scheduler == "kubernetes":
        ns, pod, container = (
            pods.lookup(cgroup.job, cgroup.container_id) if pods is not None else (None,) * 3
        )
        return Owner(
            user=user,
            scheduler="kubernetes",
            job=cgroup.job,
            container=container,
            namespace=ns,
            pod=pod,
            started=started,
        )
    job = cgroup.job if cgroup is not None else env.get("SLURM_JOB_ID")
    if job is None:
        return Owner(user=user, started=started)
    same = env.get("SLURM_JOB_ID") == job
    step = cgroup.step if cgroup is not None and cgroup.step is not None else None
    if step is None and same:
        step = env.get("SLURM_STEP_ID")
    return Owner(
        user=user,
        scheduler="slurm",
        job=job,
        step=step,
        account=env.get("SLURM_JOB_ACCOUNT") if same else None,
        partition=env.get("SLURM_JOB_PARTITION") if same else None,
        started=started,
    )


_JOB_ID_RE: Final = re.compile(JOB_ID_PATTERN)
_K8S_NAME_RE: Final = re.compile(K8S_NAME_PATTERN)
_USER_RE: Final = re.compile(USER_PATTERN)


@dataclass(frozen=True, slots=True)
class Attribution:
    """An :class:`Owner` inside the wire schema's bounds: the process's fields and its job."""

    user: str | None
    job: str | None
    step: str | None
    container: str | None
    info: Job | None


def to_wire(owner: Owner, bounds: Bounds) -> Attribution:
    """``owner``'s fields as the schema takes them: an identifier that does not fit is left
    out (logged through ``bounds``), never cut (a cut one would name another job)."""
    b = bounds
    job = b.matching(owner.job, "gpus[].processes[].job", _JOB_ID_RE)
    info = None
    if job is not None and owner.scheduler is not None:
        started = owner.started
        info = Job(
            id=job,
            scheduler=owner.scheduler,
            account=b.matching(owner.account, "jobs[].account", _JOB_ID_RE),
            partition=b.matching(owner.partition, "jobs[].partition", _JOB_ID_RE),
            namespace=b.matching(owner.namespace, "jobs[].namespace", _K8S_NAME_RE),
            name=b.matching(owner.pod, "jobs[].name", _K8S_NAME_RE),
            started=(started if started is not None and MIN_TS_S <= started < MAX_TS_S else None),
        )
    return Attribution(
        user=b.matching(owner.user, "gpus[].processes[].user", _USER_RE),
        job=job,
        step=b.matching(owner.step, "gpus[].processes[].step", _JOB_ID_RE),
        container=b.matching(owner.container, "gpus[].processes[].container", _K8S_NAME_RE),
        info=info,
    )


_STOP: Final = -1


class JobAttributor:
    """A per-PID cache of :func:`read_owner`, filled by a worker thread of its own.

    :meth:`lookup` never blocks on ``/proc``: it answers what is known and queues the rest.
    ``refresh_s``: how often a PID still on a GPU is read again (a job's environment is
    fixed, but a reused PID is not always seen leaving between two ticks).
    """

    def __init__(
        self,
        proc_root: Path,
        bounds: Bounds,
        *,
        pod_log_root: Path | None = None,
        refresh_s: float = 300.0,
    ) -> None:
        self._proc_root = proc_root
        self._bounds = bounds
        self._pods = PodNames(pod_log_root) if pod_log_root is not None else None
        self._refresh_s = refresh_s
        self._known: dict[int, tuple[Attribution | None, float]] = {}
        """pid -> (owner, monotonic time read); written only by the worker."""
        self._queued: set[int] = set()
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.reads = 0
        """PIDs read so far (tests, bench)."""

    def lookup(self, pids: Collection[int]) -> dict[int, Attribution]:
        """The owners known of ``pids``; unknown ones are queued for the worker. PIDs not in
        ``pids`` leave the cache (their processes left the GPUs)."""
        known = self._known
        now = time.monotonic()
        out: dict[int, Attribution] = {}
        hits = 0
        for pid in pids:
            hit = known.get(pid)
            if hit is not None:
                hits += 1
                owner, read_at = hit
                if owner is not None:
                    out[pid] = owner
                if now - read_at < self._refresh_s:
                    continue
            if pid not in self._queued:
                self._queued.add(pid)
                self._idle.clear()
                self._queue.put(pid)
        if len(known) > hits:  # some PIDs left the GPUs
            for pid in [p for p in list(known) if p not in pids]:
                known.pop(pid, None)
        if self._queued and self._thread is None:
            self._thread = threading.Thread(target=self._work, name="job-attribution", daemon=True)
            self._thread.start()
        return out

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until the worker has read every queued PID (tests, the bench)."""
        return self._idle.wait(timeout_s)

    def _work(self) -> None:
        while True:
            pid = self._queue.get()
            if pid == _STOP:
                return
            try:
                owner = read_owner(self._proc_root, pid, self._pods)
            except (OSError, ValueError, psutil.Error) as exc:
                # Not expected (read_owner handles a process gone or unreadable), but a worker
                # that died would attribute nothing again.
                log.warning("job_attribution_failed", pid=pid, error=repr(exc)[:200])
                owner = None
            self.reads += 1
            wire = None if owner is None else to_wire(owner, self._bounds)
            self._known[pid] = (wire, time.monotonic())
            self._queued.discard(pid)
            if not self._queued:
                self._idle.set()

    def close(self) -> None:
        """Stop the worker (it finishes the PID it is reading). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout=5.0)
