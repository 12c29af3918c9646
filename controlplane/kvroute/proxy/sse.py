"""The little byte work the relay does on OpenAI bodies, so that no response is ever JSON-decoded.

The proxy needs three facts from a response: when the first content arrived (TTFT for the core),
and the token counts in `usage` (for release). It finds them with anchored regexes over bytes; the
one JSON round trip left is a request that already carries `stream_options` (rare).
"""

from __future__ import annotations

import json
import re

from kvroute.proxy.http import error_object

_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_CACHED = re.compile(rb'"cached_tokens"\s*:\s*(\d+)')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
# Content in any OpenAI stream shape: chat deltas, completion text, reasoning, tool calls, and the
# Responses API's `delta` events. An empty string (the role-only first chunk) does not count.
_CONTENT = re.compile(rb'"(?:content|text|reasoning_content|reasoning|delta|arguments)"\s*:\s*"(?!")|"tool_calls"\s*:\s*\[\s*\{')

_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


def ask_for_usage(body: bytes) -> tuple[bytes, bool]:
    """The body to send upstream for a streamed request, and whether the client's own usage chunk is
    absent (so the relay must drop the one it asked for)."""
    if b'"stream_options"' not in body:
        brace = body.find(b"{")
        return body[: brace + 1] + _INCLUDE_USAGE + body[brace + 1 :], True
    # The client set stream_options itself (or the string occurs in a prompt): decode once to be sure.
    request = json.loads(body)
    options = request.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return body, False
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    request["stream_options"] = options
    return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode(), True


class Usage:
    __slots__ = ("prompt_tokens", "completion_tokens", "cached_tokens", "seen")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.seen = False

    def take(self, text: bytes) -> None:
        """Read the counts of a `usage` object at the start of `text`."""
        prompt = _PROMPT.search(text)
        completion = _COMPLETION.search(text)
        cached = _CACHED.search(text)
        if prompt is not None:
            self.prompt_tokens = int(prompt.group(1))
            self.seen = True
        if completion is not None:
            self.completion_tokens = int(completion.group(1))
        if cached is not None:
            self.cached_tokens = int(cached.group(1))


def usage_of_json(body: bytes, usage: Usage) -> None:
    """Token counts of a non-streamed response; OpenAI servers put `usage` last, so look there first."""
    tail = body[-2048:]
    found = _USAGE_OBJECT.search(tail)
    if found is not None:
        usage.take(tail[found.end() :])
        return
    found = _USAGE_OBJECT.search(body)
    if found is not None:
        usage.take(body[found.end() : found.end() + 2048])


def _last_boundary(data: bytes) -> int:
    """End of the last complete SSE event in `data` (0 if none): events end with a blank line."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _next_boundary(data: bytes, pos: int) -> int:
    """End of the event that contains `pos`."""
    ends = [i + n for i, n in ((data.find(b"\n\n", pos), 2), (data.find(b"\r\n\r\n", pos), 4)) if i >= 0]
    return min(ends) if ends else len(data)


# The longest SSE event the router holds while waiting for its end. vLLM's events are a token or a
# tool call's arguments; a backend that sends megabytes without an event boundary is broken, and
# holding its bytes would grow without end.
MAX_EVENT_BYTES = 4 << 20


class OversizedEvent(Exception):
    """The backend sent more than MAX_EVENT_BYTES without ending an event."""


class StreamScanner:
    """Follows one SSE stream: passes whole events on unchanged, notes the first content and the usage,
    and drops the usage-only event the router asked for on the client's behalf.

    Bytes are held back only while an event is incomplete, which a client could not use anyway.
    """

    __slots__ = ("strip_usage", "expect_done", "usage", "first_content", "done", "_carry")

    def __init__(self, strip_usage: bool, expect_done: bool = False) -> None:
        self.strip_usage = strip_usage
        # Chat and completions streams end with `data: [DONE]`; one that ends without it was cut
        # short by a backend that closed its response cleanly (a server stopping), which an OpenAI
        # SDK would hand to its caller as a complete answer.
        self.expect_done = expect_done
        self.usage = Usage()
        self.first_content = False
        self.done = False
        self._carry = b""

    @property
    def whole(self) -> bool:
        """The stream, ended here, is a complete answer."""
        return self.done or not self.expect_done

    def feed(self, data: bytes) -> bytes:
        if self._carry:
            data = self._carry + data
        cut = _last_boundary(data)
        if cut < len(data):
            self._carry = data[cut:]
            data = data[:cut]
            if len(self._carry) > MAX_EVENT_BYTES:
                raise OversizedEvent(f"an SSE event over {MAX_EVENT_BYTES >> 20} MiB")
        else:
            self._carry = b""
        if not data:
            return data
        self.done = data.endswith((b"[DONE]\n\n", b"[DONE]\r\n\r\n"))  # the last event so far
        if not self.first_content and _CONTENT.search(data) is not None:
            self.first_content = True
        if b'"usage"' in data:
            data = self._usage(data)
        return data

    def rest(self) -> bytes:
        """Whatever trailed the last complete event when the stream ended."""
        carry, self._carry = self._carry, b""
        if carry.rstrip().endswith(b"[DONE]"):  # a last event without its blank line
            self.done = True
        return carry

    def _usage(self, data: bytes) -> bytes:
        found = None
        for found in _USAGE_OBJECT.finditer(data):
            pass  # the last one counts: with continuous usage stats every event carries a running total
        if found is None:
            return data
        self.usage.take(data[found.end() :])
        if not self.strip_usage:
            return data
        start = _last_boundary(data[: found.start()])
        end = _next_boundary(data, found.end())
        event = data[start:end]
        if _EMPTY_CHOICES.search(event) is None:
            return data
        return data[:start] + data[end:]


def error_event(message: str, kind: str, code: str) -> bytes:
    """An SSE event in the shape the OpenAI SDKs raise on, for a stream that cannot be finished."""
    return b"data: " + json.dumps(error_object(message, kind, code)).encode() + b"\n\n"
