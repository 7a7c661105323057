"""An unknown setting names the one it most likely meant.

``collector run --retention 24h`` is the flag; the file's key is ``retention_s``. An
operator who wrote ``retention = "24h"`` in collector.toml was told only "unknown setting
'retention': remove it or check its spelling".
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import collector_cli


def test_a_misspelt_key_names_the_setting_it_resembles(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text('retention = "24h"\n')
    code, _, err = collector_cli("rules", "--config", str(config), "--db", str(tmp_path / "c.db"))
    assert code == 2
    assert "unknown setting 'retention'" in err
    assert "did you mean 'retention_s'?" in err


def test_a_misspelt_nested_key_names_its_neighbour(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text("[alerts]\ngpu_temp = 90\n")
    code, _, err = collector_cli("rules", "--config", str(config), "--db", str(tmp_path / "c.db"))
    assert code == 2
    assert "unknown setting 'alerts.gpu_temp'" in err
    assert "did you mean 'alerts.gpu_temp_c'?" in err
