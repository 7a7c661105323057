"""``collector plot -o FILE.png``, as ``collector export -o FILE`` writes its file.

The two commands that write a file spelt its flag differently: ``export -o/--output`` and
``plot --out`` only, so ``collector plot usage -o u.png`` was "unrecognized arguments".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.collector.governance.hw_fleet import Spec, cli, make_store

pytest.importorskip("matplotlib")


async def test_plot_takes_o_as_export_does(tmp_path: Path) -> None:
    db = await make_store(tmp_path, [Spec("x1000c0s0b0n0")])
    out = tmp_path / "u.png"
    code, _, err = cli("plot", "usage", "--db", str(db), "-o", str(out))
    assert code == 0, err
    assert out.read_bytes().startswith(b"\x89PNG")
