"""The /metrics HTTP endpoint both daemons share: address parsing, paths, bind errors."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import bcrypt
import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge

from shared.errors import ConfigError
from shared.metrics_http import MetricsServer, parse_listen
from tests.helpers import wait_until
from tests.integration.secure_broker import Pki, make_pki


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


def _secured(tmp_path: Path, pki: Pki, *, client_ca: bool = False) -> Path:
    """A web config: TLS with the test CA's server certificate, user prometheus:s3cret."""
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    tls = f"  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
    if client_ca:
        tls += f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca_cert}\n"
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config:\n{tls}basic_auth_users:\n  prometheus: '{hashed}'\n")
    return path


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("capwatch_test_value", "A value.", registry=registry).set(42)
    return registry


async def test_tls_with_basic_auth_serves_the_right_user_only(tmp_path: Path) -> None:
    """Over TLS: the right password gets /metrics; a wrong one, none, or plain HTTP does
    not (401 with a Basic challenge on every path; plain HTTP: no answer)."""
    pki = make_pki(tmp_path / "pki", client_cn="prometheus")
    web = _secured(tmp_path, pki)
    tls = ssl.create_default_context(cafile=pki.ca_cert)
    async with (
        MetricsServer(
            "127.0.0.1", 0, _registry(), lambda: (True, "ok"), web_config_file=web
        ) as srv,
        httpx.AsyncClient(base_url=f"https://127.0.0.1:{srv.port}", verify=tls) as client,
    ):
        ok = await client.get("/metrics", auth=("prometheus", "s3cret"))
        assert ok.status_code == 200
        assert "capwatch_test_value 42.0" in ok.text
        for auth in (("prometheus", "wrong"), ("grafana", "s3cret"), None):
            for path in ("/metrics", "/healthz", "/readyz"):
                refused = await client.get(path, auth=auth)
                assert refused.status_code == 401, (auth, path)
                assert refused.headers["www-authenticate"] == "Basic"
                assert "42" not in refused.text
        async with httpx.AsyncClient(trust_env=False) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(
                    f"http://127.0.0.1:{srv.port}/metrics", auth=("prometheus", "s3cret")
                )
        # The server still answers after the plain-HTTP attempt failed its handshake.
        assert (await client.get("/healthz", auth=("prometheus", "s3cret"))).status_code == 200


async def test_a_required_client_certificate_is_checked(tmp_path: Path) -> None:
    """RequireAndVerifyClientCert: without a certificate the handshake fails; with the CA's
    client certificate (and the password) /metrics answers."""
    pki = make_pki(tmp_path / "pki", client_cn="prometheus")
    web = _secured(tmp_path, pki, client_ca=True)
    without = ssl.create_default_context(cafile=pki.ca_cert)
    with_cert = ssl.create_default_context(cafile=pki.ca_cert)
    with_cert.load_cert_chain(pki.client_cert, pki.client_key)
    async with MetricsServer(
        "127.0.0.1", 0, _registry(), lambda: (True, "ok"), web_config_file=web
    ) as srv:
        url = f"https://127.0.0.1:{srv.port}/metrics"
        async with httpx.AsyncClient(verify=without) as client:
            # TLS 1.3: the client's handshake ends before the server checks its certificate,
            # so the refusal (an alert) may come with the first read, as ssl's own error.
            with pytest.raises((httpx.TransportError, ssl.SSLError)):
                await client.get(url, auth=("prometheus", "s3cret"))
        async with httpx.AsyncClient(verify=with_cert) as client:
            ok = await client.get(url, auth=("prometheus", "s3cret"))
            assert ok.status_code == 200
            assert "capwatch_test_value 42.0" in ok.text


async def test_a_bad_web_config_stops_the_server_before_it_binds(tmp_path: Path) -> None:
    """A key file that does not exist: ConfigError naming web_config_file; nothing bound."""
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n")
    server = MetricsServer("127.0.0.1", 0, _registry(), lambda: (True, "ok"), web_config_file=web)
    with pytest.raises(ConfigError, match=r"cert_file .*a.crt does not exist") as info:
        await server.__aenter__()
    assert info.value.field == "web_config_file"
    assert server.active() == 0
