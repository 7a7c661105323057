"""Governance: who holds what. ``inventory`` (a node's hardware as countable components),
``pattern`` (clstr pool patterns) and ``allocate`` (the fewest nodes that satisfy one)."""
