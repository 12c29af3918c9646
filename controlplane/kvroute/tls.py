"""The TLS client context for the router's connections to https:// backends (requests and polls)."""

from __future__ import annotations

import ssl


def backend_context(ca_file: str = "", verify: bool = True) -> ssl.SSLContext:
    """Certificates checked against `ca_file` (a PEM bundle, e.g. a private CA) or the system store.

    `verify=False` accepts any certificate and host name: encryption without authentication, for
    test fleets with self-signed certificates only.
    """
    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
