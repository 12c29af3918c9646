"""Every change through the admin API leaves one audit line (who, from where, what, before, after), a
wrong token leaves a refusal line, and no secret (admin token, API keys) shows in any log record, in
the admin API's answers or in the status page."""

from __future__ import annotations

import hashlib
import json
import logging

import httpx
import pytest

from kvroute.config import fingerprint
from tests.control.support import chat, full_gateway

TOKEN = "s3cret-admin-token-1f2e"
API_KEY = "sk-very-secret-client-key-9a8b"
SECRETS = (TOKEN, API_KEY)
AUTH = {"Authorization": f"Bearer {TOKEN}", "x-kvroute-actor": b"alice \xe9"}  # obs-text: not for a log line


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kvroute.audit"]


async def test_changes_are_audited_and_secrets_stay_inside(sims, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with full_gateway(backend=sims.urls[:1], admin_token=TOKEN, api_key_tiers={API_KEY: "high"},
                            rate_limit_rps_by_key={API_KEY: 100.0}) as gw, \
            httpx.AsyncClient() as client:
        admin = f"http://127.0.0.1:{gw.admin.port}"
        proxied = await client.post(f"http://127.0.0.1:{gw.proxy.port}/v1/chat/completions", content=chat(),
                                    headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"})
        assert proxied.status_code == 200
        backend = sims.urls[0].removeprefix("http://")
        assert (await client.post(f"{admin}/admin/backends/{backend}/drain", headers=AUTH)).status_code == 200
        changed = await client.put(f"{admin}/admin/policy", json={"policy": "least_load"}, headers=AUTH)
        assert changed.status_code == 200
        wrong = await client.put(f"{admin}/admin/policy", json={"policy": "random"},
                                 headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401
        answers = [(await client.get(admin + path, headers=AUTH)).text
                   for path in ("/admin/config", "/admin/stats", "/admin/backends", "/admin/policy", "/metrics", "/")]

    drained, policy, refused = audit_lines(caplog)
    assert drained.audit_action == "drain" and drained.audit_target == backend  # type: ignore[attr-defined]
    assert drained.audit_before["drained"] is False and drained.audit_after["drained"] is True  # type: ignore[attr-defined]
    assert drained.audit_actor == "alice  (admin token)"  # type: ignore[attr-defined]
    assert drained.audit_peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert policy.audit_before["policy"] != "least_load" and policy.audit_after["policy"] == "least_load"  # type: ignore[attr-defined]
    assert refused.levelno == logging.WARNING and "wrong admin token" in refused.getMessage()
    config = json.loads(answers[0])
    assert config["api_key_tiers"] == {fingerprint(API_KEY): "high"}
    assert config["rate_limit_rps_by_key"] == {fingerprint(API_KEY): 100.0}
    assert fingerprint(API_KEY) == "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()[:12]
    for record in caplog.records:
        if not record.name.startswith(("kvroute", "uvicorn")):
            continue  # the test's own HTTP client
        text = record.getMessage() + repr(vars(record))
        assert not any(secret in text for secret in SECRETS), record.getMessage()
    for answer in answers:
        assert not any(secret in answer for secret in SECRETS)
