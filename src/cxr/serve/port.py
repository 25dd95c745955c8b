"""Is the address `cxr serve` was asked for free? Checked before the model loads, so a port in use is
one clear line (exit 2), not a "serving ..." line followed by uvicorn's "[Errno 98]" and exit 3."""

from __future__ import annotations

import errno
import socket

from cxr.errors import CxrError


def check_port(host: str, port: int) -> None:
    """Bind (host, port) as uvicorn will (SO_REUSEADDR), then let it go; a CxrError says why it cannot be used."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CxrError(f"--host {host!r} is not an address of this machine ({exc.strerror}); "
                       "use e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CxrError(f"port {port} on {host} is already in use (another server?); stop it, or choose "
                               "another --port") from None
            if exc.errno == errno.EACCES:
                raise CxrError(f"port {port} on {host} needs more privileges (ports below 1024 do); "
                               "choose --port 1024 or higher") from None
            raise CxrError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
