"""Job attribution: GPU processes to Slurm jobs and Kubernetes pods, from recorded /proc
layouts (tests/data/jobs) and from this test's own process."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.bounds import Bounds
from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from agent.jobs import JobAttributor, Owner, PodNames, parse_cgroup, read_owner, to_wire
from agent.node import NodeSampler
from shared.clock import FakeClock
from shared.schema import MAX_JOBS, Job, decode_sample, encode
from tests.agent.helpers import node_sampler, open_backend
from tests.agent.test_host import FakeHost

DATA = Path(__file__).resolve().parents[1] / "data" / "jobs"
PROC = DATA / "proc"
LOGS = DATA / "log"
POD1 = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
POD2 = "11112222-3333-4444-5555-666677778888"
CID1 = "aaaaaaaa" + "0123456789abcdef" * 3 + "bbbbbbbb"


def _started(pid: int) -> float:
    # The recorded stat files start each process at (100000 + pid) clock ticks after boot.
    return psutil.boot_time() + (100000 + pid) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize(
    ("text", "scheduler", "job", "step", "container"),
    [
        ("0::/system.slice/slurmstepd.scope/job_123/step_0/user/task_0\n", "slurm", "123", "0",
         None),
        ("0::/system.slice/node7_slurmstepd.scope/job_9/step_extern/slurm_processes\n", "slurm",
         "9", "extern", None),
        ("4:memory:/slurm/uid_1000/job_123/step_batch/task_0\n", "slurm", "123", "batch", None),
        ("4:freezer:/slurm_node7/uid_1000/job_5/step_interactive\n", "slurm", "5",
         "interactive", None),
        ("4:memory:/slurm/uid_1000/job_77\n", "slurm", "77", None, None),
        (f"3:cpu:/kubepods/pod{POD1}/{CID1}\n", "kubernetes", POD1, None, CID1),
        (f"0::/kubepods/besteffort/pod{POD1}/{CID1}\n", "kubernetes", POD1, None, CID1),
        ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
         f"{POD1.replace('-', '_')}.slice/cri-containerd-{CID1}.scope\n", "kubernetes", POD1,
         None, CID1),
        (f"0::/kubepods.slice/kubepods-pod{POD1.replace('-', '_')}.slice/docker-{CID1}.scope",
         "kubernetes", POD1, None, CID1),
        (f"0::/kubepods/burstable/pod{POD1}\n", "kubernetes", POD1, None, None),
    ],
)  # fmt: skip
def test_cgroup_paths_name_the_job_step_pod_and_container(
    text: str, scheduler: str, job: str, step: str | None, container: str | None
) -> None:
    """slurmstepd's cgroup v1 and v2 layouts and the kubelet's cgroupfs and systemd ones."""
    facts = parse_cgroup(text)
    assert facts is not None
    assert (facts.scheduler, facts.job, facts.step, facts.container_id) == (
        scheduler,
        job,
        step,
        container,
    )


@pytest.mark.parametrize(
    "text",
    [
        "0::/user.slice/user-1000.slice/session-2.scope\n",
        "0::/system.slice/slurmd.service\n",  # slurmd itself, no job
        "0::/\n",
        "",
        "garbage without colons",
    ],
)
def test_cgroup_paths_outside_any_scheduler_name_nothing(text: str) -> None:
    """A login session, slurmd itself, the root cgroup, an empty or broken file."""
    assert parse_cgroup(text) is None


def test_slurm_v2_step_takes_account_and_partition_from_its_environment() -> None:
    """cgroup v2 names job and step; the environment (same job) adds account and partition."""
    assert read_owner(PROC, 1101) == Owner(
        user="root",
        scheduler="slurm",
        job="4242",
        step="0",
        account="physics",
        partition="gpu",
        started=_started(1101),
    )


def test_slurm_cgroup_wins_over_an_environment_naming_another_job() -> None:
    """A user can set SLURM_JOB_ID, not the cgroup: the v1 path's job stands, and the
    environment's account of another job is not believed."""
    owner = read_owner(PROC, 1102)
    assert owner is not None
    assert (owner.job, owner.step, owner.account, owner.partition) == ("777", "batch", None, None)


