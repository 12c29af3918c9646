"""HTTPS on the listening sockets (tls_certfile + tls_keyfile): proxy and admin API, over real sockets,
with certificates from a throwaway CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from kvroute.config import ConfigError, Settings, validate
from kvroute.gateway import Gateway

from .helpers import chat_body, running_gateway


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_the_proxy_serves_https(scripted, ca: trustme.CA, cert_files: tuple[str, str]) -> None:
    backend = await scripted()
    certfile, keyfile = cert_files
    async with running_gateway([backend.url], tls_certfile=certfile, tls_keyfile=keyfile) as gw:
        url = f"https://127.0.0.1:{gw.proxy.port}/v1/chat/completions"
        async with httpx.AsyncClient(verify=trusting(ca)) as client:
            for stream in (False, True):
                resp = await client.post(url, content=chat_body(stream=stream),
                                         headers={"content-type": "application/json"})
                assert resp.status_code == 200, resp.text
        assert len([s for s in backend.seen if s.path == "/v1/chat/completions"]) == 2
        # Plain HTTP on the TLS port is not served.
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.post(url.replace("https", "http"), content=chat_body())
        # Nor is a client that does not trust the certificate.
        async with httpx.AsyncClient() as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"https://127.0.0.1:{gw.proxy.port}/v1/models")


async def test_the_admin_api_serves_https(ca: trustme.CA, cert_files: tuple[str, str]) -> None:
    certfile, keyfile = cert_files
    gateway = Gateway(Settings(port=0, admin_port=0, tls_certfile=certfile, tls_keyfile=keyfile))
    await gateway.start()
    try:
        async with httpx.AsyncClient(verify=trusting(ca)) as client:
            resp = await client.get(f"https://127.0.0.1:{gateway.admin.port}/admin/backends")
        assert resp.status_code == 200, resp.text
    finally:
        await gateway.stop()


def test_tls_settings_are_checked(tmp_path: Path, cert_files: tuple[str, str]) -> None:
    certfile, keyfile = cert_files
    assert validate(Settings(tls_certfile=certfile, tls_keyfile=keyfile)).tls_certfile == certfile
    with pytest.raises(ConfigError, match="'tls_certfile' is set but 'tls_keyfile' is empty"):
        validate(Settings(tls_certfile=certfile))
    with pytest.raises(ConfigError, match="'tls_keyfile' is set but 'tls_certfile' is empty"):
        validate(Settings(tls_keyfile=keyfile))
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=f"'tls_keyfile': cannot read {missing!r}"):
        validate(Settings(tls_certfile=certfile, tls_keyfile=missing))


# -- HTTPS to backends -------------------------------------------------------------------------


def backend_server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "backend-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def chat(gw: Gateway, stream: bool) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(f"http://127.0.0.1:{gw.proxy.port}/v1/chat/completions", content=chat_body(stream=stream),
                                 headers={"content-type": "application/json"})


def refused(gw: Gateway, backend) -> None:
    """The first poll failed on the certificate: the backend is not healthy, so it gets no request."""
    state = gw.fleet.get(f"127.0.0.1:{backend.port}")
    assert state is not None and not state.healthy
    assert "CERTIFICATE_VERIFY_FAILED" in state.last_error, state.last_error


async def test_an_https_backend_is_verified_against_the_configured_ca(scripted, ca: trustme.CA, ca_file: str) -> None:
    backend = await scripted(tls=backend_server_context(ca, "127.0.0.1"))
    assert backend.url.startswith("https://")
    async with running_gateway([backend.url], backend_ca_file=ca_file, poll_interval=0.2) as gw:
        assert (await chat(gw, stream=False)).status_code == 200
        state = gw.fleet.get(f"127.0.0.1:{backend.port}")
        assert state is not None and state.metrics is not None  # the poller reached it over TLS too
    assert len(backend.seen) == 1


async def test_an_https_backend_with_an_unknown_ca_is_refused(scripted, ca: trustme.CA) -> None:
    backend = await scripted(tls=backend_server_context(ca, "127.0.0.1"))
    async with running_gateway([backend.url]) as gw:  # the system store does not hold the throwaway CA
        refused(gw, backend)
    assert backend.seen == []


async def test_an_https_backend_with_the_wrong_host_name_is_refused(scripted, ca: trustme.CA, ca_file: str) -> None:
    backend = await scripted(tls=backend_server_context(ca, "backend.example"))
    async with running_gateway([backend.url], backend_ca_file=ca_file) as gw:
        refused(gw, backend)
        assert (await chat(gw, stream=False)).status_code == 503  # its only backend failed its health check
        async with running_gateway([backend.url], backend_tls_verify=False) as trusting_any:
            assert (await chat(trusting_any, stream=True)).status_code == 200
    assert len(backend.seen) == 1


def test_backend_ca_file_is_checked(tmp_path: Path, ca_file: str) -> None:
    assert validate(Settings(backend_ca_file=ca_file)).backend_ca_file == ca_file
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=f"'backend_ca_file': cannot read {missing!r}"):
        validate(Settings(backend_ca_file=missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="'backend_ca_file'.*no usable PEM certificate"):
        validate(Settings(backend_ca_file=str(garbage)))
