"""Against a real Slurm (tests/slurm.py): a job's GPU process is attributed to it, and the
exec receiver's shipped action drains the node and resumes it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bounds import Bounds
from agent.fake_nvml import FakeNvml
from agent.jobs import JobAttributor
from collector.settings import ReceiverSettings
from shared.clock import FakeClock
from shared.schema import decode_sample, encode
from tests.agent.helpers import node_sampler
from tests.agent.test_host import FakeHost
from tests.collector.alerts.test_delivery import running
from tests.helpers import wait_until
from tests.slurm import NODE_NAME, PARTITION, SlurmCluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def job(slurm: SlurmCluster, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """An sbatch job whose step 0 (srun) writes its PID and sleeps: (job id, that PID)."""
    pidfile = tmp_path / "step.pid"
    done = slurm.run(
        "sbatch", "--parsable", "--account=physics", f"--output={tmp_path / 'job.out'}",
        f"--wrap=srun sh -c 'echo $$ > {pidfile}; exec sleep 300'",
    )  # fmt: skip
    job_id = done.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, f"job {job_id} never started:\n{slurm.logs()}"
        time.sleep(0.1)
    try:
        yield job_id, int(pidfile.read_text())
    finally:
        slurm.run("scancel", job_id, check=False)


def test_a_slurm_jobs_gpu_process_is_attributed_to_the_job(
    job: tuple[str, int], tmp_path: Path
) -> None:
    """The fake NVML reports the job step's real PID on GPU 2: the agent's sample names the
    job, its step, partition, account and user (slurmd runs proctrack/linuxproc here, so the
    step's environment is what there is to read)."""
    job_id, pid = job
    clock = FakeClock()
    nvml = FakeNvml(4, clock=clock)
    nvml.set_processes(2, [(pid, 3 << 30)])
    fake = FakeHost(tmp_path)
    jobs = JobAttributor(Path("/proc"), Bounds(clock))
    node = node_sampler(fake, clock, nvml, node=NODE_NAME, jobs=jobs)
    try:
        node.start()
        node.sample()
        assert jobs.wait_idle(10.0)
        clock.advance(5.0)
        sample = decode_sample(encode(node.sample()))
    finally:
        node.close()
    (proc,) = sample.gpus[2].processes
    assert (proc.pid, proc.job, proc.step, proc.user) == (pid, job_id, "0", "root")
    (info,) = sample.jobs
    assert (info.id, info.scheduler, info.partition, info.account) == (
        job_id, "slurm", PARTITION, "physics"
    )  # fmt: skip
    assert info.started is not None
    assert abs(info.started - time.time()) < 120


async def test_exec_receiver_drains_the_node_and_resumes_it(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    """deploy/actions/slurm-drain.sh as an exec receiver: an alert on the node drains it
    with capwatch's reason (scontrol show node: DRAIN); resolved, it resumes it."""
    receiver = ReceiverSettings.model_validate(
        {
            "name": "slurm-drain",
            "kind": "exec",
            "command": [str(REPO / "deploy" / "actions" / "slurm-drain.sh")],
            "env": {"SLURM_CONF": str(slurm.conf), "CAPWATCH_RESUME": "1"},
            "timeout_s": 30,
        }
    )
    try:
        async with running(tmp_path, [receiver]) as rig:
            rig.switch.active.add(NODE_NAME)
            rig.step()
            await wait_until(lambda: rig.outbox("state") == [("delivered",)], what="drained")
            state = slurm.node_state()
            assert "DRAIN" in state["State"], state
            assert state["Reason"].startswith(f"capwatch: TestAlert {NODE_NAME} is hot"), state
            rig.switch.active.clear()
            rig.step()
            await wait_until(
                lambda: rig.outbox("state") == [("delivered",), ("delivered",)], what="resumed"
            )
            assert "DRAIN" not in slurm.node_state()["State"]
    finally:
        slurm.resume_node()
