"""Socket helpers shared by the test tiers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago.

    The port is released before the server under test binds it; a collision in that gap is possible
    but rare, and shows up as a start-up failure with its log, not as a wrong result.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
