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
