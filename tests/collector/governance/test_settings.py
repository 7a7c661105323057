"""``[governance]`` settings: defaults equal the rules' own, unknown rule names are refused."""

from __future__ import annotations

import pytest

from collector.governance.rules import GovernanceRuleSettings
from collector.governance.settings import GovernanceSettings
from collector.settings import CollectorSettings
from shared.errors import ConfigError


def test_defaults_equal_the_rules_defaults() -> None:
    """An empty [governance] table gives exactly the rules' defaults."""
    assert GovernanceSettings().rules() == GovernanceRuleSettings()
    assert CollectorSettings().governance == GovernanceSettings()


def test_disabled_rules_are_left_out_and_unknown_ones_refused() -> None:
    """disabled names rules by name; a typo is one line naming the setting."""
    rules = GovernanceSettings(disabled=["LeasedGpusIdle"]).rules()
    assert rules.disabled == frozenset({"LeasedGpusIdle"})
    with pytest.raises(ConfigError, match=r"governance\.disabled' names unknown rules"):
        GovernanceSettings(disabled=["LeasedGpuIdle"]).rules()
