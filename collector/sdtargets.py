"""Which hosts a node may announce for ``/sd`` (the setting ``sd_target_hosts``).

Prometheus scrapes what the collector's HTTP service discovery lists (:mod:`collector.sd`),
and each node names its own target (``metrics_address`` in its inventory): a node free to
name any ``HOST:PORT`` could point the site's Prometheus at any host it reaches, an internal
service included (a server-side request forgery). The collector never learns where a
node's messages came from (the broker hides the client's address), so the rule is about the
name: by default the node's own name (its id) or a DNS name under it, which is what the
agent announces unless told otherwise (its FQDN, ``agent.metrics.advertised_address``).
Apart from :mod:`collector.sd`, so that loading the settings imports no store module.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from typing import Final

__all__ = ["DEFAULT_SD_TARGET_HOSTS", "TargetHosts"]

DEFAULT_SD_TARGET_HOSTS: Final = ("{node}", "{node}.*")
"""``sd_target_hosts`` by default: the node's own name, or a DNS name under it (its FQDN)."""
_NODE: Final = "{node}"
_NUMERIC_LABEL: Final = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")
"""A last label no DNS name ends with (a top-level domain is never all-numeric, RFC 3696
section 2) but that C's ``inet_aton`` reads as an address: ``127.1``, ``2130706433``,
``0x7f.1`` are all 127.0.0.1 to a resolver that falls back to it."""


def _loopback_name(host: str) -> bool:
    """``localhost`` or a name under it: the loopback by RFC 6761 section 6.3 (resolvers
    such as systemd-resolved answer 127.0.0.1 for ``anything.localhost``)."""
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


class TargetHosts:
    """Which hosts a node may announce as its ``metrics_address`` (``sd_target_hosts``).

    Each entry is an IP network (``10.1.0.0/16``, ``fd00::/64``: an address host inside it),
    or a host pattern: a shell-style glob (``*``, ``?``) matched without regard to case
    (DNS names are case-insensitive), in which ``{node}`` stands for the announcing node's
    id. Patterns are for DNS names only: an IP address host must be inside a listed network
    (a node named ``10`` must not get ``10.0.0.5`` through ``{node}.*``), and a host in one
    of the short or numeric forms ``inet_aton`` also reads as an address (``127.1``) is
    neither, nor is ``localhost`` or a name under it (``gpu-1.localhost``: the loopback).
    """

    def __init__(self, entries: Sequence[str] = DEFAULT_SD_TARGET_HOSTS) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.patterns: list[str] = []
        for entry in entries:
            if "/" in entry:
                try:
                    self.networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(
                        f"{entry!r} is not an IP network: write it as 10.1.0.0/16 or fd00::/64"
                    ) from None
                continue
            rest = entry.replace(_NODE, "")
            if not entry or any(c in rest for c in "{}[]:/ "):
                raise ValueError(
                    f"{entry!r} is not a host pattern: a DNS name with * or ? and {{node}} "
                    "(the node's id), e.g. {node}.cluster.example, or an IP network"
                )
            self.patterns.append(entry.lower())

    def allows(self, node: str, address: str) -> bool:
        """Whether ``node`` may announce ``address`` (``HOST:PORT``, ``[IPv6]:PORT``: the
        wire schema's ``metrics_address``)."""
        host = address.rpartition(":")[0].strip("[]").lower()
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if _NUMERIC_LABEL.match(host.rpartition(".")[2]) or _loopback_name(host):
                return False
            name = node.lower()  # node ids hold no glob character (shared.schema)
            return any(fnmatch.fnmatchcase(host, p.replace(_NODE, name)) for p in self.patterns)
        return any(ip in net for net in self.networks)
