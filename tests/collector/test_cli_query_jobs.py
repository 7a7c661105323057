"""``collector query --jobs`` and the JOB column of ``--gpus``: jobs from a real store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.cli import main
from collector.ingest.validate import sample_row
from collector.paths import StoreTarget
from collector.store.db import NodeUpdate, Store
from shared.schema import Sample, encode
from tests.helpers import collector_json
from tests.shared.wire_samples import sample_dict

A, B, GONE = "gpu-a", "gpu-b", "gpu-gone"
POD = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def _sample(node: str, ts: float, **changes: Any) -> Sample:
    d = sample_dict()
    d.update(node=node, ts=ts, xids=[], **changes)
    return msgspec.convert(d, Sample)


@pytest.fixture
async def db(tmp_path: Path) -> tuple[Path, float]:
    """Node A: the realistic sample (Slurm job 4242 on GPUs 0-5 for an hour, a pod on 6-7
    for a minute). Node B: job 4242 on GPU 0, GPU 1 shared by 4242 and job 5 (for two
    hours). A node gone offline with job 99 on it."""
    path = tmp_path / "capwatch.db"
    now = time.time()
    a_jobs = sample_dict()["jobs"]
    a_jobs[0]["started"], a_jobs[1]["started"] = now - 3601, now - 61
    a = _sample(A, now - 1, jobs=a_jobs)
    d = sample_dict()
    gpus = d["gpus"][:2]
    gpus[0]["processes"] = [{"pid": 7, "user": "alice", "job": "4242", "step": "1"}]
    gpus[1]["processes"] = [
        {"pid": 8, "user": "alice", "job": "4242", "step": "1"},
        {"pid": 9, "user": "bob", "job": "5"},
    ]
    jobs = [
        {"id": "4242", "scheduler": "slurm", "account": "physics", "started": now - 7201},
        {"id": "5", "scheduler": "slurm", "started": now - 3601},
    ]
    b = _sample(B, now - 1, gpus=gpus, jobs=jobs)
    gone = _sample(GONE, now - 1, jobs=[{"id": "99", "scheduler": "slurm"}])
    gone = msgspec.structs.replace(
        gone,
        gpus=tuple(
            msgspec.structs.replace(
                g, processes=(msgspec.structs.replace(g.processes[0], job="99"),)
            )
            for g in gone.gpus
        ),
    )
    # Each node's samples reach back before its jobs' claims: the store can know them.
    early = [_idle(node, now - 7300) for node in (A, B)]
    async with Store(path) as store:
        await store.write_batch(
            [sample_row(s, encode(s), now) for s in (*early, a, b, gone)],
            [NodeUpdate(GONE, status="offline", status_ts=now)],
            [A, B, GONE],
        )
    return path, a.ts


def _idle(node: str, ts: float) -> Sample:
    """A sample of ``node`` at ``ts`` with no process on its GPUs."""
    d = sample_dict()
    d["jobs"] = []
    for g in d["gpus"]:
        g["processes"] = []
    return _sample(node, ts, **{k: d[k] for k in ("jobs", "gpus")})


def _json(db: StoreTarget, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = collector_json("query", "--db", str(db), *args)
    return result


def test_jobs_lists_running_jobs_with_gpus_utilisation_power_and_gpu_hours(
    db: tuple[Path, float],
) -> None:
    """Job 4242 spans both nodes (5.6 + 1.5 GPUs: A's GPU 0 is in MIG mode, cut into
    3g.40gb + 2g.20gb, and the job runs in the 3g instance: 3/5 of it; GPU 1 of B is shared
    with job 5); the offline node's job is not running; GPU-hours are GPUs held x time since
    the job started (:func:`collector.store.queries.job_rows`)."""
    path, ts = db
    jobs = {j["job"]: j for j in _json(path, "--jobs")["jobs"]}
    assert list(jobs) == ["4242", POD, "5"]  # most GPUs first
    j = jobs["4242"]
    assert (j["label"], j["user"], j["account"], j["partition"]) == (
        "4242",
        "alice",
        "physics",
        "gpu",
    )
    assert j["nodes"] == [A, B]
    assert j["gpus"] == 7.1
    # the realistic GPU g runs at 83 + g %: A's GPUs 0-5 and B's 0-1
    utils = [83.0 + g for g in range(6)] + [83.0, 84.0]
    assert j["gpu_util_mean_pct"] == round(sum(utils) / len(utils), 2)
    assert j["power_w"] == round(5.6 * 531.75 + 1.5 * 531.75, 1)
    assert j["started"] == pytest.approx(ts + 1 - 3601)  # of two claims, the later: A's
    # A: 5.6 GPUs for the hour before its sample; B: 1.5 GPUs since the job's start, not the
    # earlier start it claims
    assert j["gpu_hours"] == pytest.approx(5.6 * 1.0 + 1.5 * 1.0, abs=1e-3)
    assert jobs[POD]["gpu_hours"] == pytest.approx(2 * 60 / 3600, abs=1e-3)
    pod = jobs[POD]
    assert (pod["label"], pod["namespace"], pod["pod"], pod["gpus"]) == (
        "ml-team/trainer-7f9c", "ml-team", "trainer-7f9c", 2.0
    )  # fmt: skip
    assert (jobs["5"]["user"], jobs["5"]["gpus"], jobs["5"]["gpu_hours"]) == ("bob", 0.5, 0.5)


def test_jobs_are_bounded_by_limit_most_gpus_first(
    db: tuple[Path, float], capsys: pytest.CaptureFixture[str]
) -> None:
    """--limit bounds --jobs as it bounds the nodes: one hostile node naming thousands of
    jobs printed them all."""
    path, _ = db
    assert [j["job"] for j in _json(path, "--jobs", "--limit", "2")["jobs"]] == [
        "4242",
        POD,
    ]
    assert main(["query", "--db", str(path), "--jobs", "--limit", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # the header and one job


def test_jobs_table_and_gpus_job_column(
    db: tuple[Path, float], capsys: pytest.CaptureFixture[str]
) -> None:
    """The table names each job once; --gpus shows each GPU's jobs (both, when shared)."""
    path, _ = db
    assert main(["query", "--db", str(path), "--jobs"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["JOB", "USER"]
    assert [line.split()[0] for line in lines] == ["4242", "ml-team/trainer-7f9c", "5"]
    assert "gpu-a,gpu-b" in lines[0]
    gpus = _json(path, "--gpus", "--node", B)["gpus"]
    assert [g["jobs"] for g in gpus] == [["4242"], ["4242", "5"]]
    assert main(["query", "--db", str(path), "--gpus", "--node", A]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-3:] == ["JOB", "MIG", "UUID"]  # GPU 0 is in MIG mode
    gpu_lines = [line for line in out[1:] if line.startswith(A)]  # not GPU 0's MIG devices
    assert [line.split()[-2] for line in gpu_lines] == ["4242"] * 6 + ["ml-team/trainer-7f9c"] * 2


async def test_jobs_without_attribution_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Samples from agents that attribute nothing: one line; an empty list in JSON."""
    path = tmp_path / "plain.db"
    d = sample_dict()
    d["jobs"] = []
    for g in d["gpus"]:
        g["processes"] = [{"pid": 1}]
    s = msgspec.convert({**d, "ts": time.time(), "xids": []}, Sample)
    async with Store(path) as store:
        await store.write_batch([sample_row(s, encode(s), time.time())], [], [s.node])
    capsys.readouterr()
    assert main(["query", "--db", str(path), "--jobs"]) == 0
    assert capsys.readouterr().out.startswith("no running jobs seen")
    assert _json(path, "--jobs") == {"jobs": []}


async def test_a_node_naming_another_nodes_job_cannot_replace_its_user_or_account(
    tmp_path: Path,
) -> None:
    """Each node names the jobs on its GPUs, any id: one sorting before the job's real node
    ("aaa-hostile") once gave job 4242 its own user and account ("mallory", "evil"), the
    first node's word standing for the job's. Where nodes differ, every value shows; where
    one does not know a field (B gives no partition), another's fills it."""
    path = tmp_path / "capwatch.db"
    now = time.time()
    claims = {"aaa-hostile": ("mallory", "evil", None), B: ("alice", "physics", "gpu")}
    samples = []
    for node, (user, account, partition) in claims.items():
        d = sample_dict()
        gpus = d["gpus"][:1]
        gpus[0]["processes"] = [{"pid": 7, "user": user, "job": "4242"}]
        job = {"id": "4242", "scheduler": "slurm", "account": account, "started": now - 3600}
        samples.append(_sample(node, now - 1, gpus=gpus, jobs=[{**job, "partition": partition}]))
    async with Store(path) as store:
        await store.write_batch([sample_row(s, encode(s), now) for s in samples], [], list(claims))
    (job,) = _json(path, "--jobs")["jobs"]
    assert job["nodes"] == ["aaa-hostile", B]
    assert (job["user"], job["account"], job["partition"]) == (
        "mallory, alice",
        "evil, physics",
        "gpu",
    )


async def test_a_node_claiming_an_old_start_for_another_nodes_job_cannot_age_it(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each node says when the job's processes on its GPUs started: a node naming job 4242
    with ``started`` = 2000-01-01 once made its AGE 26 years and its GPU-hours 472,195 (the
    earliest claim stood for the job's). The job's start is the median of its nodes' claims
    (for two, the later), each node counting its GPU-hours from its own claim but not before
    the job's start; a claim after the claiming sample was taken is no claim."""
    now = time.time()
    y2000 = 946_684_800.0
    claims = {"aaa-hostile": y2000, B: now - 3600, "zzz-future": now + 86_400}
    samples = []
    for node, started in claims.items():
        d = sample_dict()
        gpus = d["gpus"][:2]
        for g in gpus:
            g["processes"] = [{"pid": 7, "user": "alice", "job": "4242"}]
        job = {"id": "4242", "scheduler": "slurm", "started": started}
        samples += [_idle(node, now - 7200), _sample(node, now, gpus=gpus, jobs=[job])]
    async with Store(store_url) as store:
        await store.write_batch([sample_row(s, encode(s), now) for s in samples], [], list(claims))
    (job,) = _json(store_url, "--jobs")["jobs"]
    assert job["nodes"] == ["aaa-hostile", B, "zzz-future"]
    assert job["started"] == pytest.approx(now - 3600)  # B's: the hostile claim is outvoted
    # the hostile node's 2 GPUs and B's 2 count from the job's start; the future claim, none
    assert job["gpu_hours"] == pytest.approx(4 * 1.0, abs=1e-3)
    capsys.readouterr()
    assert main(["query", "--db", str(store_url), "--jobs"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.split()[-2:] == ["AGE", "GPU-H"]
    assert line.split()[-2:] == ["1h00m", "4.00"]


async def test_gpu_hours_before_the_stores_first_sample_of_a_node_are_not_counted(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every node of a job may claim a bogus start (``started`` = 2000-01-01, the earliest
    the schema takes: the agent's clock or a bug): the median is then bogus too, and
    GPU-hours showed 2 GPUs x 26 years. A node's
    count starts no earlier than its first stored sample (what the store can know): where
    that sample shows the job, from it, the figure marked as a lower bound (``>=``); where it
    does not, the job started later and the store cannot say when: unknown (``-``)."""
    now = time.time()
    samples = []
    for node, job_id, there_before in (("c-fresh", "77", False), ("d-old", "78", True)):
        d = sample_dict()
        gpus = d["gpus"][:2]
        for g in gpus:
            g["processes"] = [{"pid": 7, "user": "alice", "job": job_id}]
        job = {"id": job_id, "scheduler": "slurm", "started": 946_684_800.0}
        first = _sample(node, now - 600, gpus=gpus, jobs=[job]) if there_before else None
        samples += [first or _idle(node, now - 600), _sample(node, now, gpus=gpus, jobs=[job])]
    async with Store(store_url) as store:
        await store.write_batch(
            [sample_row(s, encode(s), now) for s in samples], [], ["c-fresh", "d-old"]
        )
    jobs = {j["job"]: j for j in _json(store_url, "--jobs")["jobs"]}
    assert (jobs["77"]["gpu_hours"], jobs["77"]["gpu_hours_partial"]) == (None, False)
    assert jobs["78"]["gpu_hours"] == pytest.approx(2 * 600 / 3600, abs=1e-3)
    assert jobs["78"]["gpu_hours_partial"] is True
    capsys.readouterr()
    assert main(["query", "--db", str(store_url), "--jobs"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert (lines["77"][-1], lines["78"][-1]) == ("-", ">=0.33")
