"""Cutting a server-sent-events stream into events and their `data:` payloads: the one SSE splitter
of the clients (the load generator, the simulator's load check, the tests). The proxy itself never
splits a stream it relays: it scans bytes in place (kvroute.proxy.sse).

An event ends at a blank line; the bytes of a network read may end anywhere, so the splitter keeps
what follows the last blank line until the next read completes it.
"""

from __future__ import annotations

SEPARATOR = b"\n\n"


def split_events(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete events in `data` (without their blank line) and what is left after the last one."""
    events = data.split(SEPARATOR)
    return events[:-1], events[-1]


def data_payloads(event: bytes) -> list[bytes]:
    """The payload of each `data:` line of one event, without the field name and surrounding space."""
    return [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]


class EventSplitter:
    """Events as they complete, across reads of any size."""

    __slots__ = ("rest",)

    def __init__(self) -> None:
        self.rest = b""  # an event not finished yet

    def feed(self, data: bytes) -> list[bytes]:
        events, self.rest = split_events(self.rest + data)
        return events


__all__ = ["EventSplitter", "data_payloads", "split_events"]
