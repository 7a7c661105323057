"""Governance: who holds what until when (pools, leases, quotas)."""
