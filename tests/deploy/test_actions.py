"""The shipped exec actions (deploy/actions/) fed notifications whose text a node chose."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _drain(tmp_path: Path, alerts: Sequence[Mapping[str, object]]) -> list[list[str]]:
    """Run slurm-drain.sh on a body of ``alerts`` with SCONTROL recording each call (one
    JSON argv a line): the calls it made."""
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(
        '#!/usr/bin/env python3\nimport json, sys\nwith open(sys.argv[0] + "-calls", "a") as f:\n'
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    scontrol.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SCONTROL": str(scontrol)}
    done = subprocess.run(
        [str(REPO / "deploy" / "actions" / "slurm-drain.sh")],
        input=json.dumps({"version": "4", "status": "firing", "alerts": alerts}),
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    calls = Path(f"{scontrol}-calls")
    return [json.loads(line) for line in calls.read_text().splitlines()]


def test_slurm_drain_drains_only_the_alerts_node_whatever_its_summary_says(
    tmp_path: Path,
) -> None:
    """A summary carries text a node chose (JobGpuIdle's user name): a newline and tabs in it
    neither drain another node nor reach scontrol's reason."""
    summary = "Job 7 of u\nfiring\tvictim-node\towned\r\x1b[2J idles GPUs 0 on n1"
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "JobGpuIdle", "node": "n1"},
            "annotations": {"summary": summary},
        }
    ]
    (call,) = _drain(tmp_path, alerts)
    assert call[:3] == ["update", "nodename=n1", "state=drain"]
    reason = call[3]
    assert reason.startswith("reason=capwatch: JobGpuIdle Job 7 of u firing victim-node owned")
    assert reason.isprintable()
