"""Where a host name points, for the rules that trust loopback alone (plain HTTP, insecure modes),
and the trust store outgoing clients verify servers with."""

from __future__ import annotations

import functools
import ipaddress
import ssl

import httpx


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address; a name that would need resolving is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def tls_verification(ca_file: str | None = None) -> ssl.SSLContext:
    """The trust store an outgoing client verifies servers with: `ca_file`, else what httpx loads
    for `verify=True` (SSL_CERT_FILE, SSL_CERT_DIR, else certifi's bundle). Loaded once per
    process: loading a CA bundle costs ~28 ms, which a client per call paid on every activity
    (bench/critical_path.py). A changed bundle is read at the next restart."""
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return httpx.create_ssl_context()
