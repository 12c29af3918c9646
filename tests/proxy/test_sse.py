"""The relay's byte work on OpenAI bodies: usage injection, event framing, usage and first-content detection."""

from __future__ import annotations

import json

import pytest

from kvroute.proxy.sse import StreamScanner, Usage, ask_for_usage, error_event, usage_of_json

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
USAGE = (b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":11,"total_tokens":14,"completion_tokens":3,'
         b'"prompt_tokens_details":{"cached_tokens":8}}}\n\n')
DONE = b"data: [DONE]\n\n"


def test_usage_is_asked_for_without_decoding_the_body() -> None:
    body = b'{"model":"m","stream":true,"messages":[]}'
    sent, strip = ask_for_usage(body)
    assert strip
    assert json.loads(sent) == {**json.loads(body), "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("options, strip", [({"include_usage": True}, False), ({"include_usage": False}, True),
                                            ({"continuous_usage_stats": True}, True)])
def test_client_stream_options_are_respected(options: dict, strip: bool) -> None:
    sent, stripped = ask_for_usage(json.dumps({"model": "m", "stream": True, "stream_options": options}).encode())
    assert stripped == strip
    assert json.loads(sent)["stream_options"] == {**options, "include_usage": True}


def test_scanner_relays_events_unchanged_and_drops_only_the_asked_for_usage_event() -> None:
    stream = ROLE + TOKEN + USAGE + DONE
    for split in range(1, len(stream)):  # every split point of one TCP read into two
        scanner = StreamScanner(strip_usage=True)
        out = scanner.feed(stream[:split]) + scanner.feed(stream[split:]) + scanner.rest()
        assert out == ROLE + TOKEN + DONE
        assert scanner.first_content
        usage = scanner.usage
        assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (11, 3, 8)


def test_scanner_keeps_usage_the_client_asked_for() -> None:
    scanner = StreamScanner(strip_usage=False)
    assert scanner.feed(ROLE + TOKEN + USAGE + DONE) == ROLE + TOKEN + USAGE + DONE
    assert scanner.usage.completion_tokens == 3


def test_role_only_chunk_is_not_the_first_token() -> None:
    scanner = StreamScanner(strip_usage=False)
    scanner.feed(ROLE)
    assert not scanner.first_content
    scanner.feed(b'data: {"choices":[{"index":0,"text":"x"}]}\n\n')  # a completions stream
    assert scanner.first_content


def test_crlf_framed_events_pass() -> None:
    scanner = StreamScanner(strip_usage=True)
    stream = TOKEN.replace(b"\n\n", b"\r\n\r\n") + USAGE.replace(b"\n\n", b"\r\n\r\n")
    assert scanner.feed(stream) == TOKEN.replace(b"\n\n", b"\r\n\r\n")


def test_usage_of_a_whole_response() -> None:
    usage = Usage()
    usage_of_json(b'{"choices":[{"message":{"content":"\\"usage\\": {"}}],"usage":{"prompt_tokens":4,'
                  b'"completion_tokens":2,"total_tokens":6}}', usage)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.seen) == (4, 2, True)


def test_error_event_is_openai_shaped() -> None:
    event = error_event("gone", "api_error", "backend_error")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert set(json.loads(event[6:])["error"]) == {"message", "type", "param", "code"}