def test_slurm_without_cgroups_is_read_from_the_environment() -> None:
    """proctrack/linuxproc: SLURM_JOBID/SLURM_STEPID (the old spellings) are all there is;
    a uid without a name is its number."""
    assert read_owner(PROC, 1103) == Owner(
        user="4242000",
        scheduler="slurm",
        job="55",
        step="1",
        account="bio",
        partition="a100",
        started=_started(1103),
    )


def test_kubernetes_container_is_named_from_the_kubelet_container_logs() -> None:
    """cgroupfs driver: the container id in the cgroup finds its log file's name."""
    owner = read_owner(PROC, 1201, PodNames(LOGS))
    assert owner is not None
    assert (owner.scheduler, owner.job, owner.namespace, owner.pod, owner.container) == (
        "kubernetes",
        POD1,
        "ml-team",
        "trainer-7f9c",
        "pytorch",
    )
    assert owner.account is None  # a pod's SLURM_JOB_ID (in its environ) is not read


def test_kubernetes_pod_with_one_container_is_named_from_the_pod_directory() -> None:
    """systemd driver (pod UID with underscores), container id unknown to the logs: the
    pod's own directory names it, and its only container."""
    owner = read_owner(PROC, 1202, PodNames(LOGS))
    assert owner is not None
    assert (owner.job, owner.namespace, owner.pod, owner.container) == (
        POD2,
        "inference",
        "vllm-0",
        "server",
    )


def test_kubernetes_without_the_log_directories_keeps_the_pod_uid() -> None:
    """No names reachable: the pod UID alone."""
    owner = read_owner(PROC, 1201, PodNames(DATA / "absent"))
    assert owner is not None
    assert (owner.job, owner.namespace, owner.pod, owner.container) == (POD1, None, None, None)


def test_a_process_outside_schedulers_has_only_its_user() -> None:
    """No job; a PID that is gone is ``None``."""
    assert read_owner(PROC, 1301) == Owner(user="root", started=_started(1301))
    assert read_owner(PROC, 4_000_000) is None


def test_this_process_is_read_from_the_real_proc() -> None:
    """The real /proc: this test's own user and start time."""
    owner = read_owner(Path("/proc"), os.getpid())
    assert owner is not None
    assert owner.user == pwd.getpwuid(os.getuid()).pw_name
    assert owner.started == psutil.Process().create_time()


