"""Out-of-band node power: the collector polls BMCs' Redfish services (``[redfish]``).

For nodes whose BMC is reachable only on the management network (the agent reads it in band
when it can: agent/nodepower.py). :mod:`.settings` the settings, :mod:`.credentials` the
credentials file, :mod:`.reading` which Redfish property is read, :mod:`.poller` the task.
"""
