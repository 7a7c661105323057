"""Rack PDUs read over SNMP by the collector (``[pdus]``): each rack's draw from its PDUs.

:mod:`.settings` the settings, :mod:`.poller` the task, :mod:`.metrics` what it counts.
"""
