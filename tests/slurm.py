"""A real one-node Slurm cluster for tests: ``munged``, ``slurmctld`` and ``slurmd`` from
Debian's ``munge`` and ``slurm-wlm``, on free loopback ports, every file in a temporary
directory, the configuration written here.

The node is this machine (NodeName ``capwatch-node``, address 127.0.0.1), in partition
``debug``. Processes are tracked with ``proctrack/linuxproc`` and ``task/none``: no cgroup
plugin, so it runs in a container without a writable cgroup tree (jobs are then attributed
from their ``SLURM_*`` environment, not a slurmstepd cgroup).

Use the ``slurm`` fixture (session-scoped, tests/conftest.py); :meth:`SlurmCluster.run`
runs ``scontrol``/``srun``/``sbatch``/``squeue`` against it. A test that changes the node
(drain) calls :meth:`SlurmCluster.resume_node` when done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Self

from collector.localbroker import free_port, stop_process

__all__ = ["NODE_NAME", "PARTITION", "SlurmCluster", "SlurmUnavailableError", "slurm_missing"]

NODE_NAME: Final = "capwatch-node"
PARTITION: Final = "debug"
_BINARIES: Final = ("munged", "slurmctld", "slurmd", "scontrol", "srun", "sbatch", "squeue")


class SlurmUnavailableError(RuntimeError):
    """Slurm's daemons could not be started here; the message says why, with their logs."""


def slurm_missing() -> list[str]:
    """The binaries this fixture needs that are not installed."""
    return [b for b in _BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """``with SlurmCluster(tmp) as slurm:`` starts the three daemons; leaving stops them."""

    def __init__(self, root: Path, *, start_timeout_s: float = 60.0) -> None:
        self.root = root
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket.2"
        self.ctld_port = free_port()
        self.slurmd_port = free_port()
        self._timeout = start_timeout_s
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm's commands: this cluster's configuration."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(
        self,
        *args: str,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command (``scontrol``, ``srun``...) against this cluster."""
        return subprocess.run(
            [_binary(args[0]), *args[1:]],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout_s,
        )

    def node_state(self) -> dict[str, str]:
        """``scontrol show node``'s fields (``State``, ``Reason``, ...)."""
        out = self.run("scontrol", "show", "node", NODE_NAME, "--oneliner").stdout
        fields: dict[str, str] = {}
        for part in out.replace("Reason=", "\nReason=", 1).split("\n"):
            if part.startswith("Reason="):
                fields["Reason"] = part[len("Reason=") :].strip()
                continue
            for item in part.split():
                key, _, value = item.partition("=")
                fields[key] = value
        return fields

    def resume_node(self) -> None:
        """Put the node back in service (after a test drained it)."""
        state = self.node_state().get("State", "")
        if "DRAIN" in state or "DOWN" in state:
            self.run("scontrol", "update", f"nodename={NODE_NAME}", "state=resume")

    # -- lifecycle

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_config(self) -> None:
        for d in ("etc", "munge", "state", "spool", "log", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        cpus = os.cpu_count() or 1
        r = self.root
        self.conf.write_text(
            f"""\
ClusterName=capwatch
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=1
NodeName={NODE_NAME} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        # slurmd reads cgroup.conf when it exists next to slurm.conf; none: no cgroup plugin.

    def _spawn(self, *argv: str) -> None:
        with (self.root / "log" / f"{Path(argv[0]).name}.out").open("ab") as log:
            self._procs.append(
                subprocess.Popen(
                    argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
            )

    def _start(self) -> None:
        self._write_config()
        m = self.root / "munge"
        self._spawn(
            _binary("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
            f"--log-file={self.root / 'log' / 'munged.log'}", f"--seed-file={m / 'munged.seed'}",
        )  # fmt: skip
        self._wait(self.munge_socket.exists, "munged's socket")
        self._spawn(_binary("slurmctld"), "-D", "-f", str(self.conf))
        self._wait(self._ctld_up, "slurmctld answering scontrol ping")
        self._spawn(_binary("slurmd"), "-D", "-f", str(self.conf), "-N", NODE_NAME)
        self._wait(self._node_idle, f"node {NODE_NAME} idle")

    def _ctld_up(self) -> bool:
        done = self.run("scontrol", "ping", check=False, timeout_s=10)
        return "is UP" in done.stdout

    def _node_idle(self) -> bool:
        done = self.run("sinfo", "-h", "-n", NODE_NAME, "-o", "%T", check=False, timeout_s=10)
        return done.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated")

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self._timeout
        while not ready():
            for p in self._procs:
                if p.poll() is not None:
                    name = Path(str(p.args[0] if isinstance(p.args, list) else p.args)).name
                    raise SlurmUnavailableError(
                        f"{name} exited ({p.returncode}) while waiting for {what}:\n{self.logs()}"
                    )
            if time.monotonic() > deadline:
                raise SlurmUnavailableError(f"no {what} in {self._timeout:g} s:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        """The tail of every daemon's log (for a failure message)."""
        out = []
        for f in sorted((self.root / "log").glob("*")):
            text = f.read_text(errors="replace")
            out.append(f"--- {f.name}\n{text[-3000:]}")
        return "\n".join(out)

    def close(self) -> None:
        """Stop the daemons (slurmd, slurmctld, munged: the reverse of their start)."""
        for p in reversed(self._procs):
            if p.poll() is None:
                stop_process(p, timeout_s=15)
        self._procs.clear()
