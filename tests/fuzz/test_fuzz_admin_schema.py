"""schemathesis against the admin API's own OpenAPI document, on a running gateway: every operation
with generated parameters and bodies, with the admin token and without it. Every answer must be
one the schema documents (status, content type, body shape), and no request may cause a 5xx."""

from __future__ import annotations

from typing import Iterator

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from tests.fuzz.admin_gateway import running_gateway
from tests.fuzz.budget import budget

TOKEN = "fuzz-admin-token"
# Not asked: that every schema-valid body is accepted. The admin API refuses on meaning what JSON
# Schema cannot say (a backend URL's shape, a policy the core knows, a weight's range: those the
# core owns), with a documented 400.
NOT_CHECKED = [positive_data_acceptance]


@pytest.fixture(scope="module")
def admin() -> Iterator[str]:
    with running_gateway(admin_token=TOKEN) as (url, _):
        yield url


def operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    assert found, "the admin API documents no operation"
    return found


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {TOKEN}"}, {}], ids=["token", "no-token"])
def test_admin_api_answers_as_its_schema_says(admin: str, headers: dict[str, str]) -> None:
    ops = operations(admin)

    @budget(60)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(st.sampled_from(ops).flatmap(lambda op: op.as_strategy()))
        response = case.call_and_validate(base_url=admin, headers=headers, timeout=30,
                                          excluded_checks=NOT_CHECKED)
        if not headers:
            assert response.status_code == 401, (case.method, case.path, response.status_code)

    check()