@pytest.fixture
def attributor(clock: FakeClock) -> Iterator[JobAttributor]:
    """An attributor on the recorded layout."""
    a = JobAttributor(PROC, Bounds(clock), pod_log_root=LOGS)
    yield a
    a.close()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock."""
    return FakeClock()


def test_lookup_answers_from_its_cache_and_reads_new_pids_in_its_worker(
    attributor: JobAttributor,
) -> None:
    """The first lookup of a PID returns nothing (read in the background), the next one
    its owner; a PID seen again is not read again."""
    assert attributor.lookup({1101, 1201}) == {}
    assert attributor.wait_idle(10.0)
    owners = attributor.lookup({1101, 1201})
    assert owners[1101].job == "4242"
    assert owners[1101].info == Job(
        id="4242", scheduler="slurm", account="physics", partition="gpu", started=_started(1101)
    )
    assert owners[1201].container == "pytorch"
    assert owners[1201].info is not None
    assert (owners[1201].info.namespace, owners[1201].info.name) == ("ml-team", "trainer-7f9c")
    reads = attributor.reads
    attributor.lookup({1101, 1201})
    assert attributor.wait_idle(10.0)
    assert attributor.reads == reads == 2


def test_a_pid_that_left_the_gpus_is_read_afresh_when_it_returns(
    attributor: JobAttributor,
) -> None:
    """A PID not looked up at a tick leaves the cache: a reused PID is not a stale owner."""
    attributor.lookup({1101})
    assert attributor.wait_idle(10.0)
    attributor.lookup({1201})  # 1101 left
    assert attributor.wait_idle(10.0)
    assert attributor.lookup({1101}) == {}
    assert attributor.wait_idle(10.0)
    assert attributor.reads == 3


def test_an_identifier_past_the_schema_is_left_out_not_cut(attributor: JobAttributor) -> None:
    """A 70-digit job id cannot go on the wire: the process keeps its user, not the job."""
    attributor.lookup({1302})
    assert attributor.wait_idle(10.0)
    owner = attributor.lookup({1302})[1302]
    assert (owner.user, owner.job, owner.step, owner.info) == ("root", None, "0", None)


@pytest.mark.parametrize("name", ["ev\x1b[2Jil", "a\nb", "\u202eroot", "a\u200bb", "x" * 65])
def test_a_user_name_the_schema_refuses_is_left_out_not_the_sample(name: str) -> None:
    """A passwd entry with a control character, a bidi override, a zero-width character or
    past 64 characters would make the collector reject the node's whole sample: the process
    goes without its user (logged), and its job stays."""
    wire = to_wire(Owner(user=name, job="4242", step="0"), Bounds(FakeClock()))
    assert (wire.user, wire.job, wire.step) == (None, "4242", "0")
    kept = to_wire(Owner(user="jdoe@EXAMPLE.COM", job="4242"), Bounds(FakeClock()))
    assert kept.user == "jdoe@EXAMPLE.COM"


def _sampler(
    tmp_path: Path, clock: FakeClock, backend: NvmlBackend, jobs: JobAttributor
) -> NodeSampler:
    return node_sampler(FakeHost(tmp_path), clock, backend, jobs=jobs)


def test_samples_carry_each_process_owner_and_the_jobs_once(
    tmp_path: Path,
    clock: FakeClock,
    backends: list[NvmlBackend],
    attributor: JobAttributor,
) -> None:
    """Two GPUs of one Slurm job, one of a pod: the processes name their job, the sample
    lists each job once, and the collector's decoder takes it."""
    nvml = FakeNvml(3, clock=clock)
    nvml.set_processes(0, [(1101, 1 << 30)])
    nvml.set_processes(1, [(1101, 1 << 30), (1301, 1 << 20)])
    nvml.set_processes(2, [(1201, 2 << 30)])
    node = _sampler(tmp_path, clock, open_backend(nvml, clock, backends), attributor)
    node.start()
    first = node.sample()
    assert first.jobs == ()  # read in the background meanwhile
    assert first.gpus[0].processes[0].job is None
    assert attributor.wait_idle(10.0)
    clock.advance(5.0)
    sample = decode_sample(encode(node.sample()))
    p0, p1, p2 = (g.processes for g in sample.gpus)
    assert (p0[0].job, p0[0].step, p0[0].user) == ("4242", "0", "root")
    assert (p1[0].job, p1[1].job, p1[1].user) == ("4242", None, "root")
    assert (p2[0].job, p2[0].container) == (POD1, "pytorch")
    assert p2[0].used_mem_bytes == 2 << 30
    assert [j.id for j in sample.jobs] == ["4242", POD1]
    assert sample.jobs[1].namespace == "ml-team"


def test_a_node_without_gpu_processes_sends_no_jobs(
    tmp_path: Path, clock: FakeClock, backends: list[NvmlBackend], attributor: JobAttributor
) -> None:
    """Idle GPUs: no lookups to make, ``jobs`` empty, and an unattributed process is as
    small on the wire as before (``{"pid":...,"used_mem_bytes":...}``)."""
    nvml = FakeNvml(1, clock=clock, load_pct=0.0)
    node = _sampler(tmp_path, clock, open_backend(nvml, clock, backends), attributor)
    node.start()
    assert node.sample().jobs == ()
    nvml.set_processes(0, [(4_000_000, 5)])  # a PID that does not exist
    node.sample()
    assert attributor.wait_idle(10.0)
    sample = node.sample()
    assert b'"processes":[{"pid":4000000,"used_mem_bytes":5}]' in encode(sample)


