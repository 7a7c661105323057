"""The /metrics HTTP endpoint both daemons share: address parsing, paths, bind errors."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge

from shared.errors import ConfigError
from shared.metrics_http import MetricsServer, parse_listen
from tests.helpers import wait_until


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9474", ("127.0.0.1", 9474)),
        ("0.0.0.0:9400", ("0.0.0.0", 9400)),
        ("[::1]:9400", ("::1", 9400)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses_parse(value: str, expected: tuple[str, int]) -> None:
    """HOST:PORT, IPv6 in brackets, port 0 for a free one."""
    assert parse_listen(value, field="metrics_listen") == expected


@pytest.mark.parametrize("value", ["9474", ":9474", "localhost", "h:port", "h:65536", "h:-1", ""])
def test_a_bad_listen_address_names_the_field_and_the_form(value: str) -> None:
    """One ConfigError naming the setting and showing the expected form."""
    with pytest.raises(ConfigError, match=r"metrics_listen .* is not HOST:PORT") as info:
        parse_listen(value, field="metrics_listen")
    assert info.value.field == "metrics_listen"


async def test_paths_healthz_readyz_metrics_and_404() -> None:
    """/healthz 200; /readyz 503 with the daemon's reason; /metrics the registry; else 404."""
    registry = CollectorRegistry()
    Gauge("capwatch_test_value", "A value.", registry=registry).set(42)
    async with (
        MetricsServer("127.0.0.1", 0, registry, lambda: (False, "no broker")) as srv,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}", trust_env=False) as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.text) == (503, "no broker\n")
        metrics = await client.get("/metrics")
        assert "capwatch_test_value 42.0" in metrics.text
        assert metrics.headers["content-type"].startswith("text/plain")
        assert (await client.get("/other")).status_code == 404
    # Closed on exit: nothing listens on the port any more.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", srv.port)) != 0


async def test_ipv6_loopback_is_served_when_the_host_has_it() -> None:
    """[::1]:0 binds an IPv6 socket (skipped where the kernel has no IPv6)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    async with (
        MetricsServer("::1", 0, CollectorRegistry(), lambda: (True, "ready")) as srv,
        httpx.AsyncClient(trust_env=False) as client,
    ):
        assert (await client.get(f"http://[::1]:{srv.port}/readyz")).text == "ready\n"


async def test_an_unresolvable_host_is_a_config_error_naming_the_setting() -> None:
    """A host name that does not resolve: ConfigError on the field, before serving."""
    server = MetricsServer("no-such-host.invalid", 0, CollectorRegistry(), lambda: (True, ""))
    with pytest.raises(ConfigError, match="metrics_listen") as info:
        async with server:
            pass
    assert info.value.field == "metrics_listen"


async def test_connections_beyond_the_limit_are_closed_and_idle_ones_time_out() -> None:
    """Two idle connections hold the two slots: a third is closed at once, without a thread;
    once the idle ones time out, a scrape is served again."""
    registry = CollectorRegistry()
    Gauge("capwatch_test_value", "A value.", registry=registry).set(1)
    async with MetricsServer(
        "127.0.0.1", 0, registry, lambda: (True, "ok"), max_connections=2, request_timeout_s=1.0
    ) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]
        try:
            await wait_until(lambda: srv.active() == 2, what="two connections served")
            extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            with extra:
                assert extra.recv(1) == b""  # closed by the server, no response
            assert srv.refused() == 1
            await wait_until(lambda: srv.active() == 0, what="the idle ones timed out")
            async with httpx.AsyncClient(trust_env=False) as client:
                resp = await client.get(f"http://127.0.0.1:{srv.port}/metrics")
            assert "capwatch_test_value 1.0" in resp.text
        finally:
            for s in idle:
                s.close()
