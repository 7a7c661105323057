"""How a job's share of a GPU is read from a sample (:mod:`collector.jobfacts`)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from collector.jobfacts import jobs_on, mig_slices
from shared.schema import Sample
from tests.shared.wire_samples import sample_dict

_UUID = "GPU-5f4e3d2c-1b0a-4988-8776-655443322110"


def _sample(gpu: dict[str, Any]) -> Sample:
    d = sample_dict()
    d.update(gpus=[gpu], jobs=[], xids=[])
    return msgspec.convert(d, Sample)


def _mig_gpu(profiles: list[str | None], processes: list[tuple[str, int | None]]) -> dict[str, Any]:
    """One GPU at 700 W in MIG mode: GPU instances 1.. with ``profiles``; ``processes``:
    (job, GPU instance id)."""
    return {
        "index": 0,
        "uuid": _UUID,
        "power_w": 700.0,
        "mig": [
            {"gi_id": i + 1, "ci_id": 0, **({"profile": p} if p else {})}
            for i, p in enumerate(profiles)
        ],
        "processes": [
            {"pid": 100 + n, "job": job, **({"gi_id": gi} if gi is not None else {})}
            for n, (job, gi) in enumerate(processes)
        ],
    }


def _shares(sample: Sample) -> dict[str, tuple[float, float | None]]:
    return {j.job: (j.gpu_share, j.power_w) for j in jobs_on(sample)}


def test_a_mig_gpu_is_split_by_the_compute_slices_of_each_jobs_instance() -> None:
    """3g.40gb + 2 x 2g.20gb: the job in the 3g instance holds 3/7 of the GPU and of its
    power; two jobs in one 2g instance 1/7 each; the whole GPU counted once."""
    gpu = _mig_gpu(
        ["3g.40gb", "2g.20gb", "2g.20gb"],
        [("big", 1), ("mid", 2), ("c", 3), ("d", 3), ("big", 1)],
    )
    shares = _shares(_sample(gpu))
    assert shares["big"][0] == pytest.approx(3 / 7)
    assert shares["mid"][0] == pytest.approx(2 / 7)
    assert shares["c"][0] == shares["d"][0] == pytest.approx(1 / 7)
    assert shares["big"][1] == pytest.approx(300.0)
    assert sum(s for s, _ in shares.values()) == pytest.approx(1.0)


def test_a_job_in_two_instances_holds_both() -> None:
    gpu = _mig_gpu(["1g.10gb+me", "1g.10gb", "1g.10gb"], [("a", 1), ("a", 2), ("b", 3)])
    shares = _shares(_sample(gpu))
    assert shares["a"][0] == pytest.approx(2 / 3)
    assert shares["b"][0] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("profiles", "processes"),
    [
        (["3g.40gb", None], [("a", 1), ("b", 2)]),  # an instance's profile unknown
        (["3g.40gb", "4g.40gb"], [("a", 1), ("b", None)]),  # a process's instance unknown
    ],
)
def test_without_enough_mig_facts_the_gpu_is_split_evenly(
    profiles: list[str | None], processes: list[tuple[str, int | None]]
) -> None:
    shares = _shares(_sample(_mig_gpu(profiles, processes)))
    assert shares == {"a": (0.5, 350.0), "b": (0.5, 350.0)}


def test_a_gpu_outside_mig_mode_is_split_evenly() -> None:
    gpu = _mig_gpu([], [("a", None), ("b", None), ("c", None)])
    shares = _shares(_sample(gpu))
    assert [round(s, 6) for s, _ in shares.values()] == [round(1 / 3, 6)] * 3


@pytest.mark.parametrize(
    ("profile", "slices"),
    [
        ("1g.10gb", 1),
        ("7g.80gb", 7),
        ("1g.10gb+me", 1),
        ("4g.24gb", 4),
        ("", None),
        (None, None),
        ("x", None),
    ],
)
def test_the_compute_slices_of_a_profile(profile: str | None, slices: int | None) -> None:
    assert mig_slices(profile) == slices


class _Compared(str):
    """A user name that counts how often it is compared for equality."""

    __slots__ = ()
    calls = 0

    def __eq__(self, other: object) -> bool:
        _Compared.calls += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_jobs_users_are_gathered_without_comparing_each_with_every_other() -> None:
    """A node's sample may carry 64 GPUs x 256 processes of one job, each process naming
    another user (valid on the wire): each user is kept once, in order of appearance, and
    gathering them compares a name with a few, not with every earlier one (that was 1.6 s
    per rule evaluation for one such sample, stalling every alert)."""
    n_gpus, per_gpu = 8, 256
    gpus = [
        {
            "index": i,
            "uuid": _UUID[:-2] + f"{i:02d}",
            "util_pct": 1.0,
            "processes": [{"pid": i * per_gpu + k, "job": "7"} for k in range(per_gpu)],
        }
        for i in range(n_gpus)
    ]
    d = sample_dict()
    d.update(gpus=gpus, jobs=[], xids=[])
    sample = msgspec.convert(d, Sample)
    # Each process's user, twice each (the second GPU half repeats the first's names).
    names = [_Compared(f"u{n % (n_gpus * per_gpu // 2)}") for n in range(n_gpus * per_gpu)]
    sample = msgspec.structs.replace(
        sample,
        gpus=tuple(
            msgspec.structs.replace(
                g,
                processes=tuple(
                    msgspec.structs.replace(p, user=names[g.index * per_gpu + k])
                    for k, p in enumerate(g.processes)
                ),
            )
            for g in sample.gpus
        ),
    )
    _Compared.calls = 0
    (job,) = jobs_on(sample)
    assert job.users == [f"u{n}" for n in range(n_gpus * per_gpu // 2)]
    assert job.user == "u0"
    assert job.gpus == list(range(n_gpus))
    assert _Compared.calls <= 4 * n_gpus * per_gpu