def test_jobs_past_the_schema_cap_are_cut(
    tmp_path: Path, clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """More distinct jobs than MAX_JOBS: the first MAX_JOBS are listed (and decode)."""
    root = tmp_path / "proc"
    for i in range(MAX_JOBS + 3):
        d = root / str(2000 + i)
        d.mkdir(parents=True)
        for name in ("stat", "status", "environ"):
            (d / name).write_bytes((PROC / "1101" / name).read_bytes())
        (d / "cgroup").write_text(f"0::/system.slice/slurmstepd.scope/job_{i}/step_0\n")
    nvml = FakeNvml(2, clock=clock)
    nvml.set_processes(0, [(2000 + i, 1) for i in range(200)])
    nvml.set_processes(1, [(2000 + i, 1) for i in range(200, MAX_JOBS + 3)])
    jobs = JobAttributor(root, Bounds(clock))
    try:
        node = _sampler(tmp_path, clock, open_backend(nvml, clock, backends), jobs)
        node.start()
        node.sample()
        assert jobs.wait_idle(30.0)
        sample = decode_sample(encode(node.sample()))
    finally:
        jobs.close()
    assert len(sample.jobs) == MAX_JOBS
    assert sample.gpus[1].processes[-1].job == str(MAX_JOBS + 2)


def test_a_real_child_process_is_attributed_by_its_environment(
    tmp_path: Path, clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """A real process started with SLURM_* in its environment (as srun starts a task under
    proctrack/linuxproc), read from the real /proc."""
    env = {
        "SLURM_JOB_ID": "31337",
        "SLURM_STEP_ID": "2",
        "SLURM_JOB_ACCOUNT": "chem",
        "SLURM_JOB_PARTITION": "h100",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, **env}
    )
    jobs = JobAttributor(Path("/proc"), Bounds(clock))
    try:
        nvml = FakeNvml(1, clock=clock)
        nvml.set_processes(0, [(child.pid, 1 << 30)])
        node = _sampler(tmp_path, clock, open_backend(nvml, clock, backends), jobs)
        node.start()
        node.sample()
        assert jobs.wait_idle(10.0)
        sample = node.sample()
    finally:
        jobs.close()
        child.kill()
        child.wait()
    proc = sample.gpus[0].processes[0]
    assert (proc.pid, proc.job, proc.step) == (child.pid, "31337", "2")
    assert proc.user == pwd.getpwuid(os.getuid()).pw_name
    (job,) = sample.jobs
    assert (job.account, job.partition) == ("chem", "h100")


def test_processes_on_mig_devices_keep_their_instance_when_attributed(
    tmp_path: Path,
    clock: FakeClock,
    backends: list[NvmlBackend],
    attributor: JobAttributor,
) -> None:
    """A Slurm job on one MIG device and a pod on another of the same GPU: each process
    names its job and keeps the GPU instance it runs in."""
    nvml = FakeNvml(1, clock=clock, mig={0: ["3g.40gb", "2g.20gb"]})
    nvml.set_processes(0, [(1101, 1 << 30, 1), (1201, 2 << 30, 3)])
    node = _sampler(tmp_path, clock, open_backend(nvml, clock, backends), attributor)
    node.start()
    node.sample()
    assert attributor.wait_idle(10.0)
    clock.advance(5.0)
    sample = decode_sample(encode(node.sample()))
    (gpu,) = sample.gpus
    assert [(p.pid, p.job, p.gi_id, p.ci_id) for p in gpu.processes] == [
        (1101, "4242", 1, 0),
        (1201, POD1, 3, 0),
    ]
    assert [(m.gi_id, m.profile) for m in gpu.mig] == [(1, "3g.40gb"), (3, "2g.20gb")]
