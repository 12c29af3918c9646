"""Structured logs: one JSON object per line with --log-format json, the request id on every line."""

import io
import json
import logging

from kvroute.logs import configure_logging, request_id
from kvroute.config import Settings


def _capture(log_format: str):
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    handler = configure_logging(Settings(log_format=log_format, log_level="debug"), stream)
    return stream, handler, saved


def _restore(saved):
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_json_lines_carry_the_request_id_and_extra_fields():
    stream, _, saved = _capture("json")
    try:
        log = logging.getLogger("kvroute.test")
        token = request_id.set("req-123")
        try:
            log.info("routed to %s", "b1", extra={"backend": "b1", "branch": "cost:cache_affinity"})
        finally:
            request_id.reset(token)
        log.warning("no request here")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        _restore(saved)
    first, second, third = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "routed to b1" and first["request_id"] == "req-123"
    assert first["backend"] == "b1" and first["branch"] == "cost:cache_affinity" and first["level"] == "info"
    assert "request_id" not in second and second["logger"] == "kvroute.test"
    assert "ValueError: boom" in third["exc"]


def test_text_lines_carry_the_request_id():
    stream, _, saved = _capture("text")
    try:
        token = request_id.set("req-9")
        try:
            logging.getLogger("kvroute.test").info("hello")
        finally:
            request_id.reset(token)
    finally:
        _restore(saved)
    assert stream.getvalue().rstrip().endswith("hello request_id=req-9")
